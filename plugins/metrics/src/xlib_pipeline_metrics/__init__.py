"""Prometheus metrics for xlib-pipeline runs (``xlib-pipeline-metrics``).

Turned on by config ``metrics``: ``{'port': 9464}`` serves ``/metrics`` from the driver,
``{'pushgateway': URL}`` pushes at each run end, ``{'textfile': 'x.prom'}`` writes a file for
node_exporter's textfile collector. See docs/monitoring.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._plugin import COMPLIANCE_COUNTERS, MetricsPlugin

if TYPE_CHECKING:  # pragma: no cover
    from ._settings import DEFAULT_BUCKETS, MetricsSettings, settings

_LAZY = {"DEFAULT_BUCKETS": "._settings", "MetricsSettings": "._settings", "settings": "._settings"}

__version__ = "0.1.0"

__all__ = [
    "COMPLIANCE_COUNTERS",
    "DEFAULT_BUCKETS",
    "MetricsPlugin",
    "MetricsSettings",
    "__version__",
    "settings",
]


def __getattr__(name: str) -> Any:
    # Entry points load this package on every PipelineManager(): the settings module (attrs
    # classes) is imported when one of its names is first used.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
