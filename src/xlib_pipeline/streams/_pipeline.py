"""How a batch pipeline becomes a per-batch pipeline: the batch task, the output task."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import attrs

from .._task import Pipeline, Task
from ..exceptions import DefinitionError, EmptyPipelineError

#: The name of the task whose output is each micro-batch (given, never run).
BATCH_TASK = "stream.batch"


def _batch_placeholder() -> Any:  # pragma: no cover - always given as an input
    raise RuntimeError("the stream batch is given to each run, never computed")


def takes_batch(fn: Callable[..., Any]) -> bool:
    """Whether a root task's function takes one positional argument (the batch)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    try:
        sig.bind(None)
    except TypeError:
        return False
    return any(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
        for p in sig.parameters.values()
    )


def derive(
    pipeline: Pipeline,
    output_task: str | None,
    wrap: Callable[[Task], Task] | None = None,
) -> tuple[Pipeline, str, tuple[str, ...]]:
    """The per-batch pipeline: a given ``stream.batch`` task feeding every root task that
    takes one argument. Returns it, the output task's name and the fed roots."""
    if not isinstance(pipeline, Pipeline):
        raise DefinitionError(f"pm.stream expects a Pipeline, got {type(pipeline).__name__}")
    tasks = list(pipeline.tasks.values())
    if not tasks:
        raise EmptyPipelineError(pipeline.name)
    if BATCH_TASK in pipeline.tasks:
        raise DefinitionError(
            f"pipeline {pipeline.name!r}: the task name {BATCH_TASK!r} is reserved for streams",
            task=BATCH_TASK,
        )
    depended = {d for t in tasks for d in t.depends_on}
    leaves = [t.name for t in tasks if t.name not in depended]
    if output_task is None:
        if len(leaves) != 1:
            raise DefinitionError(
                f"pipeline {pipeline.name!r} has {len(leaves)} final tasks ({', '.join(leaves)}); "
                "a stream sends one task's output to its sink: pass output_task=NAME"
            )
        output_task = leaves[0]
    elif output_task not in pipeline.tasks:
        raise DefinitionError(
            f"output_task={output_task!r}: pipeline {pipeline.name!r} has no such task "
            f"(tasks: {', '.join(pipeline.tasks)})",
            task=output_task,
        )
    derived = Pipeline(pipeline.name, description=pipeline.description)
    table: dict[str, Task] = {BATCH_TASK: Task(name=BATCH_TASK, fn=_batch_placeholder)}
    fed: list[str] = []
    for t in tasks:
        new = t
        if not t.depends_on and takes_batch(t.fn):
            new = attrs.evolve(t, depends_on=(BATCH_TASK,))
            fed.append(t.name)
        if wrap is not None:
            new = wrap(new)
        table[t.name] = new
    if not fed:
        raise DefinitionError(
            f"pipeline {pipeline.name!r}: no root task takes the batch; give a task without "
            "depends_on one parameter (it receives each micro-batch as a list of records)"
        )
    derived._tasks.update(table)
    derived._touch()
    return derived, output_task, tuple(fed)
