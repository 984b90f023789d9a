"""Fallback strategies: what a task's ``fallback=`` option means and how it is resolved.

A task that fails for good (after its retries) and has a fallback ends ``fallback`` instead
of ``failed``: its output is the fallback's, its dependents run with it and the run can
succeed. The fallback is one of

* a value (wrap a string in :class:`FallbackValue`, since a bare string names a task);
* a callable receiving the exception, and the task's inputs when it accepts them;
* the name of another task of the pipeline, which then runs only as the fallback.

Failures a fallback never hides: refusals for security or compliance reasons, plugin
faults, cancellation and interrupts (they stay ``failed``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from ._graph import Plan, suggest
from ._task import Task
from .exceptions import (
    ComplianceError,
    DefinitionError,
    FallbackError,
    PluginError,
    RunCancelledError,
    SecurityError,
)

#: Errors a fallback never replaces: the task was refused or the run is stopping.
NEVER_FALLBACK: tuple[type[BaseException], ...] = (
    SecurityError,
    ComplianceError,
    PluginError,
    RunCancelledError,
)


@attrs.frozen
class FallbackValue:
    """A fallback value given explicitly: ``fallback=FallbackValue("unknown")``.

    Needed for strings (a bare string names a task) and for ``None``; any other value may be
    given as it is.
    """

    value: Any


@attrs.frozen
class Fallback:
    """A compiled fallback of one task. Exactly one of the three kinds is set."""

    kind: str  # "value" | "call" | "task"
    value: Any = None
    fn: Callable[..., Any] | None = None
    #: Whether the callable accepts the task's inputs after the exception.
    with_inputs: bool = False
    #: The index of the fallback task in the plan.
    target: int = -1

    def describe(self, plan: Plan) -> str:
        """What the audit trail records: the kind, and the fallback task's name."""
        if self.kind == "task":
            return f"task:{plan.names[self.target]}"
        if self.kind == "call":
            return "callable:" + getattr(self.fn, "__qualname__", type(self.fn).__name__)
        return "value"

    def resolve(self, task: Task, exc: BaseException, args: tuple[Any, ...]) -> Any:
        """The fallback output for ``exc`` (value and callable kinds); a callable that
        raises gives :class:`FallbackError` naming the task."""
        if self.kind == "value":
            return self.value
        assert self.fn is not None
        try:
            return self.fn(exc, *args) if self.with_inputs else self.fn(exc)
        except Exception as fb_exc:
            err = FallbackError(
                f"task {task.name!r} failed ({type(exc).__name__}: {exc}) and its fallback "
                f"{getattr(self.fn, '__qualname__', self.fn)!r} raised "
                f"{type(fb_exc).__name__}: {fb_exc}",
                task=task.name,
                cause=fb_exc,
                original=exc,
            )
            err.__cause__ = fb_exc
            raise err from fb_exc


def applies(exc: BaseException | None) -> bool:
    """Whether a fallback may replace a task that failed with ``exc``."""
    return isinstance(exc, Exception) and not isinstance(exc, NEVER_FALLBACK)


def _accepts_inputs(fn: Callable[..., Any], count: int) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    try:
        sig.bind(None, *([None] * count))
    except TypeError:
        pass
    else:
        return True
    try:
        sig.bind(None)
    except TypeError:
        raise DefinitionError(
            f"fallback callable {getattr(fn, '__qualname__', fn)!r} must accept the "
            f"exception (and optionally the task's {count} input(s)); its signature is {sig}"
        ) from None
    return False


def compile_fallbacks(p: Plan) -> tuple[tuple[Fallback | None, ...], dict[int, int]]:
    """Each task's :class:`Fallback` (``None`` when it has none) and the fallback tasks
    (target index -> the task it stands in for). Raises :class:`DefinitionError` naming
    the task for a fallback task that is unknown, used twice, has dependents or depends on
    the task it stands in for."""
    out: list[Fallback | None] = []
    targets: dict[int, int] = {}
    for i, t in enumerate(p.tasks):
        if "fallback" not in t.options:
            out.append(None)
            continue
        raw = t.options["fallback"]
        if isinstance(raw, FallbackValue):
            out.append(Fallback("value", value=raw.value))
        elif isinstance(raw, str):
            j = p.index.get(raw)
            if j is None:
                hint = suggest(raw, p.index)
                raise DefinitionError(
                    f"task {t.name!r}: fallback={raw!r} names no task of pipeline "
                    f"{p.pipeline_name!r}"
                    + (f"; did you mean {hint!r}?" if hint else "")
                    + "; to fall back to a string value, write "
                    f"fallback=FallbackValue({raw!r})",
                    task=t.name,
                )
            _check_target(p, i, j)
            if j in targets:
                raise DefinitionError(
                    f"task {t.name!r}: fallback task {raw!r} already stands in for "
                    f"{p.names[targets[j]]!r}; a fallback task serves one task",
                    task=t.name,
                )
            targets[j] = i
            out.append(Fallback("task", target=j))
        elif callable(raw):
            try:
                with_inputs = _accepts_inputs(raw, len(p.preds[i]))
            except DefinitionError as exc:
                raise DefinitionError(f"task {t.name!r}: {exc}", task=t.name) from None
            out.append(Fallback("call", fn=raw, with_inputs=with_inputs))
        elif raw is None:
            out.append(None)
        else:
            out.append(Fallback("value", value=raw))
    for j, i in targets.items():
        if out[j] is not None and out[j].kind == "task" and out[j].target == i:  # type: ignore[union-attr]
            raise DefinitionError(
                f"task {p.names[i]!r} and {p.names[j]!r} are each other's fallback",
                task=p.names[i],
            )
    return tuple(out), targets


def _ancestors(p: Plan, j: int) -> set[int]:
    seen: set[int] = set()
    stack: list[int] = list(p.preds[j])
    while stack:
        k = stack.pop()
        if k not in seen:
            seen.add(k)
            stack.extend(p.preds[k])
    return seen


def _check_target(p: Plan, i: int, j: int) -> None:
    name, target = p.names[i], p.names[j]
    if i == j:
        raise DefinitionError(f"task {name!r}: a task cannot be its own fallback", task=name)
    if p.succs[j]:
        deps: Sequence[str] = [p.names[s] for s in p.succs[j]]
        raise DefinitionError(
            f"task {name!r}: fallback task {target!r} has dependents ({', '.join(deps)}); "
            f"a fallback task runs only in place of {name!r}, so depend on {name!r} instead",
            task=name,
        )
    if i in _ancestors(p, j):
        raise DefinitionError(
            f"task {name!r}: fallback task {target!r} depends on {name!r}, so it could "
            "never run in its place",
            task=name,
        )
