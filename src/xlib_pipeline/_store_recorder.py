"""Bridges the scheduler and the run store: records runs, attempts and outputs; resumes."""

from __future__ import annotations

import functools
import getpass
import json
import os
import pickle
import time
from collections.abc import Mapping
from typing import Any

from ._blobs import BlobRef
from ._builtin import CorePlugin
from ._commit import FINISH_RUN, LOG
from ._context import params_json
from ._graph import Plan
from ._outcomes import Observer
from ._records import LEASE_TAKEOVERS, PayloadRef, RetryDecision, RunContext, Status
from ._results import PipelineResult
from ._scheduler import Run
from ._store import RunStore, load_output, payload_ref
from .exceptions import PipelineError, ResumeError, StoreError


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
    return _ENCODE(value)


#: ``json.dumps(value, default=repr, sort_keys=True)``: one encoder for every call (dumps
#: builds one per call when given options: 2 µs of every run's params).
_ENCODE = json.JSONEncoder(default=repr, sort_keys=True).encode


_STRUCTURES: dict[tuple[str, str, int], str] = {}
#: The last config encoded for a runs row, and its text: every run of a manager (every
#: micro-batch of a stream: 12 us each) records the same validated config.
_CONFIG: tuple[Any, str] = (None, "")


def _config_json(raw: Mapping[str, Any]) -> str:
    """``raw`` (a manager's validated config) as the runs row stores it, encoded once per
    config object."""
    global _CONFIG
    last = _CONFIG
    if last[0] is raw:
        return last[1]
    text = _jsonable(dict(raw))
    _CONFIG = (raw, text)
    return text


def structure_json(plan: Plan) -> str:
    """:func:`structure` as the runs row stores it, cached by the plan's fingerprint (a digest
    of the names, edges, merge strategies and conditions the structure is made of): encoding
    it cost 6 µs per task on every run of the 10,000-task DAG."""
    key = (plan.pipeline_name, plan.fingerprint, len(plan.tasks))
    text = _STRUCTURES.get(key)
    if text is None:
        if len(_STRUCTURES) >= 64:
            _STRUCTURES.clear()
        text = _STRUCTURES[key] = _jsonable(structure(plan))
    return text


class StoreRecorder(Observer):
    """Observer writing a run into the store. Outputs pass through the ``encrypt`` hook."""

    def __init__(
        self,
        store: RunStore,
        hooks: Any,
        *,
        record_outputs: bool = True,
        carried: Mapping[int, tuple[bytes, str, str | None]] | None = None,
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
        #: The store's queue (RunStore.add): the per-task rows are its LOG rows.
        self.add = store.add
        #: Where the run's rows go: the store, or a stream batch's HeldRun (see start).
        self.rec: Any = store
        #: Whether a plugin implements ``encrypt`` (else the core's pass-through answers:
        #: skipped, with the reference it would be given, on the per-task path).
        self.sealing = _sealing(hooks)
        #: Whether the pickles of None, bools and small ints stay inline (see _output).
        self.atoms = getattr(store.blobs, "threshold", 0) >= _ATOM_MAX

    def start(self, ctx: RunContext, plan: Plan) -> None:
        """Lease the run (and the run it resumes), then record its row before its first task.

        Raises :class:`RunLeasedError` while another live process executes either run.
        """
        ids = [ctx.run_id] + ([ctx.resumed_from] if ctx.resumed_from else [])
        batch = not self.flush and not ctx.resumed_from
        if batch:
            # A stream's batch: a run id minted just now, committed with its checkpoint,
            # and held apart from the store's queue until then (_held).
            hold = getattr(self.store, "hold", None)
            if hold is not None:
                self.rec = hold(ctx.run_id)
                self.add = self.rec.add
            self.rec.claim_new(ctx.run_id)
            taken = []
        else:
            taken = self.store.acquire_leases(ctx.run_id, ids)
        if taken:
            ctx.stash[LEASE_TAKEOVERS] = [
                {"run_id": t.run_id, "pid": t.pid, "host": t.host, "holder": t.holder}
                for t in taken
            ]
            if ctx.log is not None:
                for t in taken:
                    ctx.log.warning("run.lease_taken_over", run=t.run_id, owner=t.describe())
        self.rec.run_started(
            {
                "run_id": ctx.run_id,
                "pipeline": plan.pipeline_name,
                "fingerprint": plan.fingerprint,
                "structure": structure_json(plan),
                "tenant": ctx.tenant_id,
                "principal": ctx.principal or _user(),
                "params": _jsonable(params_json(ctx.params)),
                "config": _config_json(ctx.config.raw),
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
            try:
                self.store.flush()
            except BaseException:
                self.store.release_leases(ctx.run_id)
                raise
        if not batch:
            # Not a stream's batch: its lease row is only written with its checkpoint's
            # commit (and released in the same transaction), so there is nothing to beat.
            self.store.keep_alive(ctx.run_id)

    def task_started(self, run: Run, i: int, attempt: int) -> None:
        # RunStore.event's log row, queued directly (one call per task fewer).
        self.add(
            LOG,
            (2, run.ctx.run_id, run.plan.names[i], "running", attempt,
             None, None, None, None, None, None, None, None, _now()),
        )  # fmt: skip

    def attempt_failed(
        self, run: Run, i: int, attempt: int, error: BaseException, decision: RetryDecision
    ) -> None:
        self.rec.event(
            run.ctx.run_id,
            run.plan.names[i],
            "attempt_failed",
            attempt=attempt,
            error_type=type(error).__name__,
            error=self._protect(str(error)[:2000], run, i, "error"),
        )

    def _protect(self, text: str | None, run: Run, i: int | None, kind: str) -> str | bytes | None:
        """An error text as stored: through the ``encrypt`` hook, like outputs (only the
        exception class stays in clear). Without encryption it stays text."""
        if text is None:
            return None
        if not self.sealing:
            return text
        ctx = run.ctx
        task = run.plan.tasks[i] if i is not None else None
        ref = PayloadRef(
            run_id=ctx.run_id,
            pipeline=run.plan.pipeline_name,
            task=task.name if task is not None else "",
            tenant=ctx.tenant_of(task) if task is not None else ctx.tenant_id,
            kind=kind,
        )
        raw = text.encode("utf-8", "replace")
        try:
            sealed = self.hooks.encrypt(data=raw, ref=ref)
        except Exception as exc:  # never fall back to plaintext: say it is not kept
            return f"(not stored: the encrypt hook failed with {type(exc).__name__})"
        if sealed is None or sealed == raw:
            return text
        return bytes(sealed)

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
        if status in _WITH_OUTPUT:
            carried = self.carried.pop(i, None) if self.carried else None
            if carried is not None:
                blob, output_run, blob_name = carried
                if blob_name is not None:  # this run references the blob too (prune keeps it)
                    self.rec.blob_referenced(ctx.run_id, task.name, blob_name)
            elif self.record_outputs:
                blob, failure = self._output(run, task, tenant, cols.outputs[i])
        started = cols.started[i]
        if status is SUCCEEDED and started is not None and i not in cols.attempts:
            # The usual row: a first attempt's success (see RunStore.task_finished's log row).
            self.add(
                LOG,
                (1, ctx.run_id, task.name, "succeeded", 1, started, cols.finished[i],
                 None, None, None, blob, output_run, tenant, None),
            )  # fmt: skip
        else:
            err = cols.errors.get(i)
            exc = err[0] if err else None
            attempts = cols.attempts.get(i, 1 if started is not None else 0)
            self.add(
                LOG,
                (
                    1,
                    ctx.run_id,
                    task.name,
                    _VALUES.get(status, "pending"),  # type: ignore[arg-type]
                    attempts,
                    started,
                    cols.finished[i],
                    type(exc).__name__ if exc is not None else None,
                    self._protect(str(exc)[:2000], run, i, "error") if exc is not None else None,
                    self._protect(err[1], run, i, "traceback") if err else None,
                    blob,
                    output_run,
                    tenant,
                    None,
                ),
            )
        if failure is not None:  # recorded without its output: resume re-runs it
            raise failure

    def _output(
        self, run: Run, task: Any, tenant: str | None, value: Any
    ) -> tuple[bytes | None, BaseException | None]:
        """A task's output as stored (pickled or a blob reference, then through the
        ``encrypt`` hook), and the failure that kept it out (``None``, None: not stored)."""
        ctx = run.ctx
        pipeline = run.plan.pipeline_name
        cls = value.__class__
        if self.atoms and (value is None or cls is bool or (cls is int and 0 <= value < 256)):
            # The pickles of the commonest outputs, made once (0.5 µs per task less).
            atom = (
                _PICKLED_NONE
                if value is None
                else _PICKLED_BOOLS[value]
                if cls is bool
                else _PICKLED_INTS[value]
            )
            if not self.sealing:
                return atom, None
            return self._seal(atom, ctx.run_id, pipeline, task.name, tenant)

        def sealer() -> Any:  # asked only when the output goes to a blob
            ref = payload_ref(ctx.run_id, pipeline, task.name, tenant)
            return self.hooks.encrypt_stream(ref=ref)

        raw: bytes | None
        try:
            dumped = self.store.blobs.dump(value, sealer)
        except BaseException as error:  # a blob write fault, or the sealer's
            return None, error
        if dumped.__class__ is bytes:
            raw = dumped
        elif isinstance(dumped, BlobRef):
            self.rec.blob_referenced(ctx.run_id, task.name, dumped.name)
            raw = dumped.encode()
        else:
            raw = dumped
        if raw is None:
            return None, None
        if len(raw) > MAX_BLOB:
            return None, StoreError(
                f"run store {str(self.store.path)!r}: the output of task {task.name!r} "
                f"is {len(raw):,} bytes pickled, more than the store holds in one "
                f"value ({MAX_BLOB:,}); the task is recorded without it and re-runs "
                "on resume (return a path or a smaller value)",
                path=str(self.store.path),
            )
        if not self.sealing:
            return raw, None
        return self._seal(raw, ctx.run_id, pipeline, task.name, tenant)

    def _seal(
        self, data: bytes, run_id: str, pipeline: str, task: str, tenant: str | None
    ) -> tuple[bytes | None, BaseException | None]:
        """``data`` through the ``encrypt`` hook; on failure the error, never plaintext."""
        try:
            return self.hooks.encrypt(
                data=data, ref=payload_ref(run_id, pipeline, task, tenant)
            ), None
        except BaseException as error:  # never fall back to plaintext
            return None, error

    def run_finished(self, run: Run, result: PipelineResult) -> None:
        # Tasks abandoned on cancellation never reached task_finished: record them too.
        for i, st in enumerate(run.cols.status):
            if i not in self.recorded and st is not None:
                self.task_finished(run, i)
        rec = self.rec
        rec.let_go(result.run_id)
        err = None if result.error is None else f"{type(result.error).__name__}: {result.error}"
        error = self._protect(err, run, None, "run_error")
        if self.flush:
            self.store.run_finished(
                result.run_id,
                result.status,
                result.finished,
                error,  # type: ignore[arg-type]  # sealed bytes go in the same column
            )
            return
        # A stream's batch: committed with the stream's checkpoint, not flushed on its own.
        # Its end event is queued first, beside the task rows: the log rows between two
        # statements are one multi-row INSERT, so after the UPDATE it cost one more.
        rec.event(result.run_id, None, "run." + result.status, ts=result.finished)
        rec.release_leases(result.run_id)
        rec.add(FINISH_RUN, (result.status, result.finished, error, result.run_id))


_now = time.time
SUCCEEDED = Status.SUCCEEDED
_WITH_OUTPUT = frozenset({Status.SUCCEEDED, Status.CACHED, Status.FALLBACK})
#: A status as stored: the plain text (psycopg would adapt the enum by its name).
_VALUES = {s: s.value for s in Status}


def _sealing(hooks: Any) -> bool:
    """Whether a plugin implements ``encrypt`` beside the core's pass-through (asked once
    per :class:`~._hooks.Hooks` facade, which is rebuilt when a plugin registers)."""
    memo = getattr(hooks, "memo", None)
    if memo.__class__ is not dict:
        memo = None
    else:
        known = memo.get("sealing")
        if known is not None:
            return bool(known)
    try:
        impls = hooks.pluggy.hook.encrypt.get_hookimpls()
    except AttributeError:  # not a Hooks facade: always ask it
        return True
    sealing = any(not isinstance(impl.plugin, CorePlugin) for impl in impls)
    if memo is not None:
        memo["sealing"] = sealing
    return sealing


#: What :meth:`BlobStore.dump <._blobs.BlobStore.dump>` makes of ``None``, ``False``,
#: ``True`` and the ints 0-255: ``pickle.dumps(value, protocol=5)``.
_PICKLED_NONE = pickle.dumps(None, protocol=5)
_PICKLED_BOOLS = (pickle.dumps(False, protocol=5), pickle.dumps(True, protocol=5))
_PICKLED_INTS = tuple(pickle.dumps(k, protocol=5) for k in range(256))
_ATOM_MAX = max(map(len, (_PICKLED_NONE, *_PICKLED_BOOLS, *_PICKLED_INTS)))

#: The largest value SQLite stores by default (SQLITE_MAX_LENGTH), less a margin.
MAX_BLOB = 1_000_000_000 - 4096


def reveal(hooks: Any, value: Any, ref: PayloadRef) -> str | None:
    """A stored error text in clear: decrypted through the ``decrypt`` hook when it was
    stored encrypted (bytes); text as it is."""
    if value is None or isinstance(value, str):
        return value
    data = hooks.decrypt(data=bytes(value), ref=ref)
    return bytes(data if data is not None else value).decode("utf-8", "replace")


def _user() -> str:
    """The OS user running this process (read once per process: one per run otherwise)."""
    return _user_of(os.getpid())


@functools.cache
def _user_of(pid: int) -> str:
    try:
        return getpass.getuser()
    except Exception:  # pragma: no cover - no user database
        return "unknown"


def load_resume(
    store: RunStore, run_id: str, plan: Plan, hooks: Any, *, force: bool
) -> tuple[str, dict[int, tuple[Status, Any]], dict[int, tuple[bytes, str, str | None]]]:
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
    carried: dict[int, tuple[bytes, str, str | None]] = {}
    tasks = store.get_tasks(rec.run_id)
    changed = {c.split("'")[1] for c in changes if c.startswith("task '")}
    for name, tr in tasks.items():
        i = plan.index.get(name)
        if i is None or name in changed:
            continue
        if tr.status in ("succeeded", "cached", "fallback") and tr.output is not None:
            source_run = tr.output_run or rec.run_id
            ref = payload_ref(source_run, plan.pipeline_name, name, tr.tenant)
            blob_name: str | None = None
            try:
                data = hooks.decrypt(data=tr.output, ref=ref)
                blob = BlobRef.decode(data)
                if blob is None:
                    value = load_output(data)
                else:
                    blob_name = blob.name
                    value = load_blob(store, blob, hooks, ref)
            except PipelineError:
                raise
            except Exception as exc:
                raise ResumeError(
                    f"cannot load the stored output of task {name!r} from run {source_run}: "
                    f"{type(exc).__name__}: {exc}",
                    path=str(store.path),
                ) from exc
            preloaded[i] = (Status(tr.status), value)
            carried[i] = (tr.output, source_run, blob_name)
        elif tr.status == "skipped":
            preloaded[i] = (Status.SKIPPED, None)
    return rec.run_id, preloaded, carried


def load_blob(store: RunStore, blob: BlobRef, hooks: Any, ref: PayloadRef) -> Any:
    """The output stored in blob ``blob`` (opened through the ``decrypt_stream`` hook)."""
    return store.blobs.load(blob, lambda header: hooks.decrypt_stream(header=header, ref=ref))


def load_stored_output(store: RunStore, data: bytes, hooks: Any, ref: PayloadRef) -> Any:
    """A stored output as the task returned it: ``data`` is the tasks row's ``output``
    (through the ``decrypt`` hook, then inline pickle or a blob reference)."""
    plain = hooks.decrypt(data=data, ref=ref)
    blob = BlobRef.decode(plain)
    if blob is None:
        return load_output(plain)
    return load_blob(store, blob, hooks, ref)
