"""The :class:`PipelineManager`: plugins, validated config, executors and runs."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from ._builtin import CorePlugin
from ._config import Config, validate
from ._events import get_logger
from ._graph import Plan, plan, suggest
from ._monitor import Monitor
from ._plugins import (
    KNOWN_DECORATORS,
    KNOWN_RUN_OPTIONS,
    KNOWN_TASK_OPTIONS,
    Hooks,
    create_plugin_manager,
    package_for,
)
from ._recording import StoreRecorder, load_resume
from ._records import (
    CliCommand,
    Executor,
    ExecutorSpec,
    ManagerDecorator,
    PluginInfo,
    RenderTarget,
    RunContext,
    RunOption,
    Status,
    TaskOption,
    check_tenant_id,
)
from ._results import PipelineResult, TaskResults
from ._scheduler import Columns, Observer, Run, lane_count, new_run_id
from ._store import RunRecord, RunStore, TaskRecord, store_section
from ._task import Pipeline
from .exceptions import (
    ConfigError,
    DefinitionError,
    MissingPluginError,
    PipelineError,
    PluginError,
    SettingWithoutEffectWarning,
    UnknownTaskOptionError,
)

_CORE_RUN_OPTIONS = (
    "parallel",
    "monitor",
    "executor",
    "max_workers",
    "tenant_id",
    "principal",
    "params",
    "run_id",
    "resume",
    "force",
)


class PipelineManager:
    """Runs pipelines under a validated config with the installed (and given) plugins.

    ``config`` is a plain dict (see docs/configuration.md); ``plugins`` adds plugin objects
    explicitly; ``entry_points=False`` ignores installed plugins (useful in tests).
    Plugins add decorators such as ``pm.audit_log(...)`` as attributes of the manager.
    """

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,
        *,
        plugins: Iterable[object] = (),
        entry_points: bool | None = None,
    ) -> None:
        if config is not None and not isinstance(config, Mapping):
            raise ConfigError(f"config must be a dict, got {type(config).__name__}")
        raw = dict(config or {})
        section = raw.get("plugins")
        disabled: tuple[str, ...] = ()
        use_eps = True if entry_points is None else entry_points
        if isinstance(section, Mapping):
            disabled = tuple(section.get("disable", ()) or ())
            if entry_points is None:
                use_eps = bool(section.get("entry_points", True))
        self._pm, self._infos = create_plugin_manager(
            explicit=plugins,
            disabled=disabled,
            entry_points=use_eps,
            builtin=[("core", CorePlugin())],
        )
        self.hooks = Hooks(self._pm)
        keys = self.hooks.collect("register_config_keys")
        self.config: Config = validate(raw, keys)
        self._task_options: dict[str, TaskOption] = self.hooks.collect("register_task_options")
        self._run_options: dict[str, RunOption] = self.hooks.collect("register_run_options")
        self._executor_specs: dict[str, ExecutorSpec] = self.hooks.collect("register_executors")
        self._decorators: dict[str, ManagerDecorator] = self.hooks.collect(
            "register_manager_decorators"
        )
        self._render_targets: dict[str, RenderTarget] = self.hooks.collect(
            "register_render_targets"
        )
        self._cli_commands: dict[str, CliCommand] = self.hooks.collect("register_cli_commands")
        self._inactive: dict[str, object] = {}
        self._executors: dict[str, Executor] = {}
        self._exec_lock = threading.RLock()
        self._checked: weakref.WeakKeyDictionary[Plan, bool] = weakref.WeakKeyDictionary()
        self._closed = False
        self._store: RunStore | None = None
        #: Called as ``notice(run_id, grace_seconds)`` on the first interrupt of a run (the
        #: CLI prints that the run is stopping and how long running tasks may go on).
        self.interrupt_notice: Callable[[str, float | None], None] | None = None
        self._store_lock = threading.Lock()
        self.state: dict[str, Any] = {}  # per-manager plugin state, by plugin name
        self._live: dict[str, Run] = {}  # runs under way, by run id (for cancel_run)
        self._store_needed: str | None = None  # why a plugin needs the default store
        self._warned: set[str] = set()
        self._configure_plugins()
        self._finalizer = weakref.finalize(self, _close_executors, self._executors)

    # -- plugins ---------------------------------------------------------------------------

    def _configure_plugins(self) -> None:
        """Call each plugin's ``configure``; unregister those that answer ``False``."""
        inactive: list[str] = []
        for impl in reversed(self._pm.hook.configure.get_hookimpls()):
            try:
                answer = impl.function(manager=self, config=self.config)
            except PipelineError as exc:
                if getattr(exc, "plugin", None) is None:
                    exc.plugin = impl.plugin_name  # type: ignore[attr-defined]
                raise
            except Exception as exc:
                raise PluginError(
                    f"plugin {impl.plugin_name!r} failed in hook 'configure': "
                    f"{type(exc).__name__}: {exc}",
                    plugin=impl.plugin_name,
                    hook="configure",
                ) from exc
            if answer is False:
                inactive.append(impl.plugin_name)
        for name in inactive:
            self._inactive[name] = self._pm.unregister(name=name)
        if inactive:
            self._infos = [
                attrs.evolve(i, active=False) if i.name in inactive else i for i in self._infos
            ]
            self._rebuild_hooks()

    def _rebuild_hooks(self) -> None:
        owners = self.hooks.owners
        self.hooks = Hooks(self._pm)
        self.hooks.owners = owners

    def _activate(self, owner: str | None) -> None:
        """Register again a plugin that declined in ``configure`` because a pipeline, a run
        or a decorator now uses something it owns; it then works with its defaults."""
        if owner is None or owner not in self._inactive:
            return
        with self._exec_lock:
            plugin = self._inactive.pop(owner, None)
            if plugin is None:
                return
            self._pm.register(plugin, name=owner)
            self._infos = [
                attrs.evolve(i, active=True) if i.name == owner else i for i in self._infos
            ]
            self._rebuild_hooks()

    def register(self, plugin: object, name: str) -> None:
        """Register a further hook object for this manager (a plugin's per-run part, say).

        Plugins call it from ``configure`` or later to add hooks only when they are needed;
        the manager then recomputes which hooks have implementations. Runs already under
        way keep the hooks they started with.
        """
        with self._exec_lock:
            self._pm.register(plugin, name=name)
            self._rebuild_hooks()

    def is_active(self, name: str) -> bool:
        """Whether plugin ``name`` is installed and active for this manager."""
        return any(i.name == name and i.active for i in self._infos)

    @property
    def plugins(self) -> list[PluginInfo]:
        """The registered plugins with their distributions, versions and hooks."""
        return list(self._infos)

    def has_plugin(self, name: str) -> bool:
        """Whether plugin ``name`` is installed for this manager (active or not), not disabled."""
        registered = self._pm.has_plugin(name) and self._pm.get_plugin(name) is not None
        return bool(registered) or name in self._inactive

    def get_plugin(self, name: str) -> Any:
        """The plugin object called ``name``, active or not (``None`` when absent)."""
        return self._pm.get_plugin(name) or self._inactive.get(name)

    @property
    def cli_commands(self) -> Mapping[str, CliCommand]:
        """CLI sub-commands registered by plugins."""
        return dict(self._cli_commands)

    @property
    def render_targets(self) -> Mapping[str, RenderTarget]:
        """Deployment render targets registered by plugins."""
        return dict(self._render_targets)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        decorators = self.__dict__.get("_decorators", {})
        spec = decorators.get(name)
        if spec is not None:
            self._activate(self.hooks.owner("register_manager_decorators", name))
            factory = spec.factory

            def decorator_factory(*args: Any, **kwargs: Any) -> Callable[..., Any]:
                made: Callable[..., Any] = factory(self, *args, **kwargs)
                return made

            decorator_factory.__name__ = name
            decorator_factory.__doc__ = spec.doc
            return decorator_factory
        plugin = KNOWN_DECORATORS.get(name)
        if plugin is not None:
            raise MissingPluginError(f"pm.{name}(...)", package_for(plugin))
        hint = suggest(name, [*decorators, *KNOWN_DECORATORS, "execute_pipeline"])
        extra = f"; did you mean {hint!r}?" if hint else ""
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}{extra}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Task closures often capture an object holding the manager (the user guide's
        # examples do). A worker process gets a detached stand-in, never plugins or keys.
        return (_DetachedManager, (dict(self.config.raw),))

    # -- executors ---------------------------------------------------------------------------

    def executor(self, name: str) -> Executor:
        """The executor registered as ``name`` (built once per manager, kept warm)."""
        ex = self._executors.get(name)
        if ex is not None:
            return ex
        with self._exec_lock:
            ex = self._executors.get(name)
            if ex is None:
                spec = self._executor_specs.get(name)
                if spec is None:
                    if name == "dask":
                        raise MissingPluginError("the 'dask' executor", package_for("dask"))
                    hint = suggest(name, self._executor_specs)
                    extra = f"; did you mean {hint!r}?" if hint else ""
                    raise ConfigError(
                        f"unknown executor {name!r}; registered: "
                        f"{sorted(self._executor_specs)}{extra}",
                        key="executor",
                        suggestion=hint,
                    )
                try:
                    ex = spec.factory(self)
                except PipelineError:
                    raise
                except Exception as exc:
                    owner = self.hooks.owner("register_executors", name)
                    raise PluginError(
                        f"plugin {owner!r} failed to build executor {name!r}: "
                        f"{type(exc).__name__}: {exc}",
                        plugin=owner,
                        hook="register_executors",
                    ) from exc
                self._executors[name] = ex
        return ex

    def _record_outputs(self) -> bool:
        section = self.config.get("store")
        return True if section is None else bool(section["record_outputs"])

    def require_store(self, reason: str) -> None:
        """A plugin needs this manager's runs recorded (``reason`` names the setting, e.g.
        ``security.encryption_at_rest``): with no ``store`` configured, runs go to the
        embedded default store, ``data_dir()/runs.sqlite``. With ``store: false`` nothing
        can be recorded: warn once (:class:`SettingWithoutEffectWarning`) naming ``reason``.
        """
        if self.config.given("store"):
            if self.config.get("store") is None and reason not in self._warned:
                self._warned.add(reason)
                import warnings

                warnings.warn(
                    f"{reason} has no effect: config says store: false, so no run output is "
                    f"stored (nothing to protect). Remove store: false to record runs in "
                    f"the embedded default store, or drop {reason}.",
                    SettingWithoutEffectWarning,
                    stacklevel=3,
                )
            return
        if self._store_needed is None:
            self._store_needed = reason

    @property
    def store(self) -> RunStore | None:
        """The run store: config ``store`` (``true`` or no ``path`` means the default file),
        else the embedded default when a plugin requires one (:meth:`require_store`), else
        ``None``. Opened on first use."""
        section = self.config.get("store")
        if section is None:
            if self._store_needed is None or self.config.given("store"):
                return None
            section = store_section(True)
        if self._store is None:
            with self._store_lock:
                if self._store is None:
                    self._store = RunStore(
                        section["path"],
                        synchronous=section["synchronous"],
                        busy_timeout_ms=section["busy_timeout_ms"],
                    )
        return self._store

    def read_run(
        self, run_id: str, *, principal: str | None = None
    ) -> tuple[RunRecord, dict[str, TaskRecord]]:
        """A stored run and its tasks, once ``principal`` may read every tenant in it.

        Access is decided by the ``check_access`` hook (the tenancy plugin's RBAC); outputs
        stay as stored (encrypted under their tenant's key when encryption is on).
        """
        store = self.store
        if store is None:
            raise ConfigError("reading runs needs a run store: configure {'store': {...}}")
        rec = store.get_run(run_id)
        tasks = store.get_tasks(rec.run_id)
        self.check_read_access(rec, tasks.values(), principal=principal)
        return rec, tasks

    def check_read_access(
        self,
        rec: RunRecord,
        tasks: Iterable[TaskRecord] = (),
        *,
        principal: str | None = None,
    ) -> None:
        """Raise SecurityError unless ``principal`` may read the run's tenants' data."""
        tenants = {rec.tenant, *(t.tenant for t in tasks)}
        if len(tenants) > 1:
            tenants.discard(None)
        for tenant in sorted(tenants, key=lambda t: t or ""):
            self.hooks.call(
                "check_access",
                principal=principal,
                permission="read_data",
                tenant=tenant,
                action=f"read run {rec.run_id} of pipeline {rec.pipeline!r}",
            )

    def close(self) -> None:
        """Stop worker pools, close the store, let plugins release resources."""
        try:
            self.hooks.call("close", manager=self)
        finally:
            _close_executors(self._executors)
            if self._store is not None:
                self._store.close()
                self._store = None

    def __enter__(self) -> PipelineManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- validation ------------------------------------------------------------------------

    def validate_pipeline(self, pipeline: Pipeline) -> Plan:
        """Validate graph and task options without running anything; return the plan."""
        if not isinstance(pipeline, Pipeline):
            raise DefinitionError(
                f"execute_pipeline expects a Pipeline, got {type(pipeline).__name__}"
            )
        p = plan(pipeline)
        if p not in self._checked:
            self._check_options(p)
            self._checked[p] = True
        return p

    def _check_options(self, p: Plan) -> None:
        known = self._task_options
        for t in p.tasks:
            for key, value in t.options.items():
                spec = known.get(key)
                if spec is None:
                    plugin = KNOWN_TASK_OPTIONS.get(key)
                    raise UnknownTaskOptionError(
                        t.name,
                        key,
                        suggest(key, [*known, *KNOWN_TASK_OPTIONS]),
                        package_for(plugin) if plugin else None,
                    )
                self._activate(self.hooks.owner("register_task_options", key))
                try:
                    spec.convert(value)
                except (ValueError, TypeError, ArithmeticError) as exc:
                    raise DefinitionError(
                        f"task {t.name!r}: option {key}={value!r} is invalid: {exc}", task=t.name
                    ) from exc

    def _check_run_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in options.items():
            spec = self._run_options.get(key)
            if spec is None:
                plugin = KNOWN_RUN_OPTIONS.get(key)
                if plugin is not None:
                    raise MissingPluginError(f"execute_pipeline({key}=...)", package_for(plugin))
                hint = suggest(key, [*self._run_options, *_CORE_RUN_OPTIONS, *KNOWN_RUN_OPTIONS])
                extra = f"; did you mean {hint!r}?" if hint else ""
                raise TypeError(f"execute_pipeline() got an unknown option {key!r}{extra}")
            self._activate(self.hooks.owner("register_run_options", key))
            try:
                out[key] = spec.convert(value)
            except (ValueError, TypeError, ArithmeticError) as exc:
                raise ConfigError(
                    f"execute_pipeline({key}={value!r}) is invalid: {exc}", key=key
                ) from exc
        return out

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
        **options: Any,
    ) -> PipelineResult:
        """Run ``pipeline`` and return its :class:`PipelineResult` (failures do not raise).

        ``parallel`` picks threads (default, from config ``parallel_execution``) or inline;
        ``executor`` names any registered executor; ``monitor=True`` shows progress and a
        summary. Plugins add options such as ``isolation_mode=`` or ``distributed=``.
        ``resume=RUN_ID`` re-runs only what did not finish in that stored run (needs config
        ``store``; ``force=True`` accepts a changed structure).
        Raises before anything runs when the pipeline, an option or a plugin refuses it.
        """
        p = self.validate_pipeline(pipeline)
        run_options = self._check_run_options(options)
        core = self.config.core
        if parallel is None:
            parallel = core.parallel_execution
        name = executor or (core.executor if parallel else "inline")
        if max_workers is not None and (
            isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
        ):
            raise ConfigError(f"max_workers must be a positive int, got {max_workers!r}")
        if tenant_id is not None:
            try:
                check_tenant_id(tenant_id)
            except ValueError as exc:
                raise ConfigError(str(exc), key="tenant_id") from exc
        rid = run_id or new_run_id()
        ctx = RunContext(
            run_id=rid,
            pipeline=pipeline,
            plan=p,
            config=self.config,
            manager=self,
            tenant_id=tenant_id,
            principal=principal,
            executor=name,
            options=run_options,
            params=dict(params or {}),
        )
        ctx.log = get_logger(pipeline=pipeline.name, run_id=rid)
        store = self.store
        if resume is not None:
            if store is None:
                raise ConfigError(
                    "resume needs a run store: configure {'store': {'path': 'runs.sqlite'}}",
                    key="store",
                )
            ctx.resumed_from = store.get_run(resume).run_id
        return self._execute(
            ctx,
            parallel=parallel,
            monitor=monitor,
            max_workers=max_workers,
            resume=resume,
            force=force,
            source=source,
        )

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
        *,
        parallel: bool,
        monitor: bool,
        max_workers: int | None,
        resume: str | None = None,
        force: bool = False,
        source: str | None = None,
    ) -> PipelineResult:
        hooks = self.hooks
        p = ctx.plan
        store: RunStore | None = None
        obs: list[Observer] = []
        preloaded: Mapping[int, tuple[Status, Any]] | None = None
        try:
            if hooks.has["validate_pipeline"]:
                hooks.call("validate_pipeline", pipeline=ctx.pipeline, run=ctx)
            store = self.store  # after validators: they may require_store()
            # Stored outputs are decrypted only once validators (access control) agreed.
            carried = None
            if resume is not None and store is not None:
                _, preloaded, carried = load_resume(store, resume, p, hooks, force=force)
            if store is not None:
                recorder = StoreRecorder(
                    store,
                    hooks,
                    record_outputs=self._record_outputs(),
                    carried=carried,
                    source=source,
                )
                recorder.start(ctx, p)
                obs.append(recorder)
            if hooks.has["before_pipeline"]:
                hooks.call("before_pipeline", run=ctx)
        except BaseException as exc:
            refused = _refused_result(ctx, exc)
            ctx.log.warning("pipeline.refused", error=type(exc).__name__)
            if obs and store is not None:  # the run row exists: close it as refused
                store.run_finished(
                    ctx.run_id, "refused", refused.finished, f"{type(exc).__name__}: {exc}"
                )
            if hooks.has["after_pipeline"]:
                try:
                    hooks.call("after_pipeline", run=ctx, result=refused)
                except PipelineError:
                    pass
            raise
        ex = self.executor(ctx.executor)
        suggested = ex.lanes()
        if not parallel or ctx.executor == "inline":
            lanes = 1
        elif suggested is not None:
            lanes = suggested
        else:
            lanes = lane_count(max_workers or self.config.core.max_workers, len(p))
        mon: Monitor | None = None
        if monitor:
            mon = Monitor()
            obs.append(mon)
        run = Run(
            ctx=ctx,
            plan=p,
            hooks=hooks,
            executor_for=self.executor,
            lanes=lanes,
            strategy=self.config.core.execution_strategy,
            continuation=self.config.core.dependency_optimization,
            on_failure=self.config.core.on_failure,
            observers=obs,
            preloaded=preloaded,
            grace=self.config.get("cancel_grace_seconds", 10.0),
            commit=store.commit if store is not None else None,
            flush=store.flush if store is not None else None,
        )
        ctx.stash["__run__"] = run
        if mon is not None:
            mon.start(run)
        ctx.log.info("pipeline.started", tasks=len(p), executor=ctx.executor, lanes=lanes)
        self._live[ctx.run_id] = run
        try:
            result = run.execute()
        finally:
            self._live.pop(ctx.run_id, None)
        ctx.log.info(
            "pipeline." + result.status,
            duration=round(result.duration, 6),
            failed_task=result.failed_task,
        )
        if hooks.has["after_pipeline"]:
            try:
                hooks.call("after_pipeline", run=ctx, result=result)
            except PipelineError as exc:
                result = attrs.evolve(result, status="failed", success=False, error=exc)
        return result


def _refused_result(ctx: RunContext, exc: BaseException) -> PipelineResult:
    import time

    p = ctx.plan
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


def _close_executors(executors: dict[str, Executor]) -> None:
    items = list(executors.values())
    executors.clear()
    for ex in items:
        try:
            ex.close()
        except Exception:  # pragma: no cover - best effort at shutdown
            pass


class _DetachedManager:
    """What a :class:`PipelineManager` becomes inside a worker process: inert.

    Task code may hold a manager (through ``self`` in a closure) but cannot run pipelines
    or load plugins in a worker; any use says so.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config_raw = config

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise PipelineError(
            f"PipelineManager.{name} is not available inside a worker process; "
            "tasks run there by value, without the driver's plugins"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_DetachedManager, (self.config_raw,))
