"""The progress API: :class:`ProgressEvent` objects for callers that show a run's progress.

``execute_pipeline(..., on_event=callback)`` calls ``callback(event)`` for every event;
:meth:`PipelineManager.iter_events` yields them from a run going on in a worker thread. The
terminal monitor (``monitor=True``) is one consumer of the same events.

Events, in order for one task: ``task_started`` (each attempt), ``task_retrying`` (an
attempt failed and another follows, after ``delay`` seconds), ``task_finished`` (terminal:
succeeded, cached, fallback, failed, skipped, upstream_failed, cancelled; also for tasks that
never ran, and for tasks a resumed run reused: ``reused_from`` names the run). A run opens with
``run_started`` and closes with ``run_finished``, which carries the :class:`PipelineResult`.
Callbacks run in the scheduler's lanes (several threads at once): keep them short and
thread-safe. A callback that raises is logged once and then left out for the rest of the run;
it never fails the run.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from ._outcomes import Columns, Observer
from ._records import RetryDecision, RunContext
from ._results import TaskResults

if TYPE_CHECKING:  # pragma: no cover
    from ._results import PipelineResult
    from ._scheduler import Run

EventKind = Literal["run_started", "task_started", "task_retrying", "task_finished", "run_finished"]
EVENT_KINDS: tuple[str, ...] = (
    "run_started",
    "task_started",
    "task_retrying",
    "task_finished",
    "run_finished",
)

_log = logging.getLogger("xlib_pipeline")


class ProgressEvent(NamedTuple):
    """One step of a run's progress. Immutable.

    ``task``/``attempt`` are set for task events; ``status`` is the task's terminal status
    for ``task_finished`` and the run's status for ``run_finished``; ``error`` is
    ``"ErrorClass: message"`` for failed attempts and failed tasks; ``started``/``finished``
    are the task's (or run's) epoch times when known; ``total`` is the number of tasks of
    the run; ``result`` is the :class:`PipelineResult` on ``run_finished``.

    Retries: ``delay`` is the wait in seconds before the next attempt (``task_retrying``);
    ``max_attempts`` is how many attempts the retry policy allows the task in all, once a
    retry was decided (``task_retrying`` and the task's later events; ``None`` when no
    policy gave a bound or the task was not retried). ``reused_from`` is set on the
    ``task_finished`` of a task a resumed run did not run: the id of the run whose outcome
    it reused (a result-cache hit is ``status="cached"`` instead).

    A named tuple rather than an attrs class, like :class:`TaskOutcome`: the scheduler makes
    two per task while anyone listens (about 3x cheaper to make). Read it by field name;
    :meth:`replace` derives a changed copy.
    """

    kind: EventKind
    pipeline: str
    run_id: str
    time: float
    task: str | None = None
    attempt: int = 0
    status: str | None = None
    error: str | None = None
    started: float | None = None
    finished: float | None = None
    total: int = 0
    result: PipelineResult | None = None
    delay: float | None = None
    max_attempts: int | None = None
    reused_from: str | None = None

    @property
    def reused(self) -> bool:
        """The task did not run: a resumed run reused its outcome from ``reused_from``."""
        return self.reused_from is not None

    def replace(self, **changes: Any) -> ProgressEvent:
        """A copy with ``changes`` applied."""
        return self._replace(**changes)

    def __repr__(self) -> str:
        # the result (every task's output) is left out: it can be large
        shown = ", ".join(
            f"{k}={v!r}" for k, v in zip(self._fields, self) if k != "result" and v is not None
        )
        return f"ProgressEvent({shown})"

    @property
    def duration(self) -> float | None:
        """Seconds between ``started`` and ``finished``, when both are known."""
        if self.started is None or self.finished is None:
            return None
        return self.finished - self.started


Callback = Callable[[ProgressEvent], Any]


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class EventObserver(Observer):
    """Turns the scheduler's observer calls into :class:`ProgressEvent` for ``callbacks``."""

    def __init__(self, callbacks: list[Callback]) -> None:
        self.callbacks = list(callbacks)
        self._lock = threading.Lock()
        # task index -> the attempts its retry policy allows (set by the first retry)
        self._bounds: dict[int, int] = {}
        # task index -> the run whose outcome a resumed run reused for it
        self._reused: Mapping[int, str] = {}

    def _emit(self, event: ProgressEvent) -> None:
        for cb in list(self.callbacks):
            try:
                cb(event)
            except Exception:
                with self._lock:
                    if cb in self.callbacks:
                        self.callbacks.remove(cb)
                _log.warning(
                    "progress callback %r raised on a %s event; it receives no further events "
                    "of run %s",
                    cb,
                    event.kind,
                    event.run_id,
                    exc_info=True,
                )

    def start(self, run: Run, reused: Mapping[int, str] | None = None) -> None:
        """Emit ``run_started`` (called by the manager before the first task); ``reused``
        maps the tasks a resumed run takes over to the run whose outcome it reuses."""
        self._bounds = {}
        self._reused = dict(reused) if reused else {}
        self._emit(
            ProgressEvent(
                kind="run_started",
                pipeline=run.plan.pipeline_name,
                run_id=run.ctx.run_id,
                time=time.time(),
                started=run.ctx.started,
                total=len(run.plan),
            )
        )

    def task_started(self, run: Run, i: int, attempt: int) -> None:
        now = time.time()
        self._emit(
            ProgressEvent(
                kind="task_started",
                pipeline=run.plan.pipeline_name,
                run_id=run.ctx.run_id,
                time=now,
                task=run.plan.names[i],
                attempt=attempt,
                started=now,
                total=len(run.plan),
                max_attempts=self._bounds.get(i) if attempt > 1 else None,
            )
        )

    def attempt_failed(
        self, run: Run, i: int, attempt: int, error: BaseException, decision: RetryDecision
    ) -> None:
        bound = decision.max_attempts
        if bound is not None:
            self._bounds[i] = bound
        self._emit(
            ProgressEvent(
                kind="task_retrying",
                pipeline=run.plan.pipeline_name,
                run_id=run.ctx.run_id,
                time=time.time(),
                task=run.plan.names[i],
                attempt=attempt,
                status="failed",
                error=_describe(error),
                total=len(run.plan),
                delay=decision.delay,
                max_attempts=bound,
            )
        )

    def task_finished(self, run: Run, i: int) -> None:
        cols = run.cols
        status = cols.status[i]
        err = cols.errors.get(i)
        started = cols.started[i]
        attempt = cols.attempts.get(i, 1 if started is not None else 0)
        self._emit(
            ProgressEvent(
                kind="task_finished",
                pipeline=run.plan.pipeline_name,
                run_id=run.ctx.run_id,
                time=time.time(),
                task=run.plan.names[i],
                attempt=attempt,
                status=status.value if status is not None else None,
                error=_describe(err[0]) if err else None,
                started=started,
                finished=cols.finished[i],
                total=len(run.plan),
                max_attempts=self._bounds.get(i) if attempt > 1 else None,
                reused_from=self._reused.get(i) if self._reused else None,
            )
        )

    def run_finished(self, run: Run, result: PipelineResult) -> None:
        self._emit(
            ProgressEvent(
                kind="run_finished",
                pipeline=result.pipeline,
                run_id=result.run_id,
                time=time.time(),
                status=result.status,
                error=_describe(result.error) if result.error is not None else None,
                started=result.started,
                finished=result.finished,
                total=len(run.plan),
                result=result,
            )
        )


class LiveRun:
    """A run under way in a manager (:meth:`PipelineManager.live_runs`), read without
    touching its hot path: what a metrics exporter reads at scrape time.

    A run stays listed until every ``after_pipeline`` implementation has seen it end, so an
    exporter that folds the final result in there never loses or double-counts a task.
    """

    __slots__ = ("_run",)

    def __init__(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> RunContext:
        """The run's context (pipeline, run id, tenant ...)."""
        return self._run.ctx

    @property
    def total(self) -> int:
        """How many tasks the run has."""
        return len(self._run.plan)

    def snapshot(self) -> TaskResults:
        """Each task's state right now, copied: ``status`` is ``pending`` until the task is
        terminal; ``started`` is set once its first attempt started (so a pending task with
        ``started`` set is running)."""
        r = self._run
        cols = r.cols
        copy = Columns(len(cols.status))
        with r.lock:
            copy.status = list(cols.status)
            copy.started = list(cols.started)
            copy.finished = list(cols.finished)
            copy.attempts = dict(cols.attempts)
            copy.errors = dict(cols.errors)
        return TaskResults(r.plan.names, r.plan.index, copy)

    def running(self) -> int:
        """How many tasks have started and not reached a terminal status."""
        cols = self._run.cols
        return sum(
            1 for s, t in zip(list(cols.status), list(cols.started)) if s is None and t is not None
        )

    def __repr__(self) -> str:
        ctx = self._run.ctx
        return f"LiveRun({ctx.pipeline_name!r}, run_id={ctx.run_id!r})"


_END = object()


def iterate(
    start: Callable[[Callback], PipelineResult], cancel: Callable[[], Any]
) -> Iterator[ProgressEvent]:
    """Run ``start(callback)`` in a thread and yield its events as they come.

    The last event is ``run_finished`` (with the result). An exception that escapes the run
    (a refusal before any task started) is re-raised here. Closing the iterator early
    cancels the run (``cancel()``) and waits until it ended.
    """
    q: queue.SimpleQueue[Any] = queue.SimpleQueue()
    outcome: list[BaseException] = []

    def target() -> None:
        try:
            start(q.put)
        except BaseException as exc:
            outcome.append(exc)
        finally:
            q.put(_END)

    worker = threading.Thread(target=target, name="xlib-progress-run", daemon=True)
    worker.start()
    finished = False
    try:
        while True:
            item = q.get()
            if item is _END:
                finished = True
                break
            yield item
    finally:
        if not finished:
            cancel()
        worker.join()
    if outcome:
        raise outcome[0]


__all__ = ["EVENT_KINDS", "Callback", "EventObserver", "LiveRun", "ProgressEvent", "iterate"]
