"""``from xlibrary.pipeline import ...``: the user guide's import path for xlib_pipeline.

The names load on first use, as in :mod:`xlib_pipeline` itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xlib_pipeline import lazy_exports

if TYPE_CHECKING:
    from xlib_pipeline import (
        ComplianceError,
        Pipeline,
        PipelineError,
        PipelineManager,
        PipelineResult,
        ResourceLimitExceeded,
        SecurityError,
        Task,
        TaskResult,
    )

__all__ = [
    "ComplianceError",
    "Pipeline",
    "PipelineError",
    "PipelineManager",
    "PipelineResult",
    "ResourceLimitExceeded",
    "SecurityError",
    "Task",
    "TaskResult",
]

if not TYPE_CHECKING:  # mypy sees the names above, and flags a misspelt one
    __getattr__, __dir__ = lazy_exports(__name__, dict.fromkeys(__all__, "xlib_pipeline"))
