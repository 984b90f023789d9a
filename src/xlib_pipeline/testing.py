"""Helpers for testing pipelines, plugins and executors.

- :func:`isolated_manager` builds a manager that ignores installed plugins.
- :class:`RecordingPlugin` records every hook call it receives (thread-safe).
- :class:`ExecutorConformance` is a pytest mixin every executor should pass: subclass it,
  set ``executor`` (and optionally ``config``/``plugins``), and pytest collects its tests.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from ._manager import PipelineManager
from ._records import RunContext, TaskOutcome
from ._task import Pipeline, Task
from .hookspecs import hookimpl


def isolated_manager(
    config: Mapping[str, Any] | None = None, *, plugins: Iterable[object] = ()
) -> PipelineManager:
    """A manager with only the core and the given ``plugins`` (installed ones ignored)."""
    return PipelineManager(config, plugins=plugins, entry_points=False)


class RecordingPlugin:
    """A plugin that records ``(hook, details)`` for every observer hook call."""

    name = "recorder"

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def _add(self, hook: str, **details: Any) -> None:
        with self._lock:
            self.calls.append((hook, details))

    def names(self, hook: str) -> list[str]:
        """Task names (or pipeline names) seen by ``hook``, in call order."""
        return [d.get("task", d.get("pipeline", "")) for h, d in self.calls if h == hook]

    @hookimpl
    def before_pipeline(self, run: RunContext) -> None:
        self._add("before_pipeline", pipeline=run.pipeline_name, run_id=run.run_id)

    @hookimpl
    def after_pipeline(self, run: RunContext, result: Any) -> None:
        self._add("after_pipeline", pipeline=run.pipeline_name, status=result.status)

    @hookimpl
    def before_task(self, task: Task, run: RunContext, inputs: tuple[Any, ...]) -> None:
        self._add("before_task", task=task.name, inputs=inputs)

    @hookimpl
    def after_task(self, task: Task, run: RunContext, outcome: TaskOutcome) -> None:
        self._add("after_task", task=task.name, status=outcome.status.value, final=outcome.final)


def _pid(*_: Any) -> int:
    return os.getpid()


class ExecutorConformance:
    """Tests every executor must pass. Subclass with ``executor = "<name>"``."""

    executor: ClassVar[str] = "threads"
    config: ClassVar[Mapping[str, Any]] = {}
    plugins: ClassVar[tuple[object, ...]] = ()
    #: Whether task bodies run in another process than the driver.
    remote: ClassVar[bool] = False

    def make_manager(self) -> PipelineManager:
        """The manager the conformance tests use (override to add setup)."""
        return isolated_manager({"max_workers": 2, **self.config}, plugins=self.plugins)

    def run(self, pipeline: Pipeline) -> Any:
        with self.make_manager() as pm:
            return pm.execute_pipeline(pipeline, executor=self.executor)

    def test_values_flow_in_depends_on_order(self) -> None:
        """Upstream results arrive positionally, in depends_on order."""
        p = Pipeline("conformance_flow")
        p.add_task("a", lambda: 2)
        p.add_task("b", lambda: 5)
        p.add_task("c", lambda x, y: x * 10 + y, depends_on=["a", "b"])
        p.add_task("d", lambda x, y: (x, y), depends_on=["b", "a"])
        result = self.run(p)
        assert result.success, result.error
        assert result.final_result == {"c": 25, "d": (5, 2)}

    def test_closures_run(self) -> None:
        """Closures over local state are executed (sent by value to remote workers)."""
        factor = 7
        p = Pipeline("conformance_closure")
        p.add_task("a", lambda: [1, 2, 3])
        p.add_task("b", lambda xs: [x * factor for x in xs], depends_on=["a"])
        assert self.run(p).final_result == [7, 14, 21]

    def test_failure_keeps_type_and_traceback(self) -> None:
        """A failing task reports its exception type, the task name and a traceback."""

        def explode(_: Any) -> None:
            raise KeyError("missing-column-xyz")

        p = Pipeline("conformance_fail")
        p.add_task("a", lambda: 1)
        p.add_task("boom", explode, depends_on=["a"])
        p.add_task("after", lambda x: x, depends_on=["boom"])
        result = self.run(p)
        assert not result.success
        assert result.error.task == "boom"
        assert isinstance(result.error.cause, KeyError)
        assert "missing-column-xyz" in (result.error.traceback or "")
        assert result.tasks["after"].status == "upstream_failed"
        assert result.tasks["a"].status == "succeeded"

    def test_where_bodies_run(self) -> None:
        """Remote executors run bodies in other processes; local ones in the driver."""
        p = Pipeline("conformance_pid")
        p.add_task("pid", _pid)
        pid = self.run(p).final_result
        assert (pid != os.getpid()) is self.remote
