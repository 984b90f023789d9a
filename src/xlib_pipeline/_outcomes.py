"""Per-task state and outcomes shared by the scheduler's parts: the state columns, the
internal observer interface, attempt outcomes, run ids and lane counts."""

from __future__ import annotations

import os
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any

import attrs

from ._records import RetryDecision, Status, TaskOutcome
from ._results import PipelineResult, TaskResults
from ._task import Task
from .exceptions import RunCancelledError, StoreError, TaskError, TaskFailedError

if TYPE_CHECKING:  # pragma: no cover
    from ._scheduler import Run


_WITH_OUTPUT = (Status.SUCCEEDED, Status.CACHED, Status.FALLBACK)


_MS = (1 << 48) - 1
_RAND = ((1 << 80) - 1) & ~(0xF << 76) & ~(0x3 << 62)
_V7 = 0x7 << 76 | 0x2 << 62


#: Random bytes drawn from the OS in blocks: one getrandom(2) per _POOL run ids, not one per
#: run (a stream mints a run id per batch; getrandom releases the GIL, and taking it back
#: from the store's writer thread cost ~10 µs of CPU per batch).
_POOL = 256
_random_lock = threading.Lock()
_random: list[Any] = [b"", 0]  # the block, the offset of its next unused bytes


def random_bytes(n: int) -> bytes:
    """``n`` bytes from ``os.urandom``, taken from a block drawn ahead (never twice, also
    across threads; a forked child draws its own block)."""
    with _random_lock:
        block, at = _random
        if at + n > len(block):
            block, at = os.urandom(n * _POOL), 0
            _random[0] = block
        _random[1] = at + n
    return block[at : at + n]  # type: ignore[no-any-return]


def _forget_random() -> None:
    """In a forked child: the parent's block is not drawn from again (no shared run ids)."""
    global _random_lock
    _random_lock = threading.Lock()
    _random[:] = [b"", 0]


os.register_at_fork(after_in_child=_forget_random)


def new_run_id() -> str:
    """A time-ordered UUID (version 7 layout): sortable run ids, unique across machines."""
    ms = int(time.time() * 1000)
    rand = int.from_bytes(random_bytes(10), "big")
    # 48 bits of milliseconds, then the 80 random bits with version 7 (bits 76-79) and the
    # RFC 4122 variant 0b10 (bits 62-63) forced.
    value = (ms & _MS) << 80 | (rand & _RAND) | _V7
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class Columns:
    """Per-task state as parallel lists (cheap to update, cheap in memory)."""

    __slots__ = ("attempts", "errors", "finished", "outputs", "started", "status")

    def __init__(self, n: int) -> None:
        self.status: list[Status | None] = [None] * n
        self.outputs: list[Any] = [None] * n
        self.started: list[float | None] = [None] * n
        self.finished: list[float | None] = [None] * n
        self.errors: dict[int, tuple[BaseException, str | None]] = {}
        self.attempts: dict[int, int] = {}


class Observer:
    """Internal per-run observer (monitor, run store). Called from lanes; be thread-safe."""

    def task_started(self, run: Run, i: int, attempt: int) -> None:
        """Attempt ``attempt`` of a task is about to start."""

    def attempt_failed(
        self, run: Run, i: int, attempt: int, error: BaseException, decision: RetryDecision
    ) -> None:
        """An attempt failed and will be retried as ``decision`` says (its delay, the
        attempts the policy allows)."""

    def task_finished(self, run: Run, i: int) -> None:
        """A task reached a terminal state (its columns are filled)."""

    def run_finished(self, run: Run, result: PipelineResult) -> None:
        """The run ended."""


def _no_push(item: Any) -> None:  # pragma: no cover - replaced before any task runs
    raise RuntimeError("the run has not started")


def failure_error(task: str, exc: BaseException, tb: str | None) -> TaskFailedError:
    """Wrap a task's original exception into the run-level :class:`TaskFailedError`."""
    if isinstance(exc, TaskError) and exc.task == task:
        detail = str(exc)
    else:
        detail = f"task {task!r} failed: {type(exc).__name__}: {exc}"
    err = TaskFailedError(detail, task=task, cause=exc, traceback=tb)
    err.__cause__ = exc
    return err


def failure(
    task: Task,
    exc: BaseException,
    attempt: int,
    started: float | None,
    finished: float | None = None,
) -> TaskOutcome:
    """The outcome of an attempt (or a refusal, ``attempt`` 0) that ended with ``exc``."""
    return TaskOutcome(
        task=task.name,
        status=Status.FAILED,
        error=exc,
        traceback=_format(exc),
        attempt=attempt,
        started=started,
        finished=time.time() if finished is None else finished,
    )


def _format(exc: BaseException) -> str:
    remote: str | None = getattr(exc, "__xlib_remote_traceback__", None)
    tb = exc.__traceback__
    # Leave out the scheduler's own frame: it says nothing about the task, and locating the
    # failing position in Run._run's large code object cost ~170 of ~230 µs per failure.
    if tb is not None and tb.tb_frame.f_code.co_qualname == "Run._run":
        tb = tb.tb_next
    local = "".join(traceback.format_exception(type(exc), exc, tb))
    if remote:
        return local + "\nRemote traceback (in the worker):\n" + remote
    return local


def lane_count(max_workers: int, n: int) -> int:
    """How many lanes a threaded run uses."""
    return max(1, min(max_workers, n, (os.cpu_count() or 1) * 64))


def log_task_event(run: Run, i: int, status: Status, attempt: int, resumed: bool) -> None:
    """The structlog event of a task that reached ``status``."""
    cols = run.cols
    name = run.plan.names[i]
    if status is Status.SUCCEEDED:
        d = (cols.finished[i] or 0) - (cols.started[i] or 0)
        run._log(
            "task.resumed" if resumed else "task.succeeded",
            task=name,
            attempts=attempt,
            duration=None if resumed else round(d, 6),
        )
    elif status is Status.FAILED:
        exc = cols.errors[i][0]
        run._log("task.failed", task=name, attempts=attempt, error=type(exc).__name__)
    else:
        run._log(f"task.{status.value}", task=name)


def build_result(
    run: Run, started: float, finished: float, interrupted: BaseException | None
) -> PipelineResult:
    """The run's :class:`PipelineResult` from its columns; observers see it first."""
    cols = run.cols
    plan = run.plan
    st = cols.status
    failed, upstream, cancelled = Status.FAILED, Status.UPSTREAM_FAILED, Status.CANCELLED
    # ``in`` compares in C (identity first): statuses are members or None
    if run.fatal is not None or failed in st or upstream in st:
        status = "failed"
    elif interrupted is not None or run.fatal is not None or cancelled in st:
        status = "cancelled"
    else:
        status = "succeeded"
    error: BaseException | None = None
    if isinstance(run.fatal, StoreError):  # a storage fault stopped the run: say so
        error = run.fatal
    elif run.first_failure is not None:
        i = run.first_failure
        exc, tb = cols.errors[i]
        error = failure_error(plan.names[i], exc, tb)
    elif run.fatal is not None:
        error = run.fatal
    elif interrupted is not None:
        error = RunCancelledError(
            f"run {run.ctx.run_id} of pipeline {plan.pipeline_name!r} was cancelled"
        )
    sinks = plan.sinks
    if len(sinks) == 1:
        final = cols.outputs[sinks[0]] if st[sinks[0]] in _WITH_OUTPUT else None
    else:
        final = {plan.names[s]: (cols.outputs[s] if st[s] in _WITH_OUTPUT else None) for s in sinks}
    result = PipelineResult(
        pipeline=plan.pipeline_name,
        run_id=run.ctx.run_id,
        status=status,
        success=status == "succeeded",
        final_result=final,
        error=error,
        tasks=TaskResults(plan.names, plan.index, cols),
        started=started,
        finished=finished,
        resumed_from=run.ctx.resumed_from,
    )
    for ob in run.observers:
        try:
            ob.run_finished(run, result)
        except BaseException as exc:  # e.g. the store still cannot be written
            if result.success or not isinstance(result.error, StoreError):
                result = attrs.evolve(result, status="failed", success=False, error=exc)
    return result
