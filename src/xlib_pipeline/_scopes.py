"""Task scopes: context a plugin wants around a task's function body wherever it runs.

A plugin's ``task_scope`` hook answers, per attempt, a *scope*: a picklable callable that
returns a context manager (``functools.partial(module_function, carrier)``, say). The
scheduler enters the scopes around the body when it runs in the driver (``inline``,
``threads``); an executor that runs bodies elsewhere reads :func:`current_task_scopes` and
enters them there (the ``processes`` executor in its worker, the Dask executor on the Dask
worker) with :func:`run_in_scopes`. The tracing plugin uses it to make the task's span the
parent of spans user code opens, in every process.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ._records import Executor, Isolation, RunContext
    from ._task import Task

TaskScope = Callable[[], contextlib.AbstractContextManager[Any]]

_current: contextvars.ContextVar[tuple[TaskScope, ...]] = contextvars.ContextVar(
    "xlib_pipeline_task_scopes", default=()
)


def current_task_scopes() -> tuple[TaskScope, ...]:
    """The scopes of the attempt being started in this lane (empty outside one)."""
    return _current.get()


def run_in_scopes(scopes: tuple[TaskScope, ...], fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn(*args)`` inside every scope (entered in order, left in reverse)."""
    if not scopes:
        return fn(*args)
    if len(scopes) == 1:  # the usual case (tracing): no ExitStack (~5 µs per attempt)
        with scopes[0]():
            return fn(*args)
    with contextlib.ExitStack() as stack:
        for scope in scopes:
            stack.enter_context(scope())
        return fn(*args)


@contextlib.contextmanager
def scoped(scopes: tuple[TaskScope, ...], *, enter: bool) -> Any:
    """Make ``scopes`` current for executors (and enter them here when ``enter``)."""
    token = _current.set(scopes)
    try:
        if enter and len(scopes) == 1:
            with scopes[0]():
                yield
        elif enter:
            with contextlib.ExitStack() as stack:
                for scope in scopes:
                    stack.enter_context(scope())
                yield
        else:
            yield
    finally:
        _current.reset(token)


def scoped_call(
    scopes: tuple[TaskScope, ...],
    task: Task,
    args: tuple[Any, ...],
    executor: Executor,
    run: RunContext,
    isolation: Isolation | None,
    timeout: float | None,
    direct: bool,
    local: bool,
) -> Any:
    """Call an attempt's body inside the plugins' task scopes: entered here for a body that
    runs in this lane (``local``), made current for the executor to ship otherwise."""
    if direct:
        return run_in_scopes(scopes, task.fn, *args)
    with scoped(scopes, enter=local):
        return executor.call(task, args, run=run, isolation=isolation, timeout=timeout)
