"""What every run of one pipeline with the same options shares: the validated plan, the
checked run options, the executor choice and the manager's settings a run reads. Computed
by ``execute_pipeline`` for each call, and once per stream for all its batches (a stream
runs one small run per micro-batch; preparing each again was ~6 % of the instructions of
a batch's run, measured)."""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ._cache import refresh_indices
from ._features import Features, compile_features
from ._graph import Plan, plan, suggest
from ._plugins import KNOWN_RUN_OPTIONS, KNOWN_TASK_OPTIONS, package_for
from ._records import RunOption, TaskOption, check_tenant_id
from ._task import Pipeline, Task
from .exceptions import ConfigError, DefinitionError, MissingPluginError, UnknownTaskOptionError

if TYPE_CHECKING:  # pragma: no cover
    from ._config import Config
    from ._progress import Callback


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
    "refresh",
    "on_event",
)


class PreparedRun:
    """A pipeline's runs prepared with fixed options (see :mod:`._prepared`).

    :meth:`current` says whether it still describes what a run would check: the pipeline
    unchanged since (its plan version) and the manager's config the same object. Hooks are
    not part of it: each run reads the manager's hooks facade afresh, so a plugin registered
    later takes part in the next run as it does in ``execute_pipeline``.
    """

    __slots__ = (
        "config",
        "continuation",
        "ctx_workers",
        "executor",
        "features",
        "force",
        "grace",
        "manager",
        "max_workers",
        "monitor",
        "on_event",
        "on_failure",
        "options",
        "parallel",
        "pipeline",
        "plan",
        "principal",
        "record_outputs",
        "refresh",
        "strategy",
        "tasks",
        "tenant_id",
    )

    def __init__(
        self,
        *,
        manager: Any,
        pipeline: Pipeline,
        plan: Plan,
        tasks: tuple[Task, ...],
        config: Config,
        features: Features | None,
        options: Mapping[str, Any],
        parallel: bool,
        executor: str,
        max_workers: int | None,
        tenant_id: str | None,
        principal: str | None,
        monitor: bool,
        force: bool,
        refresh: bool | frozenset[int],
        on_event: Callback | None,
        record_outputs: bool,
    ) -> None:
        self.manager = manager
        self.pipeline = pipeline
        self.plan = plan
        self.tasks = tasks
        self.config = config
        self.features = features
        self.options = options
        self.parallel = parallel
        self.executor = executor
        self.max_workers = max_workers
        self.tenant_id = tenant_id
        self.principal = principal
        self.monitor = monitor
        self.force = force
        self.refresh = refresh
        self.on_event = on_event
        self.record_outputs = record_outputs
        core = config.core
        #: RunContext.max_workers: tasks at once (1 for an inline run).
        self.ctx_workers = (max_workers or core.max_workers) if parallel else 1
        self.strategy = core.execution_strategy
        self.continuation = core.dependency_optimization
        self.on_failure = core.on_failure
        self.grace: float | None = config.get("cancel_grace_seconds", 10.0)

    def current(self) -> bool:
        """Whether a run prepared now would be prepared the same: the pipeline has not been
        edited (same plan version) and the manager's config is the same object."""
        p = self.plan
        return (
            self.pipeline._plan is p
            and p.version == self.pipeline._version
            and self.manager.config is self.config
        )


class ManagerPreparing:
    """Validating pipelines and preparing runs (a part of ``PipelineManager``)."""

    config: Config
    _task_options: Mapping[str, TaskOption]
    _run_options: Mapping[str, RunOption]
    _checked: weakref.WeakKeyDictionary[Plan, tuple[Task, ...]]
    _features: weakref.WeakKeyDictionary[Plan, Features | None]

    if TYPE_CHECKING:  # provided by ManagerResources

        def require_store(self, reason: str) -> None: ...
        def _record_outputs(self) -> bool: ...

    # -- validation ------------------------------------------------------------------------

    def validate_pipeline(self, pipeline: Pipeline) -> Plan:
        """Validate graph and task options without running anything; return the plan."""
        return self._validated(pipeline)[0]

    def _validated(self, pipeline: Pipeline) -> tuple[Plan, tuple[Task, ...]]:
        """The plan and its tasks in topological order (checked once per plan version)."""
        if not isinstance(pipeline, Pipeline):
            raise DefinitionError(
                f"execute_pipeline expects a Pipeline, got {type(pipeline).__name__}"
            )
        p = plan(pipeline)
        ordered = self._checked.get(p)
        if ordered is None:
            self._check_options(p)
            self._features[p] = features = compile_features(p, self.config)
            if features is not None and features.cache is not None:
                self.require_store("cache")  # entries live in the run store
            ordered = tuple(p.tasks[i] for i in p.order)
            self._checked[p] = ordered
        return p, ordered

    def _check_options(self, p: Plan) -> None:
        if not p.has_options:
            return
        known = self._task_options
        for t in p.tasks:
            if "window" in t.options:
                raise DefinitionError(
                    f"task {t.name!r}: window= applies when the pipeline runs as a stream "
                    "(pm.stream or xlib-pipeline stream); execute_pipeline runs one batch",
                    task=t.name,
                )
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
            try:
                out[key] = spec.convert(value)
            except (ValueError, TypeError, ArithmeticError) as exc:
                raise ConfigError(
                    f"execute_pipeline({key}={value!r}) is invalid: {exc}", key=key
                ) from exc
        return out

    def _prepare_run(
        self,
        pipeline: Pipeline,
        *,
        parallel: bool | None = None,
        monitor: bool = False,
        executor: str | None = None,
        max_workers: int | None = None,
        tenant_id: str | None = None,
        principal: str | None = None,
        force: bool = False,
        refresh: bool | Iterable[str] = False,
        on_event: Callback | None = None,
        **options: Any,
    ) -> PreparedRun:
        """What every run of ``pipeline`` with these options shares, checked as
        :meth:`execute_pipeline` checks it (a stream prepares its batches' runs once and
        launches each with :meth:`_launch` while :meth:`PreparedRun.current` holds)."""
        p, tasks = self._validated(pipeline)
        fresh = refresh_indices(p, refresh)
        run_options = self._check_run_options(options)
        config = self.config
        core = config.core
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
        return PreparedRun(
            manager=self,
            pipeline=pipeline,
            plan=p,
            tasks=tasks,
            config=config,
            features=self._features.get(p),
            options=run_options,
            parallel=parallel,
            executor=name,
            max_workers=max_workers,
            tenant_id=tenant_id,
            principal=principal,
            monitor=monitor,
            force=force,
            refresh=fresh,
            on_event=on_event,
            record_outputs=self._record_outputs(),
        )
