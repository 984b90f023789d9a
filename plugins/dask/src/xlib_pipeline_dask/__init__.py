"""xlib-pipeline-dask: run pipeline tasks on a Dask cluster.

``pm.execute_pipeline(p, distributed=True)`` (or config ``distributed_mode: True``) runs task
bodies on Dask workers while the scheduler loop, hooks, retries and audit stay in the
driver. Without ``distributed.address`` a local cluster of fresh worker processes starts
on first use. See docs/plugins/dask.md.
"""

from __future__ import annotations

from ._cluster import ClusterHandle, ClusterStartError, FreshWorker, build_security
from ._executor import STASH, DaskExecutor, DaskRun, LocalMapExecutor, RemoteResult
from ._plugin import DaskPlugin
from ._remote import RemoteCall
from ._settings import ADDRESS_ENV, DaskSettings, DistributeSpec

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
