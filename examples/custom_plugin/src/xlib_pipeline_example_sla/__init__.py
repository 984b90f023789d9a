"""xlib-pipeline-example-sla: report tasks that run longer than their SLA.

A complete, small example of an xlib-pipeline plugin (see docs/plugin-authoring.md).
"""

from __future__ import annotations

from ._plugin import (
    PLUGIN_NAME,
    SLA_RUN,
    Breach,
    SlaPlugin,
    SlaRecorder,
    SlaRun,
    default_report_file,
    read_report,
)

__version__ = "0.1.0"

__all__ = [
    "PLUGIN_NAME",
    "SLA_RUN",
    "Breach",
    "SlaPlugin",
    "SlaRecorder",
    "SlaRun",
    "__version__",
    "default_report_file",
    "read_report",
]
