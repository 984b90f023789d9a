"""The scheduler with per-task features: fallbacks, contracts, resource budgets, caching.

:func:`~._features.compile_features` decides once per plan (and manager config) whether
any task uses one of them. When none does, the manager runs the plain
:class:`~._scheduler.Run` and these features cost nothing per task; otherwise it runs
:class:`FeaturedRun`, which overrides the scheduler's few decision points (``_process``,
``_run``, ``_succeeded``, ``_failed``, ``_finish``) and only for the tasks that need it.
"""

from __future__ import annotations

import pickle
import time
from typing import Any

from ._budget import RESOURCE_SLOTS, Budget, ResourceSlots
from ._cache import CachePolicy, cache_key, cache_ref, params_fingerprint
from ._contracts import Checker, Violation, quote
from ._fallback import Fallback, applies
from ._features import CACHE_HITS, FALLBACKS, FallbackUsed, Features
from ._outcomes import failure
from ._records import Status, TaskOutcome
from ._scheduler import Run
from ._tables import CacheTable
from ._task import Task
from .exceptions import ContractError, FallbackError, StoreError


class FeaturedRun(Run):
    """A :class:`~._scheduler.Run` for plans whose tasks use fallbacks, contracts, resource
    budgets or the result cache."""

    def __init__(
        self,
        *,
        features: Features,
        cache_store: CacheTable | None = None,
        refresh: bool | frozenset[int] = False,
        **kwargs: Any,
    ) -> None:
        on_failure = kwargs.get("on_failure", "continue")
        super().__init__(plan=features.plan, **kwargs)
        self.features = features
        self.fallbacks = features.fallbacks
        self.targets = features.targets
        self.primaries = features.primaries
        self.contracts = features.contracts
        #: "stop": any failure stops new work, even one a fallback absorbed.
        self.stop_on_fallback = on_failure == "stop"
        n = len(self.plan)
        self.args: list[tuple[Any, ...] | None] = [None] * n
        #: Tasks that failed for good and wait for their fallback task: the failed outcome.
        self.pending: dict[int, TaskOutcome] = {}
        self.token_released: set[int] = set()
        # One lane and no coroutines: tasks run one at a time, each fits the budget alone.
        spec = features.budget
        parallel = self.lanes > 1 or self.is_async is not None
        self.budget = Budget(spec, self.plan.height) if spec and parallel else None
        if self.budget is not None:
            self.ctx.stash[RESOURCE_SLOTS] = ResourceSlots(
                self.budget, self.plan.index, self._granted
            )
        self.held = bytearray(n)
        self.cache = features.cache if cache_store is not None else None
        self.cache_store = cache_store
        self.refresh = refresh
        self.keys: list[str | None] = [None] * n
        self.params_fp = params_fingerprint(self.ctx.params) if self.cache else ""
        for j in self.targets:
            self.remaining[j] += 1  # a fallback task also waits for the task it stands in for

    # -- decision points ------------------------------------------------------------------------

    def _process(self, i: int) -> int | None:
        primary = self.targets.get(i) if self.targets else None
        if primary is not None and primary not in self.pending and i not in self.preloaded:
            return self._decided(i, self.plan.tasks[i], Status.SKIPPED)
        return super()._process(i)

    def _run(self, i: int, task: Task, args: tuple[Any, ...], attempt: int = 1) -> int | None:
        self.args[i] = args
        if self.cache is not None and attempt == 1 and self.keys[i] is None:
            policy = self.cache[i]
            if policy is not None:
                hit = self._lookup(i, task, policy, args)
                if hit is not None:
                    return hit.next
        budget = self.budget
        if (
            budget is not None
            and attempt == 1
            and not self.held[i]
            and budget.spec.needs[i] is not None
        ):
            return self._granted(budget.request(i), i)
        c = self.contracts[i] if self.contracts is not None else None
        if c is not None and c.inputs and attempt == 1:
            for pos, source, checker in c.inputs:
                v = checker.check(args[pos])
                if v is not None:
                    err = self._contract_error(task, f"input from {source!r}", source, checker, v)
                    now = time.time()
                    return self._failed(i, task, failure(task, err, 0, now, now))
        return super()._run(i, task, args, attempt)

    def _succeeded(
        self, i: int, task: Task, attempt: int, started: float, finished: float, out: Any
    ) -> int | None:
        c = self.contracts[i] if self.contracts is not None else None
        if c is None or c.output is None:
            return super()._succeeded(i, task, attempt, started, finished, out)
        v = c.output.check(out)
        if v is None:
            return super()._succeeded(i, task, attempt, started, finished, out)
        # The attempt broke its output contract: it failed, and may be retried.
        err = self._contract_error(task, "output", None, c.output, v, out)
        outcome = failure(task, err, attempt, started, finished)
        decision = self._retry_decision(task, outcome)
        if decision is None:
            return self._failed(i, task, outcome)
        outcome = self._announce_retry(i, task, outcome, decision)
        if decision.delay > 0:
            if self.ctx.sleep is time.sleep:
                self.stop_event.wait(decision.delay)
            else:
                self.ctx.sleep(decision.delay)
        if self.stopping:
            return self._failed(i, task, outcome.replace(final=True))
        return self._run(i, task, self.args[i] or (), attempt + 1)

    def _contract_error(
        self,
        task: Task,
        where: str,
        source: str | None,
        checker: Checker,
        v: Violation,
        value: Any = None,
    ) -> ContractError:
        """The :class:`ContractError` for ``v``; it quotes the failing value (or, for a
        callable contract, the message it raised) only when the data may be shown."""
        show = self.hooks.may_show_values(task=task, run=self.ctx, value=value, source=source)
        reason = v.reason
        if not show and checker.kind == "callable" and ":" in reason:
            reason = reason.split(":", 1)[0] + ": (message withheld)"
        text = (
            f"task {task.name!r}: its {where} broke its contract {checker.describe}"
            + (f" at {v.location}" if v.location else "")
            + f": {reason}"
        )
        if v.has_value:
            if show:
                text += f" (got {quote(v.value)})"
            else:
                text += " (value withheld: the data is classified above internal)"
        return ContractError(
            text,
            task=task.name,
            where="output" if source is None else f"input {source}",
            location=v.location,
            redacted=not show,
        )

    def _failed(
        self, i: int, task: Task, outcome: TaskOutcome, *, after: bool = True
    ) -> int | None:
        fb = self.fallbacks[i] if self.fallbacks is not None else None
        if (
            fb is None
            or outcome.status is not Status.FAILED
            or self.stopping
            or not applies(outcome.error)
        ):
            return super()._failed(i, task, outcome, after=after)
        assert outcome.error is not None
        if fb.kind == "task":
            if self.budget is not None and self.held[i]:
                self._free(i)  # its own attempts are over
            with self.lock:
                self.pending[i] = outcome
            self._log_fallback(task, outcome, fb)
            return self._release_target(fb.target)
        try:
            value = fb.resolve(task, outcome.error, self.args[i] or ())
        except FallbackError as err:
            failed = failure(task, err, outcome.attempt, outcome.started, outcome.finished)
            return super()._failed(i, task, failed, after=after)
        self._log_fallback(task, outcome, fb)
        return self._fell_back(i, task, outcome, value, fb)

    def _finish(self, i: int, outcome: TaskOutcome, *, resumed: bool = False) -> int | None:
        if self.budget is not None and self.held[i]:
            self._free(i)
        if self.cache is not None and outcome.status is Status.SUCCEEDED and not resumed:
            key = self.keys[i]
            if key is not None:
                self._store_entry(i, key, outcome.output)
        nxt = super()._finish(i, outcome, resumed=resumed)
        if not self.targets:
            return nxt
        j = self.primaries.get(i)
        if j is not None:  # the task finished: its fallback task may now be decided
            ready = self._release_target(j)
            if ready is not None:
                if nxt is None:
                    return ready
                self._push(ready)
            return nxt
        primary = self.targets.get(i)
        if primary is None:
            return nxt
        with self.lock:
            failed = self.pending.pop(primary, None)
        if failed is None:
            return nxt
        if nxt is not None:
            self._push(nxt)
        return self._after_fallback_task(primary, i, failed, outcome)

    def i_task(self, i: int) -> Task:
        """Task ``i`` of the plan."""
        return self.plan.tasks[i]

    # -- result cache ---------------------------------------------------------------------

    def _lookup(
        self, i: int, task: Task, policy: CachePolicy, args: tuple[Any, ...]
    ) -> _Decided | None:
        """Compute the task's key; on a hit finish it ``cached``. ``None``: run the task."""
        ctx = self.ctx
        tenant = ctx.tenant_of(task)
        try:
            key = cache_key(
                policy,
                tenant=tenant,
                pipeline=self.plan.pipeline_name,
                task=task.name,
                args=args,
                params=self.params_fp,
            )
        except Exception as exc:
            now = time.time()
            return _Decided(self._failed(i, task, failure(task, exc, 0, now, now)))
        self.keys[i] = key
        if self.refresh is True or (self.refresh and i in self.refresh):
            return None
        assert self.cache_store is not None
        try:
            found = self.cache_store.get(key, tenant, time.time())
        except StoreError as exc:  # the store is unreachable: a miss (its writes will say why)
            self._log("task.cache_unavailable", task=task.name, error=str(exc))
            return None
        if found is None:
            return None
        blob, _ = found
        try:
            data = self.hooks.decrypt(
                data=blob, ref=cache_ref(key, ctx.pipeline_name, task.name, tenant)
            )
            value = pickle.loads(data)
        except Exception as exc:  # unreadable entry: run the task, say why
            self._log("task.cache_unreadable", task=task.name, error=type(exc).__name__)
            return None
        now = time.time()
        hits = ctx.stash.setdefault(CACHE_HITS, {})
        hits[task.name] = key
        self.cols.started[i] = now
        outcome = TaskOutcome(task.name, Status.CACHED, value, None, None, 0, now, now)
        if self.h_after:
            try:
                self.hooks.after_task(task=task, run=ctx, outcome=outcome)
            except BaseException as exc:
                return _Decided(
                    Run._failed(self, i, task, failure(task, exc, 0, now, now), after=False)
                )
        return _Decided(self._finish(i, outcome))

    def _store_entry(self, i: int, key: str, output: Any) -> None:
        """Keep a succeeded output (encrypted like any output); a failure is logged, the
        task's result stands."""
        task = self.plan.tasks[i]
        policy = self.cache[i] if self.cache is not None else None
        assert policy is not None and self.cache_store is not None
        tenant = self.ctx.tenant_of(task)
        try:
            raw = pickle.dumps(output, protocol=5)
            sealed = self.hooks.encrypt(
                data=raw, ref=cache_ref(key, self.plan.pipeline_name, task.name, tenant)
            )
            self.cache_store.put(
                key,
                tenant=tenant,
                pipeline=self.plan.pipeline_name,
                task=task.name,
                ttl=policy.ttl,
                run_id=self.ctx.run_id,
                output=bytes(sealed),
            )
        except Exception as exc:  # never fall back to plaintext: the entry is not kept
            self._log("task.cache_not_stored", task=task.name, error=type(exc).__name__)

    # -- resources --------------------------------------------------------------------------------

    def _granted(self, started: list[int], me: int = -1) -> int | None:
        """Tasks the budget let start: run ``me`` here, hand the others to the lanes."""
        held = self.held
        mine = False
        for k in started:
            held[k] = 1
            if k == me:
                mine = True
            else:
                self._push(_Granted(k))
        if mine:
            return self._run(me, self.plan.tasks[me], self.args[me] or ())
        return None

    def _free(self, i: int) -> None:
        assert self.budget is not None
        self.held[i] = 0
        self._granted(self.budget.release(i))

    # -- fallbacks --------------------------------------------------------------------------------

    def _release_target(self, j: int) -> int | None:
        """Take away the token a fallback task waits on; return it when it is now ready."""
        with self.lock:
            if j in self.token_released:
                return None
            self.token_released.add(j)
            self.remaining[j] -= 1
            return j if self.remaining[j] == 0 else None

    def _after_fallback_task(
        self, p: int, j: int, failed: TaskOutcome, outcome: TaskOutcome
    ) -> int | None:
        """The fallback task ``j`` of task ``p`` ended with ``outcome``: finish ``p``."""
        task = self.plan.tasks[p]
        fb = self.fallbacks[p] if self.fallbacks is not None else None
        assert fb is not None and failed.error is not None
        if outcome.status.has_output:
            return self._fell_back(p, task, failed, outcome.output, fb)
        err = outcome.error
        why = f"{type(err).__name__}: {err}" if err is not None else outcome.status.value
        fb_err = FallbackError(
            f"task {task.name!r} failed ({type(failed.error).__name__}: {failed.error}) and "
            f"its fallback task {self.plan.names[j]!r} did not produce an output ({why})",
            task=task.name,
            cause=err,
            original=failed.error,
        )
        return Run._failed(
            self, p, task, failure(task, fb_err, failed.attempt, failed.started, failed.finished)
        )

    def _fell_back(
        self, i: int, task: Task, failed: TaskOutcome, value: Any, fb: Fallback
    ) -> int | None:
        error = failed.error
        assert error is not None
        used = self.ctx.stash.setdefault(FALLBACKS, {})
        used[task.name] = FallbackUsed(
            source=fb.describe(self.plan), error_class=type(error).__name__
        )
        outcome = TaskOutcome(
            task.name,
            Status.FALLBACK,
            value,
            error,
            failed.traceback,
            failed.attempt,
            failed.started,
            failed.finished,
        )
        self.cols.errors[i] = (error, failed.traceback)
        if failed.attempt > 1:
            self.cols.attempts[i] = failed.attempt
        if self.stop_on_fallback:
            self._stop()
        if self.h_after:
            try:
                self.hooks.after_task(task=task, run=self.ctx, outcome=outcome)
            except BaseException as exc:
                now = time.time()
                return Run._failed(self, i, task, failure(task, exc, 0, now, now), after=False)
        return self._finish(i, outcome)

    def _log_fallback(self, task: Task, outcome: TaskOutcome, fb: Fallback) -> None:
        if self.events:
            self._log(
                "task.fallback_used",
                task=task.name,
                error=type(outcome.error).__name__,
                fallback=fb.describe(self.plan),
            )


class _Decided:
    """A task finished from the cache (or refused while computing its key)."""

    __slots__ = ("next",)

    def __init__(self, nxt: int | None) -> None:
        self.next = nxt


class _Granted:
    """A task that waited for resources and may start now (handed to a lane)."""

    __slots__ = ("i",)

    def __init__(self, i: int) -> None:
        self.i = i

    def complete(self, run: FeaturedRun) -> int | None:
        i = run.i_task(self.i)
        if run.stopping:  # nothing new starts: give the resources back
            run._free(self.i)
            return run._decided(self.i, i, Status.CANCELLED)
        return run._run(self.i, i, run.args[self.i] or ())
