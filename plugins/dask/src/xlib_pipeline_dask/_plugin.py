"""The ``dask`` plugin: ``distributed=True`` runs task bodies on a Dask cluster.

Inert unless asked: with no ``distributed=True`` run option, no ``distributed_mode`` config
and no ``map_over`` task, ``select_executor`` answers nothing (the plugin has no per-task
hook at all). When a run is distributed, ``select_executor`` answers ``dask`` and keeps
its per-run decisions in ``run.stash[STASH]``; ``before_pipeline`` then connects to the
cluster, so a cluster that cannot be reached refuses the run before any task starts.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from xlib_pipeline import (
    ConfigKey,
    ExecutorSpec,
    RunContext,
    RunOption,
    StashKey,
    TaskOption,
    boolean,
    hookimpl,
    outputs_read_in_driver,
)

# The entry point loads this module on every PipelineManager(): the executor and settings
# modules (attrs classes) are imported when a key is given or a run is distributed.


def _settings_section(value: Any) -> DaskSettings:
    from ._settings import settings_section

    return settings_section(value)


def _cluster_type(value: Any) -> str:
    from ._settings import cluster_type

    return str(cluster_type(value))


def _distribute_spec(value: Any) -> DistributeSpec:
    from ._settings import distribute_spec

    return distribute_spec(value)


def _map_index(value: Any) -> int:
    from ._settings import map_index

    return map_index(value)


def _local_map(manager: Any) -> Any:
    from ._local_map import LocalMapExecutor

    return LocalMapExecutor(manager)


def _raw_get(raw: Mapping[str, Any], dotted: str) -> Any:
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


if TYPE_CHECKING:  # pragma: no cover
    from ._cluster import ClusterHandle
    from ._executor import DaskExecutor, DaskRun
    from ._settings import DaskSettings, DistributeSpec

#: ``run.stash`` key of the per-run state.
STASH: StashKey[DaskRun] = StashKey("dask")


class DaskPlugin:
    """Distributed execution on Dask: the ``dask`` executor, run option and task options."""

    name = "dask"

    def __init__(self) -> None:
        self._settings: DaskSettings | None = None
        self.mode = False
        self.cluster_type = "local"
        # The ClusterHandle is built on first use: its module imports asyncio and the
        # subprocess machinery, which a manager that never runs on Dask does not need.
        self._handle: ClusterHandle | None = None
        self._handle_args: dict[str, Any] = {}
        self._handle_lock = threading.Lock()
        self._plans: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], dict[str, Any]]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        self._log: Any = None

    # -- registration ---------------------------------------------------------------------------

    @hookimpl
    def register_config_keys(self) -> Iterable[ConfigKey]:
        return (
            ConfigKey(
                name="distributed",
                convert=_settings_section,
                doc="Dask cluster: {address, n_workers, threads_per_worker, worker_class, "
                "memory_limit, security, lanes, scope, startup_timeout, death_timeout, "
                "dashboard, minimum_workers, maximum_workers}. No address: a local cluster of "
                "fresh worker processes (adaptive between minimum_workers and maximum_workers "
                "with auto_scaling: true).",
            ),
            ConfigKey(
                name="distributed_mode",
                convert=boolean,
                default=False,
                doc="Run every pipeline on Dask unless execute_pipeline(distributed=False).",
            ),
            ConfigKey(
                name="cluster_type",
                convert=_cluster_type,
                default="local",
                doc="'local' (start a local cluster), 'dask' (connect to distributed.address "
                "or $XLIB_PIPELINE_DASK_ADDRESS) or 'kubernetes' (the address the rendered "
                "manifests give in $XLIB_PIPELINE_DASK_ADDRESS; else a local cluster).",
            ),
        )

    @hookimpl
    def register_run_options(self) -> Iterable[RunOption]:
        return (
            RunOption(
                name="distributed",
                convert=boolean,
                doc="True: task bodies run on the Dask cluster; False: locally.",
            ),
        )

    @hookimpl
    def register_task_options(self) -> Iterable[TaskOption]:
        return (
            TaskOption(
                name="distribute",
                convert=_distribute_spec,
                doc="Set by Pipeline.distribute_across_nodes(parallelism=..., map_over=..., "
                "keep_remote=...): mark a task for the cluster.",
            ),
            TaskOption(
                name="map_over",
                convert=_map_index,
                doc="Index of the upstream argument holding a list: the task runs once per "
                "item (one Dask task each) and returns the results in order.",
            ),
        )

    @hookimpl
    def register_executors(self) -> Iterable[ExecutorSpec]:
        return (
            ExecutorSpec(
                name="dask",
                factory=self._executor,
                doc="Task bodies on a Dask cluster (local fresh-process workers by default).",
            ),
            ExecutorSpec(
                name="local_map",
                factory=_local_map,
                doc="Non-distributed runs with map_over tasks: items in parallel on the run's "
                "executor (up to max_workers at once), results in order.",
            ),
        )

    def _executor(self, manager: Any) -> DaskExecutor:
        from ._executor import DaskExecutor

        return DaskExecutor(self.handle, self.settings.lanes)

    # -- lifecycle -------------------------------------------------------------------------------

    @hookimpl
    def configure(self, manager: Any, config: Any) -> None:
        self._settings = config.get("distributed")
        self.mode = bool(config.get("distributed_mode", False))
        self.cluster_type = config.get("cluster_type", "local") or "local"
        eit = _raw_get(config.raw, "security.encryption_in_transit")
        # auto_scaling and resource_management belong to the kubernetes plugin (they shape
        # the rendered deployment); read by value, they also shape the local cluster.
        self._handle = None
        self._handle_args = dict(
            cluster_type=self.cluster_type,
            encryption_in_transit=eit is True,
            auto_scaling=_raw_get(config.raw, "auto_scaling") is True,
            resource_management=config.get("resource_management"),
            worker_resources=functools.partial(_worker_budget, config.get("resources")),
        )

    @property
    def settings(self) -> DaskSettings:
        """The ``distributed`` section (its defaults when not configured)."""
        found = self._settings
        if found is None:
            from ._settings import DaskSettings

            found = self._settings = DaskSettings()
        return found

    @property
    def handle(self) -> ClusterHandle:
        """This manager's connection to Dask (nothing starts until its ``client()``)."""
        handle = self._handle
        if handle is None:
            from ._cluster import ClusterHandle

            with self._handle_lock:
                handle = self._handle
                if handle is None:
                    handle = self._handle = ClusterHandle(self.settings, **self._handle_args)
        return handle

    @hookimpl
    def close(self, manager: Any) -> None:
        if self._handle is not None:
            self._handle.close()

    def _specs(self, run: RunContext) -> dict[str, Any]:
        """By task name: ``(DistributeSpec | None, map index | None)``, marked tasks only."""
        found = self._plans.get(run.pipeline)
        if found is not None and found[0] is run.tasks:
            return found[1]
        specs: dict[str, tuple[DistributeSpec | None, int | None]] = {}
        distribute_spec, map_index = _distribute_spec, _map_index
        for t in run.tasks:
            raw = t.options.get("distribute")
            mo = t.options.get("map_over")
            if raw is None and mo is None:
                continue
            spec = distribute_spec(raw) if raw is not None else None
            index = map_index(mo) if mo is not None else (spec.map_over if spec else None)
            specs[t.name] = (spec, index)
        with self._lock:
            self._plans[run.pipeline] = (run.tasks, specs)
        return specs

    @hookimpl
    def select_executor(self, run: RunContext) -> str | None:
        """``dask`` for a distributed run, ``local_map`` for ``map_over`` tasks run locally."""
        opt = run.options.get("distributed")
        on = opt if opt is not None else (self.mode or run.executor == "dask")
        specs = self._specs(run)
        if on:
            from ._executor import DaskRun

            marked_only = self.settings.scope == "marked"
            run.stash[STASH] = DaskRun(
                distributed=True,
                inner=run.executor,
                marked_only=marked_only,
                specs=specs,
                fetch=_driver_needs(run, specs, marked_only),
            )
            return "dask"
        inner = _local_default(run) if run.executor == "dask" else run.executor
        if any(index is not None for _, index in specs.values()):
            from ._executor import DaskRun

            # distributed=False wins over executor="dask"
            run.stash[STASH] = DaskRun(distributed=False, inner=inner, specs=specs)
            return "local_map"
        return inner if inner != run.executor else None

    @hookimpl
    def before_pipeline(self, run: RunContext) -> None:
        state = run.stash.get(STASH, None)
        if state is None or not state.distributed:
            return
        self.handle.client()  # connect now: an unreachable cluster refuses the run
        if run.log is not None:
            run.log.info(
                "dask.run_distributed",
                address=self.handle.address,
                source=self.handle.source,
                replaced_executor=state.inner,
            )


def _driver_needs(run: RunContext, specs: Mapping[str, Any], marked_only: bool) -> frozenset[str]:
    """Tasks whose values the driver needs whatever the hooks: what the core reads (final
    results, inputs of conditions, contracts, caches, ...) and, with ``scope: marked``, the
    inputs of the tasks that run in the driver."""
    need = outputs_read_in_driver(run)
    if not marked_only:
        return need
    local = {d for t in run.tasks if t.name not in specs for d in t.depends_on}
    return need | local


def _local_default(run: RunContext) -> str:
    """The executor a run uses when it is not distributed."""
    core = run.config.core
    name = core.executor if core.executor != "dask" else "threads"
    return name if core.parallel_execution else "inline"


def _worker_budget(section: Any) -> dict[str, float]:
    """What local workers advertise: the core's ``resources`` budget (``cpu`` and
    ``memory_gb`` default to the machine's, as in the core), so a task's ``resources=``
    map to Dask worker resources."""
    import os

    import psutil

    out = {
        "cpu": float(os.cpu_count() or 1),
        "memory_gb": psutil.virtual_memory().available / 1024**3,
    }
    for k, v in dict(section or {}).items():
        if k != "max_bypass":
            out[k] = float(v)
    return out
