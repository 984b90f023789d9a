"""The built-in executors pass the shared executor conformance suite."""

from __future__ import annotations

from xlib_pipeline.testing import ExecutorConformance


class TestInlineConformance(ExecutorConformance):
    """The inline executor."""

    executor = "inline"


class TestThreadsConformance(ExecutorConformance):
    """The thread executor."""

    executor = "threads"


class TestProcessesConformance(ExecutorConformance):
    """The process executor: bodies in warm worker processes."""

    executor = "processes"
    remote = True
