"""Bridges the scheduler and the run store: records runs, attempts and outputs; resumes."""

from __future__ import annotations

import getpass
import json
from collections.abc import Mapping
from typing import Any

from ._graph import Plan
from ._outcomes import Observer
from ._records import RunContext, Status
from ._results import PipelineResult
from ._scheduler import Run
from ._store import RunStore, dump_output, load_output, payload_ref
from .exceptions import PipelineError, ResumeError


def structure(plan: Plan) -> dict[str, Any]:
    """The resumable structure of a plan: each task's upstreams, merge strategy, condition."""
    return {
        t.name: {
            "deps": list(t.depends_on),
            "merge": t.merge_strategy,
            "condition": t.condition is not None,
        }
        for t in plan.tasks
    }


def diff_structure(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two structures (empty when equal)."""
    changes = []
    added = [n for n in new if n not in old]
    removed = [n for n in old if n not in new]
    if added:
        changes.append(f"tasks added: {', '.join(added)}")
    if removed:
        changes.append(f"tasks removed: {', '.join(removed)}")
    for name in new:
        if name not in old:
            continue
        a, b = old[name], new[name]
        if list(a.get("deps", [])) != list(b["deps"]):
            changes.append(f"task {name!r}: depends_on {a.get('deps')} -> {b['deps']}")
        if a.get("merge") != b["merge"]:
            changes.append(f"task {name!r}: merge_strategy {a.get('merge')!r} -> {b['merge']!r}")
        if bool(a.get("condition")) != b["condition"]:
            changes.append(f"task {name!r}: condition {'added' if b['condition'] else 'removed'}")
    return changes


def _jsonable(value: Any) -> str:
    return json.dumps(value, default=repr, sort_keys=True)


class StoreRecorder(Observer):
    """Observer writing a run into the store. Outputs pass through the ``encrypt`` hook."""

    def __init__(
        self,
        store: RunStore,
        hooks: Any,
        *,
        record_outputs: bool = True,
        carried: Mapping[int, tuple[bytes, str]] | None = None,
        source: str | None = None,
        flush: bool = True,
    ) -> None:
        self.flush = flush
        self.store = store
        self.hooks = hooks
        self.record_outputs = record_outputs
        self.carried = dict(carried or {})
        self.source = source
        self.recorded: set[int] = set()

    def start(self, ctx: RunContext, plan: Plan) -> None:
        """Record the run's row before its first task."""
        self.store.run_started(
            {
                "run_id": ctx.run_id,
                "pipeline": plan.pipeline_name,
                "fingerprint": plan.fingerprint,
                "structure": _jsonable(structure(plan)),
                "tenant": ctx.tenant_id,
                "principal": ctx.principal or _user(),
                "params": _jsonable(dict(ctx.params)),
                "config": _jsonable(dict(ctx.config.raw)),
                "source": self.source,
                "executor": ctx.executor,
                "status": "running",
                "started": ctx.started,
                "finished": None,
                "resumed_from": ctx.resumed_from,
                "error": None,
            }
        )
        if self.flush:
            self.store.flush()

    def task_started(self, run: Run, i: int, attempt: int) -> None:
        self.store.event(run.ctx.run_id, run.plan.names[i], "running", attempt=attempt)

    def attempt_failed(self, run: Run, i: int, attempt: int, error: BaseException) -> None:
        self.store.event(
            run.ctx.run_id,
            run.plan.names[i],
            "attempt_failed",
            attempt=attempt,
            error_type=type(error).__name__,
            error=str(error)[:2000],
        )

    def task_finished(self, run: Run, i: int) -> None:
        cols = run.cols
        ctx = run.ctx
        task = run.plan.tasks[i]
        status = cols.status[i]
        tenant = ctx.tenant_of(task)
        blob: bytes | None = None
        output_run: str | None = None
        failure: BaseException | None = None
        self.recorded.add(i)
        if status is Status.SUCCEEDED:
            carried = self.carried.pop(i, None)
            if carried is not None:
                blob, output_run = carried
            elif self.record_outputs:
                raw = dump_output(cols.outputs[i])
                if raw is not None:
                    ref = payload_ref(ctx.run_id, run.plan.pipeline_name, task.name, tenant)
                    try:
                        blob = self.hooks.encrypt(data=raw, ref=ref)
                    except BaseException as error:  # never fall back to plaintext
                        failure = error
        err = cols.errors.get(i)
        exc = err[0] if err else None
        attempts = cols.attempts.get(i, 1 if cols.started[i] is not None else 0)
        self.store.task_finished(
            (
                ctx.run_id,
                task.name,
                status.value if status else "pending",
                attempts,
                cols.started[i],
                cols.finished[i],
                type(exc).__name__ if exc is not None else None,
                str(exc)[:2000] if exc is not None else None,
                err[1] if err else None,
                blob,
                output_run,
                tenant,
            )
        )
        if failure is not None:  # recorded without its output: resume re-runs it
            raise failure

    def run_finished(self, run: Run, result: PipelineResult) -> None:
        # Tasks abandoned on cancellation never reached task_finished: record them too.
        for i, st in enumerate(run.cols.status):
            if i not in self.recorded and st is not None:
                self.task_finished(run, i)
        err = None if result.error is None else f"{type(result.error).__name__}: {result.error}"
        if self.flush:
            self.store.run_finished(result.run_id, result.status, result.finished, err)
            return
        self.store.submit(
            "UPDATE runs SET status=?, finished=?, error=? WHERE run_id=?",
            (result.status, result.finished, err, result.run_id),
        )
        self.store.event(result.run_id, None, "run." + result.status, ts=result.finished)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # pragma: no cover - no user database
        return "unknown"


def load_resume(
    store: RunStore, run_id: str, plan: Plan, hooks: Any, *, force: bool
) -> tuple[str, dict[int, tuple[Status, Any]], dict[int, tuple[bytes, str]]]:
    """What a resumed run starts from: the old run id, preloaded results, carried blobs."""
    rec = store.get_run(run_id)
    if rec.pipeline != plan.pipeline_name:
        raise ResumeError(
            f"run {rec.run_id} belongs to pipeline {rec.pipeline!r}, not {plan.pipeline_name!r}",
            path=str(store.path),
        )
    changes = diff_structure(rec.structure, structure(plan))
    if changes and not force:
        raise ResumeError(
            f"cannot resume run {rec.run_id}: the structure of pipeline {plan.pipeline_name!r} "
            f"changed since it ran ({'; '.join(changes)}); pass force=True (CLI: --force) to "
            "resume anyway, re-running every task whose upstreams changed",
            path=str(store.path),
        )
    preloaded: dict[int, tuple[Status, Any]] = {}
    carried: dict[int, tuple[bytes, str]] = {}
    tasks = store.get_tasks(rec.run_id)
    changed = {c.split("'")[1] for c in changes if c.startswith("task '")}
    for name, tr in tasks.items():
        i = plan.index.get(name)
        if i is None or name in changed:
            continue
        if tr.status == "succeeded" and tr.output is not None:
            source_run = tr.output_run or rec.run_id
            ref = payload_ref(source_run, plan.pipeline_name, name, tr.tenant)
            try:
                data = hooks.decrypt(data=tr.output, ref=ref)
                value = load_output(data)
            except PipelineError:
                raise
            except Exception as exc:
                raise ResumeError(
                    f"cannot load the stored output of task {name!r} from run {source_run}: "
                    f"{type(exc).__name__}: {exc}",
                    path=str(store.path),
                ) from exc
            preloaded[i] = (Status.SUCCEEDED, value)
            carried[i] = (tr.output, source_run)
        elif tr.status == "skipped":
            preloaded[i] = (Status.SKIPPED, None)
    return rec.run_id, preloaded, carried
