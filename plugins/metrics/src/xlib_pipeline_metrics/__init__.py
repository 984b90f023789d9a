"""Prometheus metrics for xlib-pipeline runs (``xlib-pipeline-metrics``).

Turned on by config ``metrics``: ``{'port': 9464}`` serves ``/metrics`` from the driver,
``{'pushgateway': URL}`` pushes at each run end, ``{'textfile': 'x.prom'}`` writes a file for
node_exporter's textfile collector. See docs/monitoring.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xlib_pipeline import lazy_exports

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


# Entry points load this package on every PipelineManager(): its submodules (and their
# dependencies) are imported when a name is first used, not before.
if not TYPE_CHECKING:  # mypy sees the names above, and flags a misspelt one
    __getattr__, __dir__ = lazy_exports(__name__, _LAZY)
