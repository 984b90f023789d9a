"""How a batch pipeline becomes a per-batch pipeline: the batch task, the output task."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection
from typing import Any

import attrs

from .._context import call_spec
from .._task import Pipeline, Task, param_defaults
from ..exceptions import DefinitionError, EmptyPipelineError

#: The name of the task whose output is each micro-batch (given, never run).
BATCH_TASK = "stream.batch"


def _batch_placeholder() -> Any:  # pragma: no cover - always given as an input
    raise RuntimeError("the stream batch is given to each run, never computed")


def takes_batch(fn: Callable[..., Any], defaults: Collection[str] = ()) -> bool:
    """Whether a root task's function takes one positional argument (the batch), as the
    core calls a task with one upstream result: besides it, a parameter receiving the
    :class:`~xlib_pipeline.TaskContext` and params with a default (its own, or the
    pipeline's ``defaults``)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    if not any(p.kind in _POSITIONAL for p in sig.parameters.values()):
        return False
    spec, ok = call_spec(fn, 1)
    return ok and (spec is None or set(spec.required) <= set(defaults))


_POSITIONAL = (
    inspect.Parameter.POSITIONAL_ONLY,
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
    inspect.Parameter.VAR_POSITIONAL,
)


def _unfed(task: Task, defaults: Collection[str]) -> str | None:
    """Why a root task that does not take the batch cannot run in a stream (it needs
    arguments that no batch run gives: a stream passes no run params), else ``None``."""
    spec, ok = call_spec(task.fn, 0)
    if ok and (spec is None or set(spec.required) <= set(defaults)):
        return None
    name = getattr(task.fn, "__name__", "its function")
    return f"root task {task.name!r} takes {name}{inspect.signature(task.fn)}"


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
    # The declared params (and their defaults) apply to every batch's run.
    derived = Pipeline(pipeline.name, description=pipeline.description, params=pipeline.params)
    defaults = {*param_defaults(pipeline), "stream"}  # what every batch run's params hold
    table: dict[str, Task] = {BATCH_TASK: Task(name=BATCH_TASK, fn=_batch_placeholder)}
    fed: list[str] = []
    unfed: list[str] = []
    for t in tasks:
        new = t
        if not t.depends_on and takes_batch(t.fn, defaults):
            new = attrs.evolve(t, depends_on=(BATCH_TASK,))
            fed.append(t.name)
        elif not t.depends_on and (why := _unfed(t, defaults)) is not None:
            unfed.append(why)
        if wrap is not None:
            new = wrap(new)
        table[t.name] = new
    if unfed or not fed:
        raise DefinitionError(
            f"pipeline {pipeline.name!r}: "
            + (f"{'; '.join(unfed)}: " if unfed else "no root task takes the batch; ")
            + "a root task of a stream takes the batch (one parameter: each micro-batch as "
            "a list of records) or nothing; besides, only its TaskContext and params with a "
            "default (a stream's batch runs get no params of yours)"
        )
    derived._tasks.update(table)
    derived._touch()
    return derived, output_task, tuple(fed)
