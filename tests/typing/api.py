"""Public-API usage that ``nox -s lint`` type-checks with mypy (strict).

Not collected by pytest (no test_ prefix): it exists so a change to a public signature
that breaks ordinary user code fails the type check.
"""

from __future__ import annotations

from typing import Any

from xlib_pipeline import (
    ConfigKey,
    Pipeline,
    PipelineManager,
    PipelineResult,
    RetryDecision,
    RunContext,
    Task,
    TaskOption,
    TaskOutcome,
    TaskResult,
    boolean,
    hookimpl,
    one_of,
)
from xlibrary.pipeline import Pipeline as GuidePipeline

p: Pipeline = Pipeline("typed")


@p.task("load")
def load() -> list[int]:
    return [1, 2, 3]


@p.task("total", depends_on=["load"], condition=lambda rows: bool(rows))
def total(rows: list[int]) -> int:
    return sum(rows)


class Plugin:
    name = "typed-plugin"

    @hookimpl
    def register_config_keys(self) -> list[ConfigKey]:
        return [ConfigKey(name="typed.flag", convert=boolean, default=False)]

    @hookimpl
    def register_task_options(self) -> list[TaskOption]:
        return [TaskOption(name="tier", convert=one_of("gold", "silver"))]

    @hookimpl
    def after_task(self, task: Task, run: RunContext, outcome: TaskOutcome) -> None:
        _ = (task.name, run.run_id, outcome.status, outcome.duration)

    @hookimpl
    def on_task_error(
        self, task: Task, run: RunContext, outcome: TaskOutcome
    ) -> RetryDecision | None:
        return RetryDecision(delay=0.1) if outcome.attempt < 2 else None


def run() -> None:
    with PipelineManager({"max_workers": 2}, plugins=[Plugin()]) as pm:
        result: PipelineResult = pm.execute_pipeline(p, parallel=True)
        first: TaskResult = result.tasks["load"]
        value: Any = result["final_result"]
        _ = (first.status, first.duration, value, result.get("success"), result.run_id)
    assert GuidePipeline is Pipeline
