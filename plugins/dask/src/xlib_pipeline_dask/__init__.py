"""xlib-pipeline-dask: run pipeline tasks on a Dask cluster.

``pm.execute_pipeline(p, distributed=True)`` (or config ``distributed_mode: True``) runs task
bodies on Dask workers while the scheduler loop, hooks, retries and audit stay in the
driver. Without ``distributed.address`` a local cluster of fresh worker processes starts
on first use. See docs/plugins/dask.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from xlib_pipeline import lazy_exports

if TYPE_CHECKING:  # pragma: no cover
    from ._cluster import ClusterHandle, ClusterStartError, build_security
    from ._executor import STASH, DaskExecutor, DaskRun
    from ._fresh import fresh_worker_class as FreshWorker
    from ._local_map import LocalMapExecutor
    from ._outputs import RemoteResult
    from ._plugin import DaskPlugin
    from ._remote import RemoteCall
    from ._settings import ADDRESS_ENV, DaskSettings, DistributeSpec

_LAZY = {
    "ClusterHandle": "._cluster",
    "ClusterStartError": "._cluster",
    "build_security": "._cluster",
    "STASH": "._executor",
    "DaskExecutor": "._executor",
    "DaskRun": "._executor",
    "LocalMapExecutor": "._local_map",
    "RemoteResult": "._outputs",
    "DaskPlugin": "._plugin",
    "RemoteCall": "._remote",
    "ADDRESS_ENV": "._settings",
    "DaskSettings": "._settings",
    "DistributeSpec": "._settings",
}

__all__ = [
    "ADDRESS_ENV",
    "STASH",
    "ClusterHandle",
    "ClusterStartError",
    "DaskExecutor",
    "DaskPlugin",
    "DaskRun",
    "DaskSettings",
    "DistributeSpec",
    "FreshWorker",
    "LocalMapExecutor",
    "RemoteCall",
    "RemoteResult",
    "build_security",
]


if not TYPE_CHECKING:  # mypy sees the names above, and flags a misspelt one
    _lazy_getattr, _lazy_dir = lazy_exports(__name__, _LAZY)

    def __getattr__(name: str) -> Any:
        # Entry points load this package on every PipelineManager(): its submodules (and
        # their dependencies) are imported when a name is first used, not before.
        if name == "FreshWorker":  # subclasses distributed's Subprocess: built on first use
            from ._fresh import fresh_worker_class

            return fresh_worker_class()
        return _lazy_getattr(name)

    def __dir__() -> list[str]:
        return sorted({*_lazy_dir(), "FreshWorker"})
