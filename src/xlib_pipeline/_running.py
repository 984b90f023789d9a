"""How a :class:`~xlib_pipeline.PipelineManager` validates and runs pipelines: plan and
option checks, ``execute_pipeline`` (and its iterator and awaitable forms), cancellation,
and the run itself (store, features, scheduler)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import attrs

from ._cache import cache_store_of
from ._context import RESERVED_PARAMS, check_params, logical_date, params_json
from ._events import events_enabled, get_logger
from ._featured import FeaturedRun
from ._graph import Plan
from ._manager_events import ManagerEvents
from ._monitor import Monitor
from ._outcomes import Columns, Observer, lane_count, new_run_id
from ._plugins import Hooks
from ._prepared import ManagerPreparing, PreparedRun
from ._progress import Callback, EventObserver, ProgressEvent, iterate
from ._records import OUTPUTS_IN_DRIVER, RunContext, Status
from ._resources import ManagerResources
from ._results import PipelineResult, TaskResults
from ._scheduler import Run
from ._store import RunStore
from ._store_recorder import StoreRecorder, load_resume
from ._tables import CacheTable
from ._task import Pipeline, param_defaults
from .exceptions import (
    ConfigError,
    DefinitionError,
    PipelineError,
)

#: The run param a stream sets on each batch run (see xlib_pipeline.streams).
BATCH_INPUT = "stream"
_RESERVED = frozenset(RESERVED_PARAMS)


class ManagerRuns(ManagerPreparing, ManagerResources, ManagerEvents):
    """Validating and running pipelines (a part of ``PipelineManager``)."""

    sleep: Callable[[float], None]

    # -- running ---------------------------------------------------------------------------

    def execute_pipeline(
        self,
        pipeline: Pipeline,
        *,
        parallel: bool | None = None,
        monitor: bool = False,
        executor: str | None = None,
        max_workers: int | None = None,
        tenant_id: str | None = None,
        principal: str | None = None,
        params: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        resume: str | None = None,
        force: bool = False,
        source: str | None = None,
        inputs: Mapping[str, Any] | None = None,
        refresh: bool | Iterable[str] = False,
        on_event: Callback | None = None,
        **options: Any,
    ) -> PipelineResult:
        """Run ``pipeline`` and return its :class:`PipelineResult` (failures do not raise).

        ``parallel`` picks threads (default, from config ``parallel_execution``) or inline;
        ``executor`` names any registered executor; ``monitor=True`` shows progress and a
        summary. Plugins add options such as ``isolation_mode=`` or ``distributed=``.
        ``resume=RUN_ID`` re-runs only what did not finish in that stored run (needs config
        ``store``; ``force=True`` accepts a changed structure).
        ``inputs`` gives the outputs of tasks that then do not run (a stream feeds each
        micro-batch this way); they are recorded like finished tasks.
        ``refresh=True`` (or a list of task names) runs cached tasks again instead of
        serving their cache entries, and stores the new outputs (docs/caching.md).
        ``on_event`` is called with each :class:`ProgressEvent` of the run (see
        :meth:`iter_events` for the iterator form; ``monitor=True`` is one more consumer).
        Raises before anything runs when the pipeline, an option or a plugin refuses it.
        """
        if on_event is not None and not callable(on_event):
            raise TypeError(
                "execute_pipeline(on_event=...) must be callable with one ProgressEvent, "
                f"got {type(on_event).__name__}"
            )
        prep = self._prepare_run(
            pipeline,
            parallel=parallel,
            monitor=monitor,
            executor=executor,
            max_workers=max_workers,
            tenant_id=tenant_id,
            principal=principal,
            force=force,
            refresh=refresh,
            on_event=on_event,
            **options,
        )
        return self._launch(
            prep, params=params, run_id=run_id, resume=resume, source=source, inputs=inputs
        )

    def _launch(
        self,
        prep: PreparedRun,
        *,
        params: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        resume: str | None = None,
        source: str | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> PipelineResult:
        """One run of a prepared pipeline (see :meth:`_prepare_run`): what differs from run
        to run (params, inputs, the run id, resuming) and every per-run hook."""
        p = prep.plan
        pipeline = prep.pipeline
        given: dict[int, tuple[Status, Any]] = {}
        if inputs:
            index = p.index
            for key, value in inputs.items():
                if key not in index:
                    raise DefinitionError(
                        f"inputs: pipeline {pipeline.name!r} has no task {key!r}", task=key
                    )
                given[index[key]] = (Status.SUCCEEDED, value)
        resumed_from: str | None = None
        first_start = time.time()
        if resume is not None:
            store = self.store
            if store is None:
                raise ConfigError(
                    "resume needs a run store: configure {'store': {'path': 'runs.sqlite'}}",
                    key="store",
                )
            rec = store.get_run(resume)
            resumed_from = rec.run_id
            params = _resumed_params(rec.run_id, rec.params, params)
            if rec.started is not None:
                first_start = rec.started
        if pipeline.params:
            run_params = {**param_defaults(pipeline), **(params or {})}
        else:
            run_params = {**(params or {})}
        # Nothing to check without params, nor when no task takes params (by name or through
        # its context) and every param is a reserved one (a stream's batch: ``stream``).
        if p.has_calls or not run_params.keys() <= _RESERVED:
            check_params(pipeline.name, p.names, p.calls, run_params, set(given), pipeline.params)
        day = logical_date(run_params, first_start)
        tasks = prep.tasks
        self.hooks.prepare_run(manager=self, pipeline=pipeline, tasks=tasks, options=prep.options)
        hooks = self.hooks  # this run's hooks, whatever registers later
        rid = run_id or new_run_id()
        principal = prep.principal
        if hooks.has["resolve_principal"]:
            principal = hooks.resolve_principal(principal=principal, config=self.config)
        ctx = RunContext(
            run_id=rid,
            pipeline=pipeline,
            tasks=tasks,
            config=self.config,
            manager=self,
            tenant_id=prep.tenant_id,
            principal=principal,
            executor=prep.executor,
            options=prep.options,
            params=run_params,
            resumed_from=resumed_from,
            log=get_logger(pipeline=pipeline.name, run_id=rid),
            logical_date=day,
            max_workers=prep.ctx_workers,
            sleep=self.sleep,
        )
        return self._execute(ctx, prep, hooks, resume=resume, source=source, given=given)

    def iter_events(self, pipeline: Pipeline, **kwargs: Any) -> Iterator[ProgressEvent]:
        """Run ``pipeline`` in a worker thread and yield its :class:`ProgressEvent` as they
        happen; the last is ``run_finished``, whose ``result`` is the :class:`PipelineResult`.

        Takes the arguments of :meth:`execute_pipeline` (but not ``on_event``). A refusal
        before any task started is raised from the iterator. Leaving the loop early (``break``,
        an exception, closing the generator) cancels the run as :meth:`cancel_run` does and
        waits until it ended.
        """
        if "on_event" in kwargs:
            raise TypeError("iter_events() yields the events; it takes no on_event= callback")
        rid = kwargs.pop("run_id", None) or new_run_id()
        ended = threading.Event()

        def start(callback: Callback) -> PipelineResult:
            try:
                return self.execute_pipeline(pipeline, run_id=rid, on_event=callback, **kwargs)
            finally:
                ended.set()

        def cancel() -> None:
            reason = "the event iterator was closed"
            while not ended.is_set() and not self.cancel_run(rid, reason=reason):
                ended.wait(0.01)

        return iterate(start, cancel)

    async def execute_pipeline_async(self, pipeline: Pipeline, **kwargs: Any) -> PipelineResult:
        """Awaitable :meth:`execute_pipeline`, for code that runs an event loop (Jupyter, an
        async web handler): the run goes on in a worker thread, the caller's loop stays free.

        Takes the same arguments. Cancelling the awaiting task stops the run as Ctrl-C
        would (nothing new starts; running tasks get ``cancel_grace_seconds``, then
        coroutine tasks are cancelled) and re-raises :class:`asyncio.CancelledError` once
        the run is recorded as cancelled.
        """
        import asyncio

        rid = kwargs.pop("run_id", None) or new_run_id()
        work = asyncio.ensure_future(
            asyncio.to_thread(self.execute_pipeline, pipeline, run_id=rid, **kwargs)
        )
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            # The run may still be starting (validation, store): ask until it is under way.
            while not self.cancel_run(rid, reason="the awaiting task was cancelled"):
                done, _ = await asyncio.wait([work], timeout=0.01)
                if done:
                    break
            await asyncio.wait([work])
            raise

    def cancel_run(self, run_id: str, *, reason: str = "cancelled by request") -> bool:
        """Ask the run ``run_id`` under way in this manager to stop, as Ctrl-C would.

        Returns ``False`` when no such run is under way (it may have just ended).
        """
        run = self._live.get(run_id)
        if run is None:
            return False
        run.request_stop(f"run {run_id} was cancelled: {reason}")
        return True

    def _execute(
        self,
        ctx: RunContext,
        prep: PreparedRun,
        hooks: Hooks,
        *,
        resume: str | None = None,
        source: str | None = None,
        given: Mapping[int, tuple[Status, Any]] | None = None,
    ) -> PipelineResult:
        store: RunStore | None = None
        obs: list[Observer] = []
        batch = False
        preloaded: Mapping[int, tuple[Status, Any]] | None = None
        reused: dict[int, str] | None = None  # task -> the run whose outcome is reused
        p = prep.plan
        try:
            chosen = hooks.select_executor(run=ctx)
            if chosen is not None and chosen != ctx.executor:
                ctx = attrs.evolve(ctx, executor=chosen)
            hooks.validate_pipeline(pipeline=ctx.pipeline, run=ctx)
            store = self.store  # after validators: they may require_store()
            features = prep.features
            cache_table: CacheTable | None = None
            if features is not None and features.cache is not None and store is not None:
                cache_table = cache_store_of(self, store)  # a store without one: refused
            # Stored outputs are decrypted only once validators (access control) agreed.
            carried = None
            if resume is not None and store is not None:
                old, preloaded, carried = load_resume(store, resume, p, hooks, force=prep.force)
                reused = {i: carried[i][1] if i in carried else old for i in preloaded}
            if given:
                preloaded = {**(preloaded or {}), **given}
            # A stream's batch commits with its checkpoint (one wait per batch), not task by
            # task: a crash re-runs the whole batch from the last checkpoint anyway.
            batch = given is not None and BATCH_INPUT in ctx.params
            record_outputs = prep.record_outputs
            if store is not None:
                recorder = StoreRecorder(
                    store,
                    hooks,
                    record_outputs=record_outputs,
                    carried=carried,
                    source=source,
                    flush=not batch,
                )
                recorder.start(ctx, p)
                obs.append(recorder)
            ctx.stash[OUTPUTS_IN_DRIVER] = store is not None and record_outputs
            hooks.before_pipeline(run=ctx)
        except BaseException as exc:
            refused = _refused_result(ctx, p, exc)
            ctx.log.warning("pipeline.refused", error=type(exc).__name__)
            self._report_error_events(hooks, ctx, exc, refused=True)
            if obs and store is not None:  # the run row exists: close it as refused
                store.run_finished(
                    ctx.run_id, "refused", refused.finished, f"{type(exc).__name__}: {exc}"
                )
            try:
                hooks.after_pipeline(run=ctx, result=refused)
            except PipelineError:
                pass
            raise
        if not prep.parallel or ctx.executor == "inline":
            self.executor(ctx.executor)  # an unknown executor is refused here, as below
            lanes = 1
        else:
            suggested = self.executor(ctx.executor).lanes()
            if suggested is not None:
                lanes = suggested
            else:
                lanes = lane_count(prep.max_workers or self.config.core.max_workers, len(p))
        events: EventObserver | None = None
        monitor = prep.monitor
        on_event = prep.on_event
        if monitor or on_event is not None:
            events = EventObserver([Monitor(p)] if monitor else [])
            if on_event is not None:
                events.callbacks.append(on_event)
            obs.append(events)
        commit = flush = None
        if store is not None and not batch:
            commit, flush = store.commit, store.flush
        shared: dict[str, Any] = {
            "ctx": ctx,
            "hooks": hooks,
            "executor_for": self.executor,
            "lanes": lanes,
            "strategy": prep.strategy,
            "continuation": prep.continuation,
            "on_failure": prep.on_failure,
            "observers": obs,
            "preloaded": preloaded,
            "grace": prep.grace,
            "commit": commit,
            "flush": flush,
        }
        run: Run
        if features is None:
            run = Run(plan=p, **shared)
        else:
            run = FeaturedRun(
                features=features, refresh=prep.refresh, cache_store=cache_table, **shared
            )
        if events is not None:
            events.start(run, reused)
        if run.events:  # else the logger drops it (the run's check, made just now)
            ctx.log.info("pipeline.started", tasks=len(p), executor=ctx.executor, lanes=lanes)
        # Listed (live_runs, cancel_run) until every after_pipeline saw the run end.
        self._live[ctx.run_id] = run
        try:
            result = run.execute()
            if events_enabled():  # else the logger drops it
                ctx.log.info(
                    "pipeline." + result.status,
                    duration=round(result.duration, 6),
                    failed_task=result.failed_task,
                )
            if result.error is not None:
                self._report_error_events(hooks, ctx, result.error, refused=False)
            try:
                hooks.after_pipeline(run=ctx, result=result)
            except PipelineError as exc:
                result = attrs.evolve(result, status="failed", success=False, error=exc)
        finally:
            self._live.pop(ctx.run_id, None)
        return result


def _resumed_params(
    run_id: str, stored: Mapping[str, Any], given: Mapping[str, Any] | None
) -> Mapping[str, Any]:
    """A resumed run keeps the params of the run it resumes (its finished tasks ran with
    them); different params are refused rather than mixed."""
    if given is None or dict(given) == dict(stored):
        return stored
    if params_json(given) == dict(stored):
        return stored
    raise ConfigError(
        f"cannot resume run {run_id} with other params: it ran with {dict(stored)!r}, "
        f"got {dict(given)!r}; resume without params (they are kept), or start a new run",
        key="params",
    )


def _refused_result(ctx: RunContext, p: Plan, exc: BaseException) -> PipelineResult:
    cols = Columns(len(p))
    cols.status = [Status.CANCELLED] * len(p)
    now = time.time()
    return PipelineResult(
        pipeline=p.pipeline_name,
        run_id=ctx.run_id,
        status="refused",
        success=False,
        final_result=None,
        error=exc,
        tasks=TaskResults(p.names, p.index, cols),
        started=now,
        finished=now,
    )
