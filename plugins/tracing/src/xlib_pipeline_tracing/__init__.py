"""OpenTelemetry traces for xlib-pipeline (``xlib-pipeline-tracing``). See docs/monitoring.md."""

from __future__ import annotations

from ._plugin import TracingPlugin

__version__ = "0.1.0"

__all__ = ["TracingPlugin", "__version__"]
