"""Prometheus metrics for xlib-pipeline runs (``xlib-pipeline-metrics``).

Turned on by config ``metrics``: ``{'port': 9464}`` serves ``/metrics`` from the driver,
``{'pushgateway': URL}`` pushes at each run end, ``{'textfile': 'x.prom'}`` writes a file for
node_exporter's textfile collector. See docs/monitoring.md.
"""

from __future__ import annotations

from ._plugin import COMPLIANCE_COUNTERS, MetricsPlugin
from ._settings import DEFAULT_BUCKETS, MetricsSettings, settings

__version__ = "0.1.0"

__all__ = [
    "COMPLIANCE_COUNTERS",
    "DEFAULT_BUCKETS",
    "MetricsPlugin",
    "MetricsSettings",
    "__version__",
    "settings",
]
