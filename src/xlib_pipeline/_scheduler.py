"""The scheduler: one executor-agnostic loop over a compiled :class:`~._graph.Plan`.

State machine per task::

    waiting --(all upstreams terminal)--> ready --> running --> succeeded | failed
                                            \\--> skipped | upstream_failed | cancelled

A task becomes *ready* when its last upstream reaches a terminal state. A ready task is
then decided without running when an upstream failed (``upstream_failed``), when an
upstream was skipped and it does not collect what is available (``skipped``), when the run
is stopping (``cancelled``) or when its ``condition`` is false (``skipped``).

Work is done by *lanes*: the driver thread alone (inline) or ``max_workers`` threads that
pull ready tasks from a queue. The lane that finishes a task does the bookkeeping under one
lock and, when that releases successors, keeps the first (longest remaining path first
under the "intelligent" strategy) to run next itself, so a chain never pays a thread
hand-off. An executor decides where a function body runs (in the lane's thread, in a worker
process, on a Dask cluster); the lane blocks in ``Executor.call`` meanwhile. Hooks run in
the lanes, in the driver process. Nothing finished is ever lost: outputs are kept as soon as
a task ends, whatever happens to the rest of the run.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import queue
import secrets
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from ._async import LAZY_TYPES, LoopThread, lazy_result_error
from ._graph import Plan
from ._records import Executor, Isolation, RetryDecision, RunContext, Status, TaskOutcome
from ._results import PipelineResult, TaskResults
from ._task import Task
from .exceptions import (
    ConditionError,
    PipelineError,
    RunCancelledError,
    SerializationError,
    StoreError,
    TaskError,
    TaskFailedError,
)

SUCCEEDED = Status.SUCCEEDED
FAILED = Status.FAILED
SKIPPED = Status.SKIPPED
UPSTREAM_FAILED = Status.UPSTREAM_FAILED
CANCELLED = Status.CANCELLED

_F_FAILED = 1  # an upstream failed or was upstream_failed
_F_SKIPPED = 2  # an upstream was skipped
_F_CANCELLED = 4  # an upstream was cancelled

_log = logging.getLogger("xlib_pipeline")


def new_run_id() -> str:
    """A time-ordered UUID (version 7 layout): sortable run ids, unique across machines."""
    ms = int(time.time() * 1000)
    rand = int.from_bytes(secrets.token_bytes(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | rand & ((1 << 80) - 1)
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
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

    def attempt_failed(self, run: Run, i: int, attempt: int, error: BaseException) -> None:
        """An attempt failed and will be retried."""

    def task_finished(self, run: Run, i: int) -> None:
        """A task reached a terminal state (its columns are filled)."""

    def run_finished(self, run: Run, result: PipelineResult) -> None:
        """The run ended."""


class Run:
    """One execution of a plan. Built and driven by :class:`~xlib_pipeline.PipelineManager`."""

    def __init__(
        self,
        *,
        ctx: RunContext,
        plan: Plan,
        hooks: Any,
        executor_for: Callable[[str], Executor],
        lanes: int,
        strategy: str,
        continuation: bool,
        on_failure: str,
        observers: list[Observer],
        preloaded: Mapping[int, tuple[Status, Any]] | None = None,
        grace: float | None = None,
        commit: Callable[[Callable[[BaseException | None], None] | None], None] | None = None,
        flush: Callable[[], None] | None = None,
    ) -> None:
        self.ctx = ctx
        self.plan = plan
        self.hooks = hooks
        self.executor_for = executor_for
        self.lanes = max(1, lanes)
        self.intelligent = strategy == "intelligent"
        self.continuation = continuation
        self.stop_on_failure = on_failure == "stop"
        self.observers = observers
        self.grace = grace
        # The run store's group commit: no successor starts before its upstream's outcome is
        # committed (``commit(then)`` calls ``then`` once it is); ``flush`` blocks until then.
        self.commit = commit
        self.flush = flush
        n = len(plan)
        self.cols = Columns(n)
        self.remaining = list(plan.npreds)
        self.flags = bytearray(n)
        self.collect = [t.merge_strategy == "collect_available" for t in plan.tasks]
        self.timeouts = [t.options.get("timeout") for t in plan.tasks]
        # freeze_inputs: each task gets its own deep copies of its upstreams' outputs, so a
        # task mutating an input changes nothing its siblings or the result see.
        frozen = bool(ctx.config.get("freeze_inputs", False))
        freeze = [bool(t.options.get("freeze_inputs", frozen)) for t in plan.tasks]
        self.freeze: list[bool] | None = freeze if any(freeze) else None
        self.done = 0
        self.first_failure: int | None = None
        self.fatal: BaseException | None = None
        self.stopping = False
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.finished_event = threading.Event()
        self.preloaded = dict(preloaded or {})
        has = hooks.has
        self.h_before = has["before_task"]
        self.h_after = has["after_task"]
        self.h_error = has["on_task_error"]
        self.h_isolate = has["isolate"]
        self.events = _log.isEnabledFor(logging.INFO)
        # Coroutine tasks on a local executor await on one event loop per run (started on
        # first use); their completions come back to the lanes as _AsyncDone items.
        self.is_async = plan.is_async if plan.has_async else None
        self.aloop: LoopThread | None = None
        self._aloop_lock = threading.Lock()
        self.cancel_reason: str | None = None
        self.async_running: set[int] = set()
        # Direct callers for the two per-task observer hooks (built once per run).
        self._before_task = hooks.observer("before_task", ("task", "run", "inputs"))
        self._after_task = hooks.observer("after_task", ("task", "run", "outcome"))
        self._queue: Any = None
        #: Hands a ready task index (or a coroutine completion) to the lanes.
        self._push: Callable[[Any], None] = _no_push

    # -- driving ------------------------------------------------------------------------------

    def execute(self) -> PipelineResult:
        """Run every task to a terminal state and return the result."""
        started = time.time()
        default = self.executor_for(self.ctx.executor)
        self.default_executor = default
        self.default_local = getattr(default, "name", "") in ("threads", "inline")
        roots = [i for i in self.plan.roots]
        if self.intelligent:
            roots.sort(key=self.plan.height.__getitem__, reverse=True)
        interrupted: BaseException | None = None
        try:
            if self.lanes == 1 and self.is_async is not None:
                interrupted = self._drive_inline_async(roots)
            elif self.lanes == 1:
                interrupted = self._drive_inline(roots)
            else:
                interrupted = self._drive_lanes(roots)
        finally:
            if self.aloop is not None:
                self.aloop.close()
        if interrupted is None and self.cancel_reason is not None:
            interrupted = RunCancelledError(self.cancel_reason)
        return self._result(started, time.time(), interrupted)

    def _drive_inline(self, roots: list[int]) -> BaseException | None:
        interrupted: BaseException | None = None
        dq: deque[int] = deque(roots)
        self._push = dq.append
        try:
            while dq:
                i: int | None = dq.popleft()
                while i is not None:
                    i = self._process(i)
        except KeyboardInterrupt as exc:
            interrupted = exc
            self._stop()
            self._interrupt_notice()
            # Drain: everything left ends cancelled, nothing re-runs.
            while dq:
                j: int | None = dq.popleft()
                while j is not None:
                    j = self._process(j)
            self._abandon()
        except BaseException as exc:  # a bug in the core or a hook: end the run cleanly
            self.fatal = exc
            self._stop()
            self._abandon()
        return interrupted

    def _drive_inline_async(self, roots: list[int]) -> BaseException | None:
        """The driver thread is the only lane; coroutine completions arrive on a queue."""
        q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._push = q.put
        self._queue = q
        for i in roots:
            q.put(i)
        interrupted: BaseException | None = None
        deadline: float | None = None
        while not self.finished_event.is_set():
            try:
                if deadline is None:
                    item = q.get()
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

    def _drive_lanes(self, roots: list[int]) -> BaseException | None:
        interrupted: BaseException | None = None
        q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._push = q.put
        self._queue = q
        for i in roots:
            q.put(i)
        threads = [
            threading.Thread(target=self._lane, name=f"xlib-lane-{k}", daemon=True)
            for k in range(min(self.lanes, len(self.plan)))
        ]
        for t in threads:
            t.start()
        try:
            self.finished_event.wait()
        except KeyboardInterrupt as exc:
            interrupted = exc
            self._stop()
            self._interrupt_notice()
            try:
                if not self.finished_event.wait(self.grace):
                    self._abandon()
            except KeyboardInterrupt:  # a second Ctrl-C: stop at once
                self._abandon()
        for _ in threads:
            q.put(None)
        return interrupted

    def _interrupt_notice(self) -> None:
        """Say at once that the run is stopping, and for how long running tasks may go on."""
        self._log("pipeline.cancelling", grace=self.grace)
        notice = getattr(self.ctx.manager, "interrupt_notice", None)
        if notice is not None:
            notice(self.ctx.run_id, self.grace)

    def _stop(self) -> None:
        """Start no new task or attempt from now on (cancellation, ``on_failure: stop``)."""
        self.stopping = True
        self.stop_event.set()
        if self.aloop is not None:
            self.aloop.hurry()  # retry back-offs of coroutine tasks end now

    def request_stop(self, reason: str) -> None:
        """Stop the run from another thread, as Ctrl-C would: start nothing new, give
        running tasks ``grace`` seconds to finish, then cancel the rest."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
        self._stop()
        self._log("pipeline.cancelling", grace=self.grace)

        def after_grace() -> None:
            if not self.finished_event.wait(self.grace):
                self._abandon()

        threading.Thread(target=after_grace, name="xlib-cancel-grace", daemon=True).start()

    def _lane(self) -> None:
        q = self._queue
        process = self._process
        while True:
            i = q.get()
            if i is None:
                return
            try:
                while i is not None:
                    i = process(i) if i.__class__ is int else i.complete(self)
            except BaseException as exc:  # a bug in the core or a hook: never hang the run
                self.fatal = exc
                self._stop()
                self._abandon()
                return

    def _abandon(self) -> None:
        """Mark everything not terminal as cancelled and release the driver."""
        with self.lock:
            st = self.cols.status
            for i in range(len(st)):
                if st[i] is None or st[i] is Status.RUNNING:
                    st[i] = CANCELLED
            self.done = len(st)
            self.finished_event.set()
        if self.aloop is not None:
            self.aloop.cancel_all()  # coroutines are cancelled, not abandoned

    # -- one task -----------------------------------------------------------------------------

    def _process(self, i: int) -> int | None:
        """Decide, run and finish task ``i``; return a successor to run next, if any."""
        plan = self.plan
        task = plan.tasks[i]
        pre = self.preloaded.pop(i, None) if self.preloaded else None
        if pre is not None:
            return self._finish(i, pre[0], pre[1], None, None, None, 0, resumed=True)
        fl = self.flags[i]
        if fl:
            if fl & _F_FAILED:
                return self._decided(i, task, UPSTREAM_FAILED)
            if fl & _F_CANCELLED:
                return self._decided(i, task, CANCELLED)
            if not self.collect[i]:
                return self._decided(i, task, SKIPPED)
        if self.stopping:
            return self._decided(i, task, CANCELLED)
        ps = plan.preds[i]
        outs = self.cols.outputs
        if not ps:
            args: tuple[Any, ...] = ()
        elif len(ps) == 1:
            args = (outs[ps[0]],)
        else:
            args = tuple([outs[p] for p in ps])
        if self.freeze is not None and args and self.freeze[i]:
            try:
                args = copy.deepcopy(args)
            except Exception as exc:
                copy_err = SerializationError(
                    f"task {task.name!r}: freeze_inputs could not copy its inputs "
                    f"(outputs of {', '.join(plan.names[p] for p in ps)}): "
                    f"{type(exc).__name__}: {exc}",
                    task=task.name,
                    cause=exc,
                )
                now = time.time()
                return self._failed(i, task, copy_err, _format(exc), now, now, 0)
        cond = task.condition
        if cond is not None:
            try:
                go = cond(*args)
            except Exception as exc:
                err = ConditionError(
                    f"task {task.name!r}: its condition raised {type(exc).__name__}: {exc}",
                    task=task.name,
                    cause=exc,
                )
                err.__cause__ = exc
                now = time.time()
                return self._failed(i, task, err, _format(exc), now, now, 0)
            if not go:
                return self._decided(i, task, SKIPPED)
        return self._run(i, task, args)

    def _run(self, i: int, task: Task, args: tuple[Any, ...]) -> int | None:
        timeout = self.timeouts[i]
        hooks = self.hooks
        ctx = self.ctx
        attempt = 1
        first_start: float | None = None
        executor = self.default_executor
        isolation: Isolation | None = None
        if self.h_isolate:
            try:
                isolation = hooks.call("isolate", task=task, run=ctx)
            except PipelineError as exc:
                now = time.time()
                return self._failed(i, task, exc, _format(exc), now, now, 0)
            if isolation is not None and isolation.executor:
                executor = self.executor_for(isolation.executor)
        local = self.default_local and executor is self.default_executor
        if self.is_async is not None and self.is_async[i] and local:
            return self._start_async(i, task, args, 1, None)
        direct = local and timeout is None
        while True:
            started = time.time()
            if first_start is None:
                first_start = started
                self.cols.started[i] = started
            for ob in self.observers:
                ob.task_started(self, i, attempt)
            if self.events:
                self._log("task.started", task=task.name, attempt=attempt)
            if self.h_before:
                try:
                    self._before_task(task, ctx, args)
                except BaseException as exc:  # refused before the function ran
                    return self._failed(
                        i, task, exc, _format(exc), first_start, time.time(), attempt - 1
                    )
            try:
                if direct:
                    out = task.fn(*args)
                else:
                    out = executor.call(task, args, run=ctx, isolation=isolation, timeout=timeout)
            except KeyboardInterrupt as exc:
                if threading.current_thread() is threading.main_thread():
                    raise  # Ctrl-C (or the inline task itself): the driver decides
                # A task raised it on a lane: it fails, and the run stops as on Ctrl-C,
                # keeping what running siblings finish within the grace period.
                finished = time.time()
                self.request_stop(f"task {task.name!r} raised KeyboardInterrupt")
                return self._failed(i, task, exc, _format(exc), first_start, finished, attempt)
            except BaseException as exc:
                finished = time.time()
                tb = _format(exc)
                decision = self._retry_decision(task, exc, tb, attempt, started, finished)
                if decision is not None:
                    self._announce_retry(i, task, exc, tb, attempt, started, finished, decision)
                    if decision.delay > 0:
                        if ctx.sleep is time.sleep:
                            self.stop_event.wait(decision.delay)  # cancellation cuts it short
                        else:
                            ctx.sleep(decision.delay)
                    if self.stopping:  # cancelled while waiting: no further attempt
                        return self._failed(i, task, exc, tb, first_start, finished, attempt)
                    attempt += 1
                    continue
                return self._failed(i, task, exc, tb, first_start, finished, attempt)
            finished = time.time()
            if out.__class__ in LAZY_TYPES:  # a plain function handed back work never done
                err = lazy_result_error(task.name, out)
                return self._failed(i, task, err, None, first_start, finished, attempt)
            return self._succeeded(i, task, out, attempt, started, first_start, finished)

    def _succeeded(
        self,
        i: int,
        task: Task,
        out: Any,
        attempt: int,
        started: float,
        first_start: float,
        finished: float,
    ) -> int | None:
        if self.h_after:
            try:
                self._after(task, SUCCEEDED, out, None, None, attempt, started, finished, True)
            except BaseException as exc:  # observers already saw this attempt once
                return self._failed(
                    i, task, exc, _format(exc), first_start, finished, attempt, after=False
                )
        if attempt != 1:
            self.cols.attempts[i] = attempt
        return self._finish(i, SUCCEEDED, out, None, first_start, finished, attempt)

    def _announce_retry(
        self,
        i: int,
        task: Task,
        exc: BaseException,
        tb: str,
        attempt: int,
        started: float,
        finished: float,
        decision: RetryDecision,
    ) -> None:
        for ob in self.observers:
            ob.attempt_failed(self, i, attempt, exc)
        if self.h_after:
            self._after(task, FAILED, None, exc, tb, attempt, started, finished, False)
        if self.events:
            self._log(
                "task.retry_scheduled",
                task=task.name,
                attempt=attempt,
                delay=decision.delay,
                error=type(exc).__name__,
            )

    # -- coroutine tasks ------------------------------------------------------------------------

    def _loop(self) -> LoopThread:
        aloop = self.aloop
        if aloop is None:
            with self._aloop_lock:
                aloop = self.aloop
                if aloop is None:
                    aloop = self.aloop = LoopThread(f"xlib-loop-{self.ctx.run_id[:8]}")
        return aloop

    def _start_async(
        self, i: int, task: Task, args: tuple[Any, ...], attempt: int, first_start: float | None
    ) -> int | None:
        """Start one attempt of a coroutine task on the run's event loop; the lane moves on."""
        if self.stopping and first_start is not None:
            return self._decided(i, task, CANCELLED)
        started = time.time()
        if first_start is None:
            first_start = started
            self.cols.started[i] = started
        for ob in self.observers:
            ob.task_started(self, i, attempt)
        if self.events:
            self._log("task.started", task=task.name, attempt=attempt)
        if self.h_before:
            try:
                self._before_task(task, self.ctx, args)
            except BaseException as exc:  # refused before the coroutine was created
                return self._failed(
                    i, task, exc, _format(exc), first_start, time.time(), attempt - 1
                )
        push = self._push
        fs = first_start

        def done(ok: bool, value: Any) -> None:
            push(_AsyncDone(i, task, args, attempt, started, fs, ok, value))

        with self.lock:
            self.async_running.add(i)
        self._loop().submit(task.name, task.fn, args, self.timeouts[i], done)
        return None

    def _complete_async(self, d: _AsyncDone) -> int | None:
        """A coroutine attempt ended (in a lane): finish, fail, or schedule a retry."""
        i, task, attempt = d.i, d.task, d.attempt
        finished = time.time()
        with self.lock:
            self.async_running.discard(i)
        if d.ok:
            return self._succeeded(i, task, d.value, attempt, d.started, d.first_start, finished)
        exc: BaseException = d.value
        tb = _format(exc)
        decision = self._retry_decision(task, exc, tb, attempt, d.started, finished)
        if decision is None:
            return self._failed(i, task, exc, tb, d.first_start, finished, attempt)
        self._announce_retry(i, task, exc, tb, attempt, d.started, finished, decision)
        retry = _AsyncRetry(i, task, d.args, attempt, d.first_start, exc, tb, finished)
        if decision.delay > 0 and not self.stopping:
            if self.ctx.sleep is not time.sleep:
                self.ctx.sleep(decision.delay)
            else:
                push = self._push
                self._loop().later(decision.delay, lambda: push(retry))
                return None
        return retry.complete(self)

    def _retry_decision(
        self, task: Task, exc: BaseException, tb: str, attempt: int, started: float, finished: float
    ) -> RetryDecision | None:
        if not self.h_error or self.stopping:
            return None
        outcome = TaskOutcome(
            task=task.name,
            status=FAILED,
            error=exc,
            traceback=tb,
            attempt=attempt,
            started=started,
            finished=finished,
        )
        answers = self.hooks.call("on_task_error", task=task, run=self.ctx, outcome=outcome)
        return reduce_decisions(answers)

    def _after(
        self,
        task: Task,
        status: Status,
        out: Any,
        err: BaseException | None,
        tb: str | None,
        attempt: int,
        started: float | None,
        finished: float | None,
        final: bool,
    ) -> None:
        outcome = TaskOutcome(
            task=task.name,
            status=status,
            output=out,
            error=err,
            traceback=tb,
            attempt=attempt,
            started=started,
            finished=finished,
            final=final,
        )
        self._after_task(task, self.ctx, outcome)

    def _decided(self, i: int, task: Task, status: Status) -> int | None:
        """Finish a task that never runs (skipped, upstream_failed, cancelled)."""
        if self.h_after:
            try:
                self._after(task, status, None, None, None, 0, None, None, True)
            except BaseException as exc:
                now = time.time()
                return self._failed(i, task, exc, _format(exc), now, now, 0, after=False)
        return self._finish(i, status, None, None, None, None, 0)

    def _failed(
        self,
        i: int,
        task: Task,
        exc: BaseException,
        tb: str | None,
        started: float | None,
        finished: float | None,
        attempt: int,
        *,
        after: bool = True,
    ) -> int | None:
        if self.h_after and after:
            try:
                self._after(task, FAILED, None, exc, tb, attempt, started, finished, True)
            except BaseException:
                pass  # the task already failed; its own error is the one to report
        if attempt != 1:
            self.cols.attempts[i] = attempt
        return self._finish(i, FAILED, None, (exc, tb), started, finished, attempt)

    def _finish(
        self,
        i: int,
        status: Status,
        out: Any,
        err: tuple[BaseException, str | None] | None,
        started: float | None,
        finished: float | None,
        attempt: int,
        *,
        resumed: bool = False,
    ) -> int | None:
        cols = self.cols
        succs = self.plan.succs[i]
        ready: list[int] | None = None
        with self.lock:
            if cols.status[i] is not None and cols.status[i] is not Status.RUNNING:
                return None  # abandoned meanwhile
            cols.status[i] = status
            if status is SUCCEEDED:
                cols.outputs[i] = out
            if started is not None:
                cols.started[i] = started
            cols.finished[i] = finished
            if err is not None:
                cols.errors[i] = err
                if self.first_failure is None:
                    self.first_failure = i
                    if self.stop_on_failure:
                        self._stop()
        # Record the outcome before any successor can become ready: whichever lane releases
        # a successor then commits after every upstream's record was queued.
        if self.observers:
            for ob in self.observers:
                try:
                    ob.task_finished(self, i)
                except BaseException as exc:
                    # The run store (or its encrypt hook) could not record the task: stop
                    # starting work; the run fails with this error, which names the plugin.
                    if self.fatal is None:
                        self.fatal = exc
                    self._stop()
        with self.lock:
            if status is not SUCCEEDED:
                bit = (
                    _F_FAILED
                    if status is FAILED or status is UPSTREAM_FAILED
                    else _F_CANCELLED
                    if status is CANCELLED
                    else _F_SKIPPED
                )
                flags = self.flags
                for s in succs:
                    flags[s] |= bit
            remaining = self.remaining
            for s in succs:
                remaining[s] -= 1
                if remaining[s] == 0:
                    if ready is None:
                        ready = [s]
                    else:
                        ready.append(s)
            self.done += 1
            last = self.done == len(cols.status)
        if ready is not None and len(ready) > 1 and self.intelligent:
            ready.sort(key=self.plan.height.__getitem__, reverse=True)
        if self.commit is not None:
            if self.lanes == 1 or ready is None:
                # Inline (one lane): commit here, then go on. Without a successor, commit
                # as soon as no commit is in flight (a failure stops the run).
                if self.lanes == 1 and self.flush is not None:
                    try:
                        self.flush()
                    except BaseException as exc:
                        self._store_failed(exc)
                else:
                    self.commit(self._store_failed)
            else:
                # Successors start only once this outcome is committed; the lane goes on
                # with other ready work meanwhile (the committing lane releases them).
                if self.events:
                    self._task_event(i, status, attempt, resumed)
                if last:
                    self.finished_event.set()
                self.commit(functools.partial(self._release, ready))
                return None
        if last:
            self.finished_event.set()
        if self.events:
            self._task_event(i, status, attempt, resumed)
        if ready is None:
            return None
        if len(ready) > 1 and self.intelligent:
            ready.sort(key=self.plan.height.__getitem__, reverse=True)
        if not self.continuation:
            for s in ready:
                self._push(s)
            return None
        push = self._push
        for s in ready[1:]:
            push(s)
        return ready[0]

    def _store_failed(self, exc: BaseException | None) -> None:
        """A commit failed: stop starting work; the run fails with the storage error."""
        if exc is None:
            return
        if self.fatal is None:
            self.fatal = exc
        self._stop()

    def _release(self, ready: list[int], exc: BaseException | None) -> None:
        """Committed (or failed to commit, then stopping): let ``ready`` tasks be decided."""
        if exc is not None:
            self._store_failed(exc)
        push = self._push
        for s in ready:
            push(s)

    # -- events and result ----------------------------------------------------------------------

    def _log(self, event: str, **kw: Any) -> None:
        log = self.ctx.log
        if log is not None:
            log.info(event, **kw)

    def _task_event(self, i: int, status: Status, attempt: int, resumed: bool) -> None:
        cols = self.cols
        name = self.plan.names[i]
        if status is SUCCEEDED:
            d = (cols.finished[i] or 0) - (cols.started[i] or 0)
            self._log(
                "task.resumed" if resumed else "task.succeeded",
                task=name,
                attempts=attempt,
                duration=None if resumed else round(d, 6),
            )
        elif status is FAILED:
            exc = cols.errors[i][0]
            self._log("task.failed", task=name, attempts=attempt, error=type(exc).__name__)
        else:
            self._log(f"task.{status.value}", task=name)

    def _result(
        self, started: float, finished: float, interrupted: BaseException | None
    ) -> PipelineResult:
        cols = self.cols
        plan = self.plan
        st = cols.status
        if self.fatal is not None or any(s is FAILED or s is UPSTREAM_FAILED for s in st):
            status = "failed"
        elif interrupted is not None or self.fatal is not None or any(s is CANCELLED for s in st):
            status = "cancelled"
        else:
            status = "succeeded"
        error: BaseException | None = None
        if isinstance(self.fatal, StoreError):  # a storage fault stopped the run: say so
            error = self.fatal
        elif self.first_failure is not None:
            i = self.first_failure
            exc, tb = cols.errors[i]
            error = failure_error(plan.names[i], exc, tb)
        elif self.fatal is not None:
            error = self.fatal
        elif interrupted is not None:
            error = RunCancelledError(
                f"run {self.ctx.run_id} of pipeline {plan.pipeline_name!r} was cancelled"
            )
        sinks = plan.sinks
        if len(sinks) == 1:
            final = cols.outputs[sinks[0]] if st[sinks[0]] is SUCCEEDED else None
        else:
            final = {
                plan.names[s]: (cols.outputs[s] if st[s] is SUCCEEDED else None) for s in sinks
            }
        result = PipelineResult(
            pipeline=plan.pipeline_name,
            run_id=self.ctx.run_id,
            status=status,
            success=status == "succeeded",
            final_result=final,
            error=error,
            tasks=TaskResults(plan.names, plan.index, cols),
            started=started,
            finished=finished,
            resumed_from=self.ctx.resumed_from,
        )
        for ob in self.observers:
            try:
                ob.run_finished(self, result)
            except BaseException as exc:  # e.g. the store still cannot be written
                if result.success or not isinstance(result.error, StoreError):
                    result = attrs.evolve(result, status="failed", success=False, error=exc)
        return result


def _no_push(item: Any) -> None:  # pragma: no cover - replaced before any task runs
    raise RuntimeError("the run has not started")


class _AsyncDone:
    """A coroutine attempt's outcome, handed from the event loop back to a lane."""

    __slots__ = ("args", "attempt", "first_start", "i", "ok", "started", "task", "value")

    def __init__(
        self,
        i: int,
        task: Task,
        args: tuple[Any, ...],
        attempt: int,
        started: float,
        first_start: float,
        ok: bool,
        value: Any,
    ) -> None:
        self.i = i
        self.task = task
        self.args = args
        self.attempt = attempt
        self.started = started
        self.first_start = first_start
        self.ok = ok
        self.value = value

    def complete(self, run: Run) -> int | None:
        return run._complete_async(self)


class _AsyncRetry:
    """The next attempt of a coroutine task, due once its back-off delay passed."""

    __slots__ = ("args", "attempt", "error", "finished", "first_start", "i", "task", "tb")

    def __init__(
        self,
        i: int,
        task: Task,
        args: tuple[Any, ...],
        attempt: int,
        first_start: float,
        error: BaseException,
        tb: str,
        finished: float,
    ) -> None:
        self.i = i
        self.task = task
        self.args = args
        self.attempt = attempt
        self.first_start = first_start
        self.error = error
        self.tb = tb
        self.finished = finished

    def complete(self, run: Run) -> int | None:
        if run.stopping:  # cancelled while waiting: no further attempt
            i, task, start, end = self.i, self.task, self.first_start, self.finished
            return run._failed(i, task, self.error, self.tb, start, end, self.attempt)
        return run._start_async(self.i, self.task, self.args, self.attempt + 1, self.first_start)


def failure_error(task: str, exc: BaseException, tb: str | None) -> TaskFailedError:
    """Wrap a task's original exception into the run-level :class:`TaskFailedError`."""
    if isinstance(exc, TaskError) and exc.task == task:
        detail = str(exc)
    else:
        detail = f"task {task!r} failed: {type(exc).__name__}: {exc}"
    err = TaskFailedError(detail, task=task, cause=exc, traceback=tb)
    err.__cause__ = exc
    return err


def reduce_decisions(answers: list[RetryDecision | None] | None) -> RetryDecision | None:
    """Any veto (``retry=False``) wins; else retry after the longest delay asked for."""
    chosen: RetryDecision | None = None
    for a in answers or ():
        if a is None:
            continue
        if not a.retry:
            return None
        if chosen is None or a.delay > chosen.delay:
            chosen = a
    return chosen


def _format(exc: BaseException) -> str:
    remote: str | None = getattr(exc, "__xlib_remote_traceback__", None)
    tb = exc.__traceback__
    # Leave out the scheduler's own frame: it says nothing about the task, and locating the
    # failing position in Run._run's large code object cost ~170 of ~230 µs per failure.
    if tb is not None and tb.tb_frame.f_code is Run._run.__code__:
        tb = tb.tb_next
    local = "".join(traceback.format_exception(type(exc), exc, tb))
    if remote:
        return local + "\nRemote traceback (in the worker):\n" + remote
    return local


def lane_count(max_workers: int, n: int) -> int:
    """How many lanes a threaded run uses."""
    return max(1, min(max_workers, n, (os.cpu_count() or 1) * 64))
