"""What ``@pipeline.task`` returns to user code: the task's function behind a wrapper that
lets :func:`observe_direct_calls` observers see direct calls (calls made by user code, not
by a run). Split from :mod:`._task`."""

from __future__ import annotations

import functools
import threading
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:  # pragma: no cover
    from ._task import Task

F = TypeVar("F", bound=Callable[..., Any])

#: Attribute naming the function a task really runs when a decorator wrapped it.
TASK_FN_ATTR = "__xlib_pipeline_task_fn__"


class CallObserver(Protocol):
    """Sees direct calls of task functions (calls made by user code, not by a run).

    ``begin`` is called before the function runs and returns a token; ``end`` gets that
    token and either the result or the exception. Register with
    :func:`observe_direct_calls`; the audit plugin does under ``audit_everything: true``.
    """

    def begin(
        self, pipeline: str, task: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Any
    ) -> Any: ...

    def end(self, token: Any, result: Any, error: BaseException | None) -> None: ...


_observers: tuple[CallObserver, ...] = ()
_observers_lock = threading.Lock()


def observe_direct_calls(observer: CallObserver) -> Callable[[], None]:
    """Have ``observer`` see every direct call of a function decorated with
    ``@pipeline.task``; returns a function that stops it. Calls made by runs (the scheduler
    calls the undecorated function) are not direct calls."""
    global _observers
    with _observers_lock:
        _observers = (*_observers, observer)

    def remove() -> None:
        global _observers
        with _observers_lock:
            _observers = tuple(o for o in _observers if o is not observer)

    return remove


def _begin(pipeline: str, task: Task, fn: Any, args: Any, kwargs: Any) -> list[Any]:
    return [(o, o.begin(pipeline, task.name, fn, args, kwargs)) for o in _observers]


def _end(tokens: list[Any], result: Any, error: BaseException | None) -> None:
    for observer, token in tokens:
        observer.end(token, result, error)


def _direct_calls(fn: F, pipeline: str, task: Task) -> F:
    """What ``@pipeline.task`` returns: ``fn`` itself to the scheduler (the task keeps the
    original), and to user code a wrapper that lets :func:`observe_direct_calls` observers
    see direct calls (a plain call when there are none)."""
    if not isinstance(fn, types.FunctionType) and not hasattr(fn, TASK_FN_ATTR):
        return fn  # callable objects, partials, builtins: returned as given
    inner = fn

    if task.is_async:

        async def direct_async(*args: Any, **kwargs: Any) -> Any:
            if not _observers:
                return await inner(*args, **kwargs)
            tokens = _begin(pipeline, task, inner, args, kwargs)
            try:
                out = await inner(*args, **kwargs)
            except BaseException as exc:
                _end(tokens, None, exc)
                raise
            _end(tokens, out, None)
            return out

        wrapper: Any = direct_async
    else:

        def direct(*args: Any, **kwargs: Any) -> Any:
            if not _observers:
                return inner(*args, **kwargs)
            tokens = _begin(pipeline, task, inner, args, kwargs)
            try:
                out = inner(*args, **kwargs)
            except BaseException as exc:
                _end(tokens, None, exc)
                raise
            _end(tokens, out, None)
            return out

        wrapper = direct
    _copy_identity(wrapper, fn)
    wrapper.__dict__.setdefault(TASK_FN_ATTR, task.fn)
    # Pickling by reference (worker processes, Dask) looks the task's function up by its
    # qualified name, which now finds this wrapper: point the name through it.
    original = task.fn
    qual = getattr(original, "__qualname__", "")
    if isinstance(original, types.FunctionType) and "<locals>" not in qual and original is fn:
        original.__qualname__ = qual + ".__wrapped__"
    return wrapper  # type: ignore[no-any-return]


def _copy_identity(wrapper: Any, fn: Any) -> None:
    """What :func:`functools.update_wrapper` does for a plain function, without its
    attribute-by-attribute ``getattr``/``try`` loop (the decorator runs once per task)."""
    if fn.__class__ is not types.FunctionType:
        functools.update_wrapper(wrapper, fn)
        return
    wrapper.__module__ = fn.__module__
    wrapper.__name__ = fn.__name__
    wrapper.__qualname__ = fn.__qualname__
    wrapper.__doc__ = fn.__doc__
    wrapper.__annotations__ = fn.__annotations__
    # One new __dict__ (the wrapper is a fresh function: its own is empty).
    wrapper.__dict__ = {**fn.__dict__, "__wrapped__": fn}
