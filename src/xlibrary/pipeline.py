"""``from xlibrary.pipeline import ...``: the user guide's import path for xlib_pipeline."""

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
