"""Around a task's attempts: its function bound to its run params and TaskContext, and the
hooks and observers told of a retry, a refusal or a task decided without running. A mixin
of :class:`~._scheduler.Run`: the names below are the run's own."""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import attrs

from ._context import Params, TaskContext, param_value
from ._outcomes import Observer, failure
from ._records import RetryDecision, RunContext, Status, TaskOutcome
from ._task import Task

if TYPE_CHECKING:  # pragma: no cover
    from ._graph import Plan
    from ._hooks import Hooks
    from ._scheduler import Run


class AttemptHooks:
    """Binding a task's call and telling hooks of its attempts, for :class:`~._scheduler.Run`."""

    ctx: RunContext
    plan: Plan
    hooks: Hooks
    observers: list[Observer]
    h_after: bool
    h_error: bool
    events: bool
    stopping: bool
    task_kwargs: Any
    params_view: Params

    if TYPE_CHECKING:  # provided by Run

        def _finish(self, i: int, outcome: TaskOutcome, *, resumed: bool = False) -> int | None: ...
        def _log(self, event: str, **kw: Any) -> None: ...

    def bound(self, i: int, task: Task, attempt: int) -> Task:
        """``task`` with its run params (by name) and its :class:`TaskContext` bound into
        its function, as its body is called for ``attempt``; ``task`` itself when it takes
        neither."""
        kwargs = self.task_kwargs
        static = kwargs[i] if kwargs is not None else None
        if static is None:
            return task
        kw = {k: param_value(v) for k, v in static.items()}
        spec = self.plan.calls[i]
        if spec is not None and spec.context is not None:
            ctx = self.ctx
            kw[spec.context] = TaskContext(
                params=self.params_view,
                run_id=ctx.run_id,
                pipeline=self.plan.pipeline_name,
                task=task.name,
                attempt=attempt,
                tenant=ctx.tenant_of(task),
                logical_date=ctx.logical_date or _utc(ctx.started),
            )
        return attrs.evolve(task, fn=functools.partial(task.fn, **kw))

    def _announce_retry(
        self, i: int, task: Task, outcome: TaskOutcome, decision: RetryDecision
    ) -> TaskOutcome:
        """A retry follows the failed attempt ``outcome``: tell observers and hooks."""
        outcome = outcome.replace(final=False)
        assert outcome.error is not None
        for ob in self.observers:
            ob.attempt_failed(cast("Run", self), i, outcome.attempt, outcome.error, decision)
        if self.h_after:
            self.hooks.after_task(task=task, run=self.ctx, outcome=outcome)
        if self.events:
            self._log(
                "task.retry_scheduled",
                task=task.name,
                attempt=outcome.attempt,
                delay=decision.delay,
                error=type(outcome.error).__name__,
            )
        return outcome

    def _retry_decision(self, task: Task, outcome: TaskOutcome) -> RetryDecision | None:
        if not self.h_error or self.stopping:
            return None
        return self.hooks.on_task_error(task=task, run=self.ctx, outcome=outcome)

    def _decided(self, i: int, task: Task, status: Status) -> int | None:
        """Finish a task that never runs (skipped, upstream_failed, cancelled)."""
        outcome = TaskOutcome(task=task.name, status=status, attempt=0)
        if self.h_after:
            try:
                self.hooks.after_task(task=task, run=self.ctx, outcome=outcome)
            except BaseException as exc:
                now = time.time()
                return self._failed(i, task, failure(task, exc, 0, now, now), after=False)
        return self._finish(i, outcome)

    def _failed(
        self, i: int, task: Task, outcome: TaskOutcome, *, after: bool = True
    ) -> int | None:
        """Finish a task whose last attempt (or whose refusal) is ``outcome``."""
        if self.h_after and after:
            try:
                self.hooks.after_task(task=task, run=self.ctx, outcome=outcome)
            except BaseException:
                pass  # the task already failed; its own error is the one to report
        return self._finish(i, outcome)


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)
