"""The ``xlib-pipeline`` command line.

Built-in commands: ``run``, ``graph``, ``plugins``, ``render``; plugins add more through
``register_cli_commands`` (``audit``, ``lineage``, ``keys``, ``worker`` ...).
Exit codes: 0 success, 1 a run failed, 2 bad input (file, name, config, option).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._events import LOG_FORMATS, configure_logging
from ._manager import PipelineManager
from .exceptions import PipelineError, UsageError
from .loading import (
    CONFIG_ATTR,
    default_store_path,
    load_config,
    load_module,
    load_pipeline,
    open_store,
    with_store,
)

__all__ = [
    "CONFIG_ATTR",
    "UsageError",
    "build_manager",
    "build_parser",
    "default_store_path",
    "load_config",
    "load_module",
    "load_pipeline",
    "main",
]

# --- commands -----------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    return repr(value)


def _print_result(value: Any) -> None:
    try:
        print(json.dumps(value, indent=2, default=_json_default, sort_keys=True))
    except (TypeError, ValueError):
        print(repr(value))


def _parse_params(items: Sequence[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--param expects KEY=VALUE, got {item!r}")
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    return params


def build_manager(args: argparse.Namespace, module: Any = None) -> PipelineManager:
    """The manager for a CLI invocation: ``--config`` or the file's PIPELINE_CONFIG."""
    return PipelineManager(load_config(getattr(args, "config", None), module))


def _sigterm_as_interrupt() -> None:
    import signal

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # pragma: no cover - not the main thread
        pass


def _source_of(target: str) -> str:
    file, sep, name = target.partition(":")
    return str(Path(file).resolve()) + (sep + name if sep else "")


def _execute_cli(args: argparse.Namespace, target: str, **extra: Any) -> int:
    pipeline, module = load_pipeline(target)
    config = with_store(load_config(getattr(args, "config", None), module), args.store)
    if extra.get("resume") and getattr(args, "config", None) is None and extra.get("config"):
        config = with_store(dict(extra["config"]), args.store)
    extra.pop("config", None)
    _sigterm_as_interrupt()
    with PipelineManager(config) as pm:
        pm.interrupt_notice = _interrupt_notice
        options: dict[str, Any] = {}
        if getattr(args, "tenant", None):
            options["tenant_id"] = args.tenant
        if getattr(args, "principal", None):
            options["principal"] = args.principal
        result = pm.execute_pipeline(
            pipeline,
            parallel=not getattr(args, "inline", False),
            executor=getattr(args, "executor", None),
            max_workers=getattr(args, "max_workers", None),
            monitor=getattr(args, "monitor", True),
            params=_parse_params(getattr(args, "param", None) or ()),
            source=_source_of(target),
            **options,
            **extra,
        )
        return _report(result, pm)


def cmd_run(args: argparse.Namespace) -> int:
    return _execute_cli(args, args.target)


def cmd_resume(args: argparse.Namespace) -> int:
    path = args.store or default_store_path()
    store = open_store(path)
    try:
        rec = store.get_run(args.run_id)
    finally:
        store.close()
    target = args.target or rec.source
    if not target:
        raise UsageError(
            f"run {rec.run_id} was not started from the CLI; "
            "name its pipeline with --target FILE:NAME"
        )
    return _execute_cli(args, target, resume=rec.run_id, force=args.force, config=rec.config)


def cmd_runs(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    path = args.store or default_store_path()
    store = open_store(path)
    console = Console()
    guard = _AccessGuard(args)
    try:
        if args.runs_command == "prune":
            return _prune(path, args)
        if args.runs_command == "list":
            runs = store.list_runs(limit=args.limit, pipeline=args.pipeline, status=args.status)
            runs = [r for r in runs if guard.may_list(r, store.get_tasks(r.run_id).values())]
            if args.json:
                print(json.dumps([_run_json(r) for r in runs], indent=2))
                return 0
            # Every stored string is shown as plain Text: a pipeline named "p[/]x" or
            # "[link=...]" is data, never rich markup.
            table = Table(title=Text(f"runs in {path}"))
            for col in ("run id", "pipeline", "status", "started (UTC)", "seconds", "resumed from"):
                # fold, never truncate: run ids are meant to be copied
                table.add_column(col, overflow="fold")
            for r in runs:
                table.add_row(
                    *map(
                        Text,
                        (
                            r.run_id,
                            r.pipeline,
                            r.status,
                            _ts(r.started),
                            _secs(r.started, r.finished),
                            r.resumed_from or "",
                        ),
                    )
                )
            console.print(table)
            return 0
        try:
            rec = store.get_run(args.run_id)
        except PipelineError:
            from .streams._cli import show_stream

            if show_stream(path, args.run_id, as_json=args.json, guard=guard):
                return 0
            raise
        tasks = store.get_tasks(rec.run_id)
        guard.check(rec, tasks.values())
        rec, tasks = _revealed(guard._manager(rec), rec, tasks)
        if args.json:
            out = _run_json(rec)
            out["tasks"] = {
                n: {
                    "status": t.status,
                    "attempts": t.attempts,
                    "duration": t.duration,
                    "error_type": t.error_type,
                    "error": t.error,
                }
                for n, t in tasks.items()
            }
            print(json.dumps(out, indent=2))
            return 0
        head = Text(rec.pipeline, style="bold")
        head.append(
            f" run {rec.run_id}: {rec.status}, "
            f"{_secs(rec.started, rec.finished)}s, started {_ts(rec.started)}"
            + (f", resumed from {rec.resumed_from}" if rec.resumed_from else "")
        )
        console.print(head, highlight=False)
        shown = {k: v for k, v in rec.params.items() if k != "stream"}
        if shown:
            pairs = ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(shown.items()))
            console.print(Text(f"params: {pairs}"), highlight=False)
        table = Table()
        for col in ("task", "status", "attempts", "seconds", "error"):
            table.add_column(col)
        for n, t in sorted(tasks.items(), key=lambda kv: kv[1].started or 0):
            err = f"{t.error_type}: {t.error}" if t.error_type else ""
            table.add_row(
                *map(Text, (n, t.status, str(t.attempts), _secs(t.started, t.finished), err[:80]))
            )
        console.print(table)
        if rec.error:
            console.print(Text(f"error: {rec.error}"), highlight=False)
        return 0
    finally:
        store.close()
        guard.close()


class _AccessGuard:
    """Applies each run's own access policy (the config it ran with, or ``--config``) to
    reads of the store, through the ``check_access`` hook (tenancy's RBAC)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.principal: str | None = getattr(args, "principal", None)
        self.forced = load_config(args.config) if getattr(args, "config", None) else None
        self._managers: dict[str, PipelineManager] = {}

    def _manager(self, rec: Any) -> PipelineManager:
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
        self._manager(rec).check_read_access(rec, tasks, principal=self.principal)

    def may_read(self, rec: Any, tasks: Any = ()) -> bool:
        from .exceptions import SecurityError

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


def _ts(ts: float | None) -> str:
    from datetime import UTC, datetime

    return "" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _secs(a: float | None, b: float | None) -> str:
    return "" if a is None or b is None else f"{b - a:.3f}"


def _prune(path: str | Path, args: argparse.Namespace) -> int:
    from ._prune import parse_duration

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


def _revealed(pm: PipelineManager, rec: Any, tasks: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The run's error texts in clear, for a reader who passed the access check: texts
    stored encrypted are decrypted through the ``decrypt`` hook (the encryption plugin)."""
    import attrs

    from ._records import PayloadRef
    from ._store_recorder import reveal

    def clear(value: Any, task: str, kind: str, tenant: str | None) -> Any:
        ref = PayloadRef(
            run_id=rec.run_id, pipeline=rec.pipeline, task=task, tenant=tenant, kind=kind
        )
        try:
            return reveal(pm.hooks, value, ref)
        except PipelineError as exc:
            return f"(encrypted; cannot be decrypted here: {type(exc).__name__})"

    rec = attrs.evolve(rec, error=clear(rec.error, "", "run_error", rec.tenant))
    tasks = {
        n: attrs.evolve(
            t,
            error=clear(t.error, n, "error", t.tenant),
            traceback=clear(t.traceback, n, "traceback", t.tenant),
        )
        for n, t in tasks.items()
    }
    return rec, tasks


def _run_json(r: Any) -> dict[str, Any]:
    return {
        "run_id": r.run_id,
        "pipeline": r.pipeline,
        "status": r.status,
        "started": r.started,
        "finished": r.finished,
        "resumed_from": r.resumed_from,
        "error": "(encrypted)" if isinstance(r.error, bytes) else r.error,
        "source": r.source,
        "tenant": r.tenant,
        "principal": r.principal,
        "params": dict(r.params),
    }


def _interrupt_notice(run_id: str, grace: float | None) -> None:
    """Printed at once on the first Ctrl-C / SIGTERM of a run."""
    wait = "until they finish" if grace is None else f"up to {grace:g} s to finish"
    print(
        f"xlib-pipeline: stopping run {run_id}: no new task starts; running tasks get {wait}. "
        "Press Ctrl-C again to stop at once.",
        file=sys.stderr,
        flush=True,
    )


def _report(result: Any, manager: Any = None) -> int:
    print(f"run {result.run_id} {result.status} in {result.duration:.3f}s", file=sys.stderr)
    print(f"run_id: {result.run_id}")
    if result.success:
        _print_result(result.final_result)
        return 0
    if result.status == "cancelled":
        print(
            f"xlib-pipeline: interrupted; `xlib-pipeline resume {result.run_id}` finishes it",
            file=sys.stderr,
        )
        return 130
    err = result.error
    # Error texts quote data: they leave through the manager's redaction (PII detectors).
    if manager is not None:
        print(f"error: {manager.describe_error(err)}", file=sys.stderr)
    else:
        print(f"error: {err}", file=sys.stderr)
    tb = getattr(err, "traceback", None)
    if tb:
        print(manager.redact(tb) if manager is not None else tb, file=sys.stderr)
    return 1


def cmd_graph(args: argparse.Namespace) -> int:
    pipeline, _ = load_pipeline(args.target)
    pipeline.validate()
    print(pipeline.to_mermaid() if args.format == "mermaid" else pipeline.to_dot(), end="")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    pm = PipelineManager(entry_points=True)
    infos = pm.plugins
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": i.name,
                        "dist": i.dist,
                        "version": i.version,
                        "hooks": list(i.hooks),
                        "builtin": i.builtin,
                    }
                    for i in infos
                ],
                indent=2,
            )
        )
        return 0
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title="xlib-pipeline plugins")
    for col in ("name", "distribution", "version", "hooks"):
        table.add_column(col)
    for i in infos:
        table.add_row(
            *map(
                Text,
                (
                    i.name + (" (builtin)" if i.builtin else ""),
                    i.dist or "-",
                    i.version or "-",
                    ", ".join(i.hooks),
                ),
            )
        )
    Console().print(table)
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    pipeline, module = load_pipeline(args.target)
    pm = build_manager(args, module)
    target = pm.render_targets.get(args.render_target)
    if target is None:  # pragma: no cover - argparse restricts choices
        raise UsageError(f"unknown render target {args.render_target!r}")
    files = target.render(pipeline, pm, args)
    out = getattr(args, "output", None)
    if out:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (folder / name).write_text(text)
        print(f"wrote {len(files)} file(s) to {folder}", file=sys.stderr)
    else:
        docs = [text.strip() for text in files.values()]
        print("\n---\n".join(d.removeprefix("---").strip() for d in docs))
    return 0


# --- parser -------------------------------------------------------------------------------------


def _add_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="config file (.json, .toml, .yaml)")


def _int_at_least(low: int) -> Callable[[str], int]:
    """argparse type: an integer >= ``low`` (at most 10**6)."""

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= 10**6:
            raise argparse.ArgumentTypeError(f"expected {low} to 1000000, got {value}")
        return value

    return convert


def build_parser(pm: PipelineManager | None = None) -> argparse.ArgumentParser:
    """The argument parser, with plugin sub-commands and render targets from ``pm``."""
    parser = argparse.ArgumentParser(
        prog="xlib-pipeline", description="Run, inspect and deploy xlib-pipeline pipelines."
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log events (-vv: debug)"
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=None,
        help="how events are logged to stderr: console lines or one JSON object per line "
        "(implies -v)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a pipeline: FILE[:PIPELINE_OR_FACTORY]")
    run.add_argument("target")
    _add_config_arg(run)
    run.add_argument("--inline", action="store_true", help="run tasks one at a time")
    run.add_argument("--executor", help="executor name (threads, processes, dask ...)")
    run.add_argument("--max-workers", type=_int_at_least(1))
    run.add_argument("--monitor", action=argparse.BooleanOptionalAction, default=True)
    run.add_argument("--tenant", help="tenant id for the run")
    run.add_argument("--principal", help="who runs it (access control)")
    run.add_argument("--param", action="append", help="KEY=VALUE run parameter (repeatable)")
    run.add_argument("--store", help="run store file (default: .xlib-pipeline/runs.sqlite)")
    run.set_defaults(func=cmd_run)

    resume = sub.add_parser("resume", help="re-run what did not finish in a stored run")
    resume.add_argument("run_id")
    resume.add_argument("--store", help="run store file")
    resume.add_argument("--target", help="FILE[:NAME] when the run did not start from the CLI")
    _add_config_arg(resume)
    resume.add_argument("--force", action="store_true", help="resume a changed pipeline")
    resume.add_argument("--monitor", action=argparse.BooleanOptionalAction, default=True)
    resume.add_argument("--inline", action="store_true")
    resume.add_argument("--executor")
    resume.add_argument("--max-workers", type=_int_at_least(1))
    resume.set_defaults(func=cmd_resume)

    runs = sub.add_parser("runs", help="run history from the run store")
    rsub_runs = runs.add_subparsers(dest="runs_command", required=True, metavar="ACTION")
    rl = rsub_runs.add_parser("list", help="recent runs")
    rl.add_argument("--limit", type=_int_at_least(0), default=20)
    rl.add_argument("--pipeline")
    rl.add_argument("--status")
    rs = rsub_runs.add_parser("show", help="one run with its tasks, or a stream by name")
    rs.add_argument("run_id")
    rp = rsub_runs.add_parser("prune", help="delete old runs and reclaim the space")
    rp.add_argument("--older-than", metavar="DURATION", help="e.g. 30d, 12h, 15m, 90s")
    rp.add_argument("--keep", type=int, metavar="N", help="keep the newest N runs")
    rp.add_argument("--pipeline", help="only runs of this pipeline")
    rp.add_argument("--dry-run", action="store_true", help="say what would go, delete nothing")
    rp.add_argument(
        "--force", action="store_true", help="also prune runs that a kept run resumed from"
    )
    for sp in (rl, rs, rp):
        sp.add_argument("--store", help="run store file")
        sp.add_argument("--json", action="store_true")
        sp.add_argument("--principal", help="who reads (access control; default: OS user)")
        _add_config_arg(sp)
    runs.set_defaults(func=cmd_runs)

    from .streams._cli import add_parser as add_stream_parser
    from .streams._cli import cmd_stream

    add_stream_parser(sub, _add_config_arg)
    sub.choices["stream"].set_defaults(func=cmd_stream)

    graph = sub.add_parser("graph", help="print the DAG as Mermaid or DOT")
    graph.add_argument("target")
    graph.add_argument("--format", choices=("mermaid", "dot"), default="mermaid")
    graph.set_defaults(func=cmd_graph)

    plugins = sub.add_parser("plugins", help="list installed plugins and their hooks")
    plugins.add_argument("--json", action="store_true")
    plugins.set_defaults(func=cmd_plugins)

    targets = pm.render_targets if pm is not None else {}
    render = sub.add_parser("render", help="render deployment manifests for a pipeline")
    rsub = render.add_subparsers(dest="render_target", required=True, metavar="TARGET")
    for name, target in sorted(targets.items()):
        tp = rsub.add_parser(name, help=target.doc or name)
        tp.add_argument("target", help="FILE[:PIPELINE_OR_FACTORY]")
        _add_config_arg(tp)
        tp.add_argument("-o", "--output", help="write one file per manifest into this folder")
        if target.add_arguments is not None:
            target.add_arguments(tp)
        tp.set_defaults(func=cmd_render)

    if pm is not None:
        for name, command in sorted(pm.cli_commands.items()):
            cp = sub.add_parser(name, help=command.help)
            command.add_arguments(cp)
            cp.set_defaults(func=command.run)
    return parser


def _configure_logging(verbose: int, log_format: str | None = None) -> None:
    if log_format is not None and verbose == 0:
        verbose = 1  # asking for a log format is asking for the events
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    configure_logging(level, format=log_format or "console", stream=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``xlib-pipeline`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        pm = PipelineManager(entry_points=True)
    except PipelineError as exc:
        print(f"xlib-pipeline: {exc}", file=sys.stderr)
        return 2
    parser = build_parser(pm)
    args = parser.parse_args(argv)
    _configure_logging(args.verbose, getattr(args, "log_format", None))
    try:
        code = args.func(args)
        return int(code or 0)
    except PipelineError as exc:
        print(f"xlib-pipeline: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xlib-pipeline: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # a file or folder named on the command line
        where = f" {exc.filename!r}" if exc.filename else ""
        print(f"xlib-pipeline: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except Exception as exc:
        # Never a traceback for input: one line, the traceback only with -vv.
        if args.verbose >= 2:
            raise
        print(
            f"xlib-pipeline: {args.command}: {type(exc).__name__}: {exc} "
            "(run with -vv for the traceback)",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
