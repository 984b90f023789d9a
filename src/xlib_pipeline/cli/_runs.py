"""``xlib-pipeline runs list | show | prune``: the run history an on-call engineer reads."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .._graph import suggest
from .._manager import PipelineManager
from ..exceptions import PipelineError, StoreError, UsageError
from ..loading import default_store_path, load_config, open_store, with_store
from ._format import console as make_console
from ._format import dumps, duration, id_column, iso, iso_short, secs


def cmd_runs(args: argparse.Namespace) -> int:
    path = args.store or default_store_path()
    if args.runs_command == "prune":
        open_store(path).close()  # a missing store is named before anything else
        return _prune(path, args)
    store = open_store(path)
    guard = AccessGuard(args)
    try:
        if args.runs_command == "list":
            return _list(store, path, guard, args)
        return _show(store, path, guard, args)
    finally:
        store.close()
        guard.close()


def _list(store: Any, path: Any, guard: AccessGuard, args: argparse.Namespace) -> int:
    from rich.table import Table
    from rich.text import Text

    runs = store.list_runs(limit=args.limit, pipeline=args.pipeline, status=args.status)
    if args.pipeline and not runs:
        names = store.pipelines()
        if args.pipeline not in names:
            hint = suggest(args.pipeline, names)
            raise UsageError(
                f"--pipeline {args.pipeline!r}: no run of that pipeline in {str(path)!r}"
                + (f"; did you mean {hint!r}?" if hint else "")
                + (f" (pipelines: {', '.join(names)})" if names else " (the store has no runs)")
            )
    runs = [r for r in runs if guard.may_list(r, store.get_tasks(r.run_id).values())]
    if args.json:
        print(json.dumps([run_json(r) for r in runs], indent=2))
        return 0
    # Every stored string is shown as plain Text: a pipeline named "p[/]x" or
    # "[link=...]" is data, never rich markup.
    table = Table(title=Text(f"runs in {path}"))
    id_column(table, "run id")
    table.add_column("pipeline", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("started (UTC)", no_wrap=True, min_width=20)
    table.add_column("seconds", no_wrap=True)
    resumed = any(r.resumed_from for r in runs)
    if resumed:  # the column only when a listed run was resumed
        id_column(table, "resumed from")
    for r in runs:
        cells = [
            r.run_id,
            r.pipeline,
            r.status,
            iso_short(r.started),
            secs(r.started, r.finished),
        ]
        if resumed:
            cells.append(r.resumed_from or "")
        table.add_row(*map(Text, cells))
    # ids and times whole: at least as wide as those columns need (a narrow terminal
    # soft-wraps the line instead of the table folding an id)
    make_console((2 if resumed else 1) * 39 + 70).print(table)
    return 0


def _show(store: Any, path: Any, guard: AccessGuard, args: argparse.Namespace) -> int:
    try:
        rec = store.get_run(args.run_id)
    except PipelineError as exc:
        from ..streams._cli import show_stream, stream_hint

        if show_stream(store, args.run_id, as_json=args.json, guard=guard):
            return 0
        hint = stream_hint(store, args.run_id)
        if hint is not None:  # a mistyped stream name
            raise StoreError(f"{exc}, nor is a stream; did you mean stream {hint!r}?") from None
        raise
    tasks = store.get_tasks(rec.run_id)
    guard.check(rec, tasks.values())
    pm = guard.manager(rec)
    rec, tasks = revealed(pm, rec, tasks)
    attempts = _attempt_errors(pm, rec, store.get_events(rec.run_id), tasks)
    order = sorted(tasks.items(), key=lambda kv: (kv[1].started or 0, kv[0]))
    if args.json:
        out = run_json(rec)
        out["params"] = {k: v for k, v in rec.params.items() if k != "stream"}
        out["tasks"] = {n: task_json(rec, t, attempts.get(n, [])) for n, t in order}
        print(dumps(out))
        return 0
    _show_text(rec, order, attempts)
    return 0


def _show_text(rec: Any, order: list[tuple[str, Any]], attempts: dict[str, list[Any]]) -> None:
    from rich.table import Table
    from rich.text import Text

    con = make_console(36 + 60)
    head = Text(rec.pipeline, style="bold")
    head.append(
        f" run {rec.run_id}: {rec.status}, {secs(rec.started, rec.finished)}s, "
        f"started {iso(rec.started) or '-'}"
        + (f", resumed from {rec.resumed_from}" if rec.resumed_from else "")
    )
    con.print(head, highlight=False, soft_wrap=True)
    shown = {k: v for k, v in rec.params.items() if k != "stream"}
    if shown:
        pairs = ", ".join(f"{k}={json.dumps(v, default=repr)}" for k, v in sorted(shown.items()))
        con.print(Text(f"params: {pairs}"), highlight=False)
    table = Table()
    table.add_column("task", overflow="fold")
    table.add_column("status", overflow="fold")
    table.add_column("attempts", no_wrap=True)
    table.add_column("started (UTC)", no_wrap=True, min_width=20)
    table.add_column("seconds", no_wrap=True)
    table.add_column("error", overflow="fold")
    for n, t in order:
        err = f"{t.error_type}: {t.error}" if t.error_type else ""
        table.add_row(
            *map(
                Text,
                (
                    n,
                    _status_text(rec, t),
                    str(t.attempts),
                    iso_short(t.started),
                    secs(t.started, t.finished),
                    err[:80],
                ),
            )
        )
    con.print(table)
    for n, t in order:
        failed = attempts.get(n, [])
        if not failed and not t.traceback:
            continue
        con.print(Text(f"\n{n}: {t.status} after {t.attempts} attempt(s)", style="bold"))
        for a in failed:
            line = f"  attempt {a['attempt']} failed at {a['at']}: {a['error_type']}: {a['error']}"
            con.print(
                Text(line),
                highlight=False,
                soft_wrap=True,
            )
        if t.traceback:
            con.print(Text("  traceback of the last attempt:"))
            con.print(Text(_indent(t.traceback)), highlight=False, soft_wrap=True)
    if rec.error:
        con.print(Text(f"error: {rec.error}"), highlight=False, soft_wrap=True)


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in str(text).rstrip().splitlines())


def reused_from(rec: Any, t: Any) -> str | None:
    """The run whose stored output a resumed run reused for task ``t`` (it did not run)."""
    return t.output_run if t.output_run and t.output_run != rec.run_id else None


def _status_text(rec: Any, t: Any) -> str:
    src = reused_from(rec, t)
    return f"{t.status} (reused from {src})" if src else t.status


def _attempt_errors(
    pm: PipelineManager, rec: Any, events: list[tuple[Any, ...]], tasks: dict[str, Any]
) -> dict[str, list[dict[str, Any]]]:
    """Each task's failed attempts that a retry followed: attempt, time, error (decrypted
    for a reader the access policy allows, like the task's own error)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for task, ts, event, attempt, error_type, error in events:
        if event != "attempt_failed" or task is None:
            continue
        t = tasks.get(task)
        out.setdefault(task, []).append(
            {
                "attempt": attempt,
                "at": iso(ts),
                "error_type": error_type,
                "error": _clear(pm, rec, error, task, "error", t.tenant if t else rec.tenant),
            }
        )
    return out


def task_json(rec: Any, t: Any, failed: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "status": t.status,
        "attempts": t.attempts,
        "started": iso(t.started),
        "finished": iso(t.finished),
        "duration": duration(t.started, t.finished),
        "error_type": t.error_type,
        "error": t.error,
        "traceback": t.traceback,
        "failed_attempts": failed,
        "reused": reused_from(rec, t) is not None,
        "reused_from": reused_from(rec, t),
    }


class AccessGuard:
    """Applies each run's own access policy (the config it ran with, or ``--config``) to
    reads of the store, through the ``check_access`` hook (tenancy's RBAC)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.principal: str | None = getattr(args, "principal", None)
        self.forced = load_config(args.config) if getattr(args, "config", None) else None
        self._managers: dict[str, PipelineManager] = {}

    def manager(self, rec: Any) -> PipelineManager:
        config = self.forced if self.forced is not None else dict(rec.config)
        config.pop("store", None)
        key = json.dumps(config, sort_keys=True, default=repr)
        pm = self._managers.get(key)
        if pm is None:
            try:
                pm = PipelineManager(config)
            except PipelineError as exc:
                raise UsageError(
                    f"cannot evaluate the access policy of run {rec.run_id} (its config no "
                    f"longer loads: {exc}); pass the policy with --config"
                ) from exc
            self._managers[key] = pm
        return pm

    def check(self, rec: Any, tasks: Any = ()) -> None:
        self.manager(rec).check_read_access(rec, tasks, principal=self.principal)

    def may_read(self, rec: Any, tasks: Any = ()) -> bool:
        from ..exceptions import SecurityError

        try:
            self.check(rec, tasks)
        except SecurityError:
            return False
        return True

    def may_list(self, rec: Any, tasks: Any = ()) -> bool:
        """``may_read`` for listings: a run whose policy cannot be evaluated is left out
        with a warning naming it (fail closed), instead of failing the whole listing."""
        try:
            return self.may_read(rec, tasks)
        except UsageError as exc:
            print(f"xlib-pipeline: run {rec.run_id} not listed: {exc}", file=sys.stderr)
            return False

    def close(self) -> None:
        for pm in self._managers.values():
            pm.close()


def _prune(path: Any, args: argparse.Namespace) -> int:
    from .._prune import parse_duration

    older = parse_duration(args.older_than) if args.older_than is not None else None
    # Through a manager built from --config (or the defaults): its plugins see the prune,
    # so the audit trail records who pruned which runs when audit is on.
    config = load_config(args.config) if getattr(args, "config", None) else {}
    config = with_store(config, str(path))
    with PipelineManager(config) as pm:
        report = pm.prune_runs(
            older_than=older,
            keep=args.keep,
            pipeline=args.pipeline,
            dry_run=args.dry_run,
            force=args.force,
            principal=getattr(args, "principal", None),
        )
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        verb = "would delete" if report.dry_run else "deleted"
        print(f"{verb} {len(report.runs)} run(s), {report.rows} row(s)", end="")
        blobs = f", {len(report.blobs)} blob file(s)" if report.blobs else ""
        print(f"{blobs}, reclaimed {report.reclaimed_bytes:,} bytes" if not report.dry_run else "")
        for rid in report.runs:
            print(f"  {rid}")
    if report.refused:
        print(
            f"xlib-pipeline: kept {len(report.refused)} run(s) that a kept run was resumed "
            f"from ({', '.join(report.refused)}); pass --force to prune them too",
            file=sys.stderr,
        )
    return 0


def _clear(pm: PipelineManager, rec: Any, value: Any, task: str, kind: str, tenant: Any) -> Any:
    from .._records import PayloadRef
    from .._store_recorder import reveal

    ref = PayloadRef(run_id=rec.run_id, pipeline=rec.pipeline, task=task, tenant=tenant, kind=kind)
    try:
        return reveal(pm.hooks, value, ref)
    except PipelineError as exc:
        return f"(encrypted; cannot be decrypted here: {type(exc).__name__})"


def revealed(pm: PipelineManager, rec: Any, tasks: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The run's error texts in clear, for a reader who passed the access check: texts
    stored encrypted are decrypted through the ``decrypt`` hook (the encryption plugin)."""
    import attrs

    rec = attrs.evolve(rec, error=_clear(pm, rec, rec.error, "", "run_error", rec.tenant))
    tasks = {
        n: attrs.evolve(
            t,
            error=_clear(pm, rec, t.error, n, "error", t.tenant),
            traceback=_clear(pm, rec, t.traceback, n, "traceback", t.tenant),
        )
        for n, t in tasks.items()
    }
    return rec, tasks


def run_json(r: Any) -> dict[str, Any]:
    return {
        "run_id": r.run_id,
        "pipeline": r.pipeline,
        "status": r.status,
        "started": iso(r.started),
        "finished": iso(r.finished),
        "duration": duration(r.started, r.finished),
        "resumed_from": r.resumed_from,
        "executor": r.executor,
        "params": dict(r.params),
        "error": "(encrypted)" if isinstance(r.error, bytes) else r.error,
        "source": r.source,
        "tenant": r.tenant,
        "principal": r.principal,
    }
