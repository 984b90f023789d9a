"""Coroutine (``async def``) tasks in the scheduler: one event loop per run, completions
handed back to the lanes.

:class:`CoroutineLanes` is the part of :class:`~._scheduler.Run` that starts an attempt of a
coroutine task on the run's :class:`~._async.LoopThread` (the lane moves on at once) and
finishes it when its completion comes back through the run's queue, with the same hooks,
retries and :class:`~._records.TaskOutcome` records as a plain task.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._async import LoopThread
from ._outcomes import failure
from ._records import RetryDecision, RunContext, Status, TaskOutcome
from ._task import Task

if TYPE_CHECKING:  # pragma: no cover
    from ._hooks import Hooks
    from ._lanes import Flag
    from ._outcomes import Columns


class CoroutineLanes:
    """Coroutine attempts for :class:`~._scheduler.Run` (a mixin: the names below are the
    run's own)."""

    ctx: RunContext
    hooks: Hooks
    cols: Columns
    lock: threading.Lock
    stopping: bool
    fatal: BaseException | None
    finished_event: Flag
    events: bool
    h_before: bool
    timeouts: tuple[float | None, ...]
    aloop: LoopThread | None
    _aloop_lock: threading.Lock
    async_running: set[int]
    grace: float | None
    observers: list[Any]
    _push: Callable[[Any], None]
    _queue: Any

    if TYPE_CHECKING:  # provided by Run

        def _process(self, i: int) -> int | None: ...
        def _stop(self) -> None: ...
        def _abandon(self) -> None: ...
        def _log(self, event: str, **kw: Any) -> None: ...
        def _interrupt_notice(self) -> None: ...
        def _idle_get(self, q: Any) -> Any: ...
        def _decided(self, i: int, task: Task, status: Status) -> int | None: ...
        def _failed(
            self, i: int, task: Task, outcome: TaskOutcome, *, after: bool = True
        ) -> int | None: ...
        def _succeeded(
            self, i: int, task: Task, attempt: int, started: float, finished: float, out: Any
        ) -> int | None: ...
        def _retry_decision(self, task: Task, outcome: TaskOutcome) -> RetryDecision | None: ...
        def _announce_retry(
            self, i: int, task: Task, outcome: TaskOutcome, decision: RetryDecision
        ) -> TaskOutcome: ...
        def bound(self, i: int, task: Task, attempt: int) -> Task: ...

    def _loop(self) -> LoopThread:
        aloop = self.aloop
        if aloop is None:
            with self._aloop_lock:
                aloop = self.aloop
                if aloop is None:
                    aloop = self.aloop = LoopThread(f"xlib-loop-{self.ctx.run_id[:8]}")
        return aloop

    def _drive_inline_async(self, roots: list[int]) -> BaseException | None:
        """The driver thread is the only lane; coroutine completions arrive on a queue."""
        q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._push = q.put
        self._queue = q
        for i in roots:
            q.put(i)
        interrupted: BaseException | None = None
        deadline: float | None = None
        idle = self.hooks.has["lane_idle"]
        while not self.finished_event.is_set():
            try:
                if deadline is None:
                    item = q.get() if not idle else self._idle_get(q)
                else:
                    if not self.async_running and q.empty():
                        self._abandon()  # nothing left that could still finish
                        break
                    try:
                        item = q.get(timeout=max(0.0, deadline - time.monotonic()))
                    except queue.Empty:
                        self._abandon()
                        break
                while item is not None:
                    item = self._process(item) if item.__class__ is int else item.complete(self)
            except KeyboardInterrupt as exc:
                if interrupted is not None:  # a second Ctrl-C: stop at once
                    self._abandon()
                    break
                interrupted = exc
                self._stop()
                self._interrupt_notice()
                deadline = time.monotonic() + (self.grace if self.grace is not None else 1e9)
            except BaseException as exc:  # a bug in the core or a hook: end the run cleanly
                self.fatal = exc
                self._stop()
                self._abandon()
        return interrupted

    def _start_async(self, i: int, task: Task, args: tuple[Any, ...], attempt: int) -> int | None:
        """Start one attempt of a coroutine task on the run's event loop; the lane moves on."""
        if self.stopping and attempt > 1:
            return self._decided(i, task, Status.CANCELLED)
        started = time.time()
        if self.cols.started[i] is None:
            self.cols.started[i] = started
        for ob in self.observers:
            ob.task_started(self, i, attempt)
        if self.events:
            self._log("task.started", task=task.name, attempt=attempt)
        if self.h_before:
            try:
                self.hooks.before_task(task=task, run=self.ctx, inputs=args)
            except BaseException as exc:  # refused before the coroutine was created
                return self._failed(i, task, failure(task, exc, attempt - 1, started))
        push = self._push

        def done(ok: bool, value: Any) -> None:
            push(_AsyncDone(i, task, args, attempt, started, ok, value))

        with self.lock:
            self.async_running.add(i)
        fn = self.bound(i, task, attempt).fn
        self._loop().submit(task.name, fn, args, self.timeouts[i], done)
        return None

    def _complete_async(self, d: _AsyncDone) -> int | None:
        """A coroutine attempt ended (in a lane): finish, fail, or schedule a retry."""
        i, task, attempt = d.i, d.task, d.attempt
        finished = time.time()
        with self.lock:
            self.async_running.discard(i)
        if d.ok:
            return self._succeeded(i, task, attempt, d.started, finished, d.value)
        outcome = failure(task, d.value, attempt, d.started, finished)
        decision = self._retry_decision(task, outcome)
        if decision is None:
            return self._failed(i, task, outcome)
        outcome = self._announce_retry(i, task, outcome, decision)
        retry = _AsyncRetry(i, task, d.args, outcome)
        if decision.delay > 0 and not self.stopping:
            if self.ctx.sleep is not time.sleep:
                self.ctx.sleep(decision.delay)
            else:
                push = self._push
                self._loop().later(decision.delay, lambda: push(retry))
                return None
        return retry.complete(self)


class _AsyncDone:
    """A coroutine attempt's result, handed from the event loop back to a lane."""

    __slots__ = ("args", "attempt", "i", "ok", "started", "task", "value")

    def __init__(
        self,
        i: int,
        task: Task,
        args: tuple[Any, ...],
        attempt: int,
        started: float,
        ok: bool,
        value: Any,
    ) -> None:
        self.i = i
        self.task = task
        self.args = args
        self.attempt = attempt
        self.started = started
        self.ok = ok
        self.value = value

    def complete(self, run: CoroutineLanes) -> int | None:
        return run._complete_async(self)


class _AsyncRetry:
    """The next attempt of a coroutine task, due once its back-off delay passed."""

    __slots__ = ("args", "i", "outcome", "task")

    def __init__(self, i: int, task: Task, args: tuple[Any, ...], outcome: TaskOutcome) -> None:
        self.i = i
        self.task = task
        self.args = args
        self.outcome = outcome  # the failed attempt a retry follows

    def complete(self, run: CoroutineLanes) -> int | None:
        if run.stopping:  # cancelled while waiting: no further attempt
            return run._failed(self.i, self.task, self.outcome.replace(final=True))
        return run._start_async(self.i, self.task, self.args, self.outcome.attempt + 1)
