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
the lanes, in the driver process. Every attempt ends in one ``TaskOutcome``, given to
``after_task`` and to ``_finish``, the only place successors are released. Nothing finished
is ever lost: outputs are kept as soon as a task ends, whatever happens to the rest of the run.
"""

from __future__ import annotations

import copy
import functools
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ._async import LAZY_TYPES, LoopThread, lazy_result_error, lazy_types
from ._attempts import AttemptHooks
from ._context import Params
from ._coroutines import CoroutineLanes
from ._events import events_enabled
from ._graph import Plan
from ._lanes import Flag, LaneDriver
from ._outcomes import Columns, Observer, _format, _no_push, build_result, failure, log_task_event
from ._records import Executor, Isolation, RunContext, Status, TaskOutcome
from ._results import PipelineResult
from ._scopes import scoped_call
from ._task import Task
from .exceptions import ConditionError, PipelineError, RunCancelledError, SerializationError

if TYPE_CHECKING:  # pragma: no cover
    from ._hooks import Hooks

SUCCEEDED = Status.SUCCEEDED
FAILED = Status.FAILED
SKIPPED = Status.SKIPPED
UPSTREAM_FAILED = Status.UPSTREAM_FAILED
CANCELLED = Status.CANCELLED
CACHED = Status.CACHED
FALLBACK = Status.FALLBACK

_F_FAILED = 1  # an upstream failed or was upstream_failed
_F_SKIPPED = 2  # an upstream was skipped
_F_CANCELLED = 4  # an upstream was cancelled


class Run(LaneDriver, CoroutineLanes, AttemptHooks):
    """One execution of a plan. Built and driven by :class:`~xlib_pipeline.PipelineManager`."""

    def __init__(
        self,
        *,
        ctx: RunContext,
        plan: Plan,
        hooks: Hooks,
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
        self.stop_on_failure = on_failure != "continue"  # "stop", "fallback_only"
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
        # Per-task options, compiled once per plan (see Plan.collect/timeouts/freeze).
        self.collect = plan.collect
        self.timeouts = plan.timeouts
        # freeze_inputs: each task gets its own deep copies of its upstreams' outputs, so a
        # task mutating an input changes nothing its siblings or the result see.
        self.freeze: tuple[bool, ...] | None = plan.frozen(
            bool(ctx.config.get("freeze_inputs", False))
        )
        # The two flags share one lock (each takes it only to set or to make its Event).
        flag_lock = threading.Lock()
        self.stop_event = Flag(flag_lock)
        self.lock = threading.Lock()
        self.finished_event = Flag(flag_lock)
        self.preloaded = dict(preloaded) if preloaded else {}
        has = hooks.has
        self.h_before = has["before_task"]
        self.h_after = has["after_task"]
        self.h_error = has["on_task_error"]
        self.h_isolate = has["isolate"]
        self.h_scope = has["task_scope"]
        self.events = events_enabled()
        lazy_types()  # asyncio.Future is lazy work too, once asyncio is imported
        # Nothing watches single tasks (no observer, no store commit, no after_task hook)
        # and no subclass decides on finishing: a success takes the one-lock path.
        self.quick = (
            not observers
            and commit is None
            and not self.h_after
            and type(self)._finish is Run._finish
            and type(self)._succeeded is Run._succeeded
        )
        # Params by name and the TaskContext: decided once per run from the plan's call
        # specs; ``None`` (the usual case) costs a task nothing.
        if plan.has_calls:
            params = ctx.params
            self.params_view = Params(params)
            kws: list[dict[str, Any] | None] = []
            for spec in plan.calls:
                if spec is None:
                    kws.append(None)
                    continue
                kw = {n: params[n] for n in spec.params if n in params}
                kws.append(kw if (kw or spec.context is not None) else None)
            if any(k is not None for k in kws):
                self.task_kwargs = kws
        # Coroutine tasks on a local executor await on one event loop per run (started on
        # first use); their completions come back to the lanes as _AsyncDone items.
        if plan.has_async:
            self.is_async = plan.is_async
            self._aloop_lock = threading.Lock()
            self.async_running = set()

    # Per-run state every run starts with: class defaults, set on the instance on change.
    done = 0
    first_failure: int | None = None
    fatal: BaseException | None = None
    stopping = False
    cancel_reason: str | None = None
    #: Params by name (per task) when a task takes any, else ``None``.
    task_kwargs: list[dict[str, Any] | None] | None = None
    #: Which tasks are coroutine functions (``None``: none is).
    is_async: tuple[bool, ...] | None = None
    aloop: LoopThread | None = None
    _queue: Any = None
    #: Hands a ready task index (or a coroutine completion) to the lanes.
    _push: Callable[[Any], None] = staticmethod(_no_push)

    # -- driving ------------------------------------------------------------------------------

    def execute(self) -> PipelineResult:
        """Run every task to a terminal state and return the result."""
        # The run's start as the store records it, so ``result.started`` and ``runs list``
        # never disagree (two clocks read apart could straddle a second).
        started = self.ctx.started
        default = self.executor_for(self.ctx.executor)
        self.default_executor = default
        self.default_local = getattr(default, "name", "") in ("threads", "inline")
        roots = list(self.plan.roots)
        if self.intelligent and len(roots) > 1:
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
        return build_result(self, started, time.time(), interrupted)

    # -- one task -----------------------------------------------------------------------------

    def _process(self, i: int) -> int | None:
        """Decide, run and finish task ``i``; return a successor to run next, if any."""
        plan = self.plan
        task = plan.tasks[i]
        pre = self.preloaded.pop(i, None) if self.preloaded else None
        if pre is not None:
            status, output = pre
            resumed = TaskOutcome(task=task.name, status=status, output=output, attempt=0)
            return self._finish(i, resumed, resumed=True)
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
            args = tuple(map(outs.__getitem__, ps))
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
                failed = failure(task, copy_err, 0, now, now).replace(traceback=_format(exc))
                return self._failed(i, task, failed)
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
                failed = failure(task, err, 0, now, now).replace(traceback=_format(exc))
                return self._failed(i, task, failed)
            if not go:
                return self._decided(i, task, SKIPPED)
        return self._run(i, task, args)

    def _run(self, i: int, task: Task, args: tuple[Any, ...], attempt: int = 1) -> int | None:
        timeout = self.timeouts[i]
        hooks = self.hooks
        ctx = self.ctx
        executor = self.default_executor
        isolation: Isolation | None = None
        if self.h_isolate:
            try:
                isolation = hooks.isolate(task=task, run=ctx)
            except PipelineError as exc:
                now = time.time()
                return self._failed(i, task, failure(task, exc, 0, now, now))
            if isolation is not None and isolation.executor:
                executor = self.executor_for(isolation.executor)
        local = self.default_local and executor is self.default_executor
        if self.is_async is not None and self.is_async[i] and local:
            return self._start_async(i, task, args, attempt)
        direct = local and timeout is None
        kwargs = self.task_kwargs
        call = task
        while True:
            if kwargs is not None and kwargs[i] is not None:
                call = self.bound(i, task, attempt)
            started = time.time()
            if attempt == 1:
                self.cols.started[i] = started
            for ob in self.observers:
                ob.task_started(self, i, attempt)
            if self.events:
                self._log("task.started", task=task.name, attempt=attempt)
            if self.h_before:
                try:
                    hooks.before_task(task=task, run=ctx, inputs=args)
                except BaseException as exc:  # refused before the function ran
                    return self._failed(i, task, failure(task, exc, attempt - 1, started))
            try:
                if self.h_scope:
                    scopes = hooks.task_scope(task=task, run=ctx)
                    out = scoped_call(
                        scopes, call, args, executor, ctx, isolation, timeout, direct, local
                    )
                elif direct:
                    out = call.fn(*args)
                else:
                    out = executor.call(call, args, run=ctx, isolation=isolation, timeout=timeout)
            except KeyboardInterrupt as exc:
                if threading.current_thread() is threading.main_thread():
                    raise  # Ctrl-C (or the inline task itself): the driver decides
                # A task raised it on a lane: it fails, and the run stops as on Ctrl-C,
                # keeping what running siblings finish within the grace period.
                self.request_stop(f"task {task.name!r} raised KeyboardInterrupt")
                return self._failed(i, task, failure(task, exc, attempt, started))
            except BaseException as exc:
                outcome = failure(task, exc, attempt, started)
                decision = self._retry_decision(task, outcome)
                if decision is None:
                    return self._failed(i, task, outcome)
                outcome = self._announce_retry(i, task, outcome, decision)
                if decision.delay > 0:
                    if ctx.sleep is time.sleep:
                        self.stop_event.wait(decision.delay)  # cancellation cuts it short
                    else:
                        ctx.sleep(decision.delay)
                if self.stopping:  # cancelled while waiting: no further attempt
                    return self._failed(i, task, outcome.replace(final=True))
                attempt += 1
                continue
            finished = time.time()
            if out.__class__ in LAZY_TYPES:  # a plain function handed back work never done
                err = lazy_result_error(task.name, out)
                lazy = failure(task, err, attempt, started, finished)
                return self._failed(i, task, lazy.replace(traceback=None))
            if self.quick:
                return self._finish_quick(i, attempt, started, finished, out)
            return self._succeeded(i, task, attempt, started, finished, out)

    def _succeeded(
        self, i: int, task: Task, attempt: int, started: float, finished: float, out: Any
    ) -> int | None:
        if self.quick:
            return self._finish_quick(i, attempt, started, finished, out)
        # positional: the one record built for every task of every run (see TaskOutcome)
        outcome = TaskOutcome(task.name, SUCCEEDED, out, None, None, attempt, started, finished)
        if self.h_after:
            try:
                self.hooks.after_task(task=task, run=self.ctx, outcome=outcome)
            except BaseException as exc:  # observers already saw this attempt once
                failed = failure(task, exc, attempt, started, finished)
                return self._failed(i, task, failed, after=False)
        return self._finish(i, outcome)

    def _finish(self, i: int, outcome: TaskOutcome, *, resumed: bool = False) -> int | None:
        """Record a task's terminal ``outcome`` and release its successors.

        :meth:`_finish_quick` is the same for a success nothing watches; both hand the ready
        successors over through :meth:`_hand_over`."""
        cols = self.cols
        _, status, output, error, tb, attempt, started, finished, _ = outcome  # one unpack
        succs = self.plan.succs[i]
        ready: list[int] | None = None
        with self.lock:
            if cols.status[i] is not None:
                return None  # abandoned meanwhile
            cols.status[i] = status
            if status is SUCCEEDED or status is CACHED or status is FALLBACK:
                cols.outputs[i] = output
            if cols.started[i] is None:
                cols.started[i] = started
            cols.finished[i] = finished
            if attempt != 1 and not resumed:
                cols.attempts[i] = attempt
            if status is FAILED:
                assert error is not None
                cols.errors[i] = (error, tb)
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
            if status is not SUCCEEDED and status is not CACHED and status is not FALLBACK:
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
                    log_task_event(self, i, status, attempt, resumed)
                if last:
                    self.finished_event.set()
                self.commit(functools.partial(self._release, ready))
                return None
        if last:
            self.finished_event.set()
        if self.events:
            log_task_event(self, i, status, attempt, resumed)
        if ready is None:
            return None
        if len(ready) == 1 and self.continuation:  # _hand_over's answer, one call less
            return ready[0]
        return self._hand_over(ready)

    def _hand_over(self, ready: list[int]) -> int | None:
        """Queue ``ready`` successors; with continuation the calling lane keeps the first."""
        if not self.continuation:
            for s in ready:
                self._push(s)
            return None
        push = self._push
        for s in ready[1:]:
            push(s)
        return ready[0]

    def _finish_quick(
        self, i: int, attempt: int, started: float, finished: float, out: Any
    ) -> int | None:
        """:meth:`_finish` for a success nothing watches (see ``quick``): one lock, no
        :class:`TaskOutcome`; the same columns, the same successors, the same events.

        A deliberate copy of :meth:`_finish`'s bookkeeping for the hot path (one call less
        per task): a change to one must be made to the other."""
        cols = self.cols
        ready: list[int] | None = None
        with self.lock:
            if cols.status[i] is not None:
                return None  # abandoned meanwhile
            cols.status[i] = SUCCEEDED
            cols.outputs[i] = out
            if cols.started[i] is None:
                cols.started[i] = started
            cols.finished[i] = finished
            if attempt != 1:
                cols.attempts[i] = attempt
            remaining = self.remaining
            for s in self.plan.succs[i]:
                remaining[s] -= 1
                if remaining[s] == 0:
                    if ready is None:
                        ready = [s]
                    else:
                        ready.append(s)
            self.done += 1
            last = self.done == len(cols.status)
        if last:
            self.finished_event.set()
        if self.events:
            log_task_event(self, i, SUCCEEDED, attempt, False)
        if ready is None:
            return None
        if len(ready) > 1:
            if self.intelligent:
                ready.sort(key=self.plan.height.__getitem__, reverse=True)
        elif self.continuation:  # _hand_over's answer, one call less
            return ready[0]
        return self._hand_over(ready)

    # -- events and result ----------------------------------------------------------------------

    def _log(self, event: str, **kw: Any) -> None:
        log = self.ctx.log
        if log is not None:
            log.info(event, **kw)
