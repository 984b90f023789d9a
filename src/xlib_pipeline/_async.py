"""``async def`` tasks: detection, one event loop per run, and running a body to completion.

Local executors (inline, threads) hand coroutine tasks to the run's :class:`LoopThread`, a
thread of the run's own that runs one asyncio event loop: coroutines that are ready together
await concurrently there and never block a scheduler lane. Executors that run a body
elsewhere (worker processes, Dask) call :func:`call_body`, which runs the coroutine to
completion in that thread with :func:`asyncio.run`.
"""

from __future__ import annotations

import functools
import inspect
import sys
import threading
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .exceptions import LazyResultError, TaskTimeoutError

if TYPE_CHECKING:  # pragma: no cover
    import asyncio

#: Objects a plain (``def``) task must never return: work that was never done. asyncio is
#: imported only for coroutine tasks (it costs a third of ``import xlib_pipeline``), so
#: ``asyncio.Future`` joins the set once asyncio is imported (see :func:`lazy_types`): no
#: such future can exist before.
LAZY_TYPES: set[type] = {types.CoroutineType, types.GeneratorType, types.AsyncGeneratorType}


def lazy_types() -> set[type]:
    """:data:`LAZY_TYPES`, with ``asyncio.Future`` once asyncio is imported. The scheduler
    calls it when a run starts (and when a body runs through :func:`call_body`)."""
    if len(LAZY_TYPES) == 3:
        mod = sys.modules.get("asyncio")
        future = getattr(mod, "Future", None) if mod is not None else None
        if future is not None:
            LAZY_TYPES.add(future)
    return LAZY_TYPES


_FunctionType = types.FunctionType
_CO_COROUTINE = inspect.CO_COROUTINE
# ``inspect.markcoroutinefunction`` marks a plain function with ``_is_coroutine_marker``
# (``asyncio.coroutine`` used ``_is_coroutine``): such functions take the slow path.


def is_async_callable(fn: Any) -> bool:
    """Whether calling ``fn`` gives a coroutine to await: ``async def`` functions, also
    behind ``functools.partial``/``functools.wraps`` wrappers, and objects whose
    ``__call__`` is ``async def``."""
    if fn.__class__ is _FunctionType:
        extra = fn.__dict__
        if not extra or (
            "__wrapped__" not in extra
            and "_is_coroutine_marker" not in extra
            and "_is_coroutine" not in extra
        ):
            return bool(fn.__code__.co_flags & _CO_COROUTINE)  # a plain def: its code says
    seen = 0
    while isinstance(fn, functools.partial) and seen < 64:
        fn = fn.func
        seen += 1
    try:
        fn = inspect.unwrap(fn)
    except ValueError:  # pragma: no cover - a __wrapped__ cycle
        pass
    if inspect.iscoroutinefunction(fn):
        return True
    if isinstance(fn, (types.FunctionType, types.MethodType, types.BuiltinFunctionType, type)):
        return False
    call = type(fn).__dict__.get("__call__") if callable(fn) else None
    return call is not None and inspect.iscoroutinefunction(call)


def lazy_result_error(task: str, value: Any) -> LazyResultError:
    """The error for a plain task that returned a coroutine, generator or future."""
    kind = type(value).__name__
    if isinstance(value, types.CoroutineType):
        value.close()  # never awaited: close it so Python does not warn a second time
        hint = "declare the function with `async def` so the scheduler awaits it"
    elif isinstance(value, (types.GeneratorType, types.AsyncGeneratorType)):
        hint = "return a list (e.g. `list(...)`) rather than a generator"
    else:
        hint = "return the value itself, not a future of it"
    return LazyResultError(
        f"task {task!r} is a plain function that returned a {kind} object instead of a "
        f"value: {hint}",
        task=task,
    )


async def _awaited(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    res = fn(*args)
    if inspect.isawaitable(res):
        return await res
    return res


async def _body(
    task: str, fn: Callable[..., Any], args: tuple[Any, ...], timeout: float | None
) -> Any:
    if timeout is None:
        return await _awaited(fn, args)
    import asyncio

    cm = asyncio.timeout(timeout)
    try:
        async with cm:
            return await _awaited(fn, args)
    except TimeoutError:
        if cm.expired():
            raise TaskTimeoutError(
                f"task {task!r} timed out after {timeout:g}s; its coroutine was cancelled",
                task=task,
            ) from None
        raise


def call_body(
    task: str,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    *,
    is_async: bool,
    timeout: float | None = None,
) -> Any:
    """Run a task body to completion in this thread and return its value.

    A coroutine function runs on a fresh event loop (:func:`asyncio.run`); when this thread
    already runs a loop, on a helper thread instead. A plain function that returns a
    coroutine, generator or future raises :class:`LazyResultError` naming the task.
    Executors that run bodies away from the run's event loop (worker processes, Dask) use it.
    """
    if not is_async:
        out = fn(*args)
        if type(out) in lazy_types():
            raise lazy_result_error(task, out)
        return out
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_body(task, fn, args, timeout))
    box: list[tuple[bool, Any]] = []

    def target() -> None:
        try:
            box.append((True, asyncio.run(_body(task, fn, args, timeout))))
        except BaseException as exc:
            box.append((False, exc))

    t = threading.Thread(target=target, name=f"xlib-async-{task}", daemon=True)
    t.start()
    t.join()
    ok, value = box[0]
    if ok:
        return value
    raise value


class LoopThread:
    """One asyncio event loop in a thread of its own, for the coroutine tasks of one run.

    :meth:`submit` starts a coroutine task from any thread and calls ``done(ok, value)``
    in the loop thread when it ends; ``done`` must only hand the outcome over (the
    scheduler pushes it to its lanes), never block.
    """

    def __init__(self, name: str) -> None:
        import asyncio

        lazy_types()
        self.loop = asyncio.new_event_loop()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: dict[int, tuple[asyncio.TimerHandle, Callable[[], None]]] = {}
        self._next = 0
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        import asyncio

        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(
        self,
        task: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        timeout: float | None,
        done: Callable[[bool, Any], None],
    ) -> None:
        """Start ``fn(*args)`` on the loop; ``done(ok, value_or_exception)`` when it ends."""
        self.loop.call_soon_threadsafe(self._start, task, fn, args, timeout, done)

    def _start(
        self,
        task: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        timeout: float | None,
        done: Callable[[bool, Any], None],
    ) -> None:
        import asyncio

        t = self.loop.create_task(_body(task, fn, args, timeout), name=f"xlib-task-{task}")
        self._tasks.add(t)

        def finished(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if t.cancelled():
                done(False, asyncio.CancelledError(f"task {task!r} was cancelled"))
                return
            exc = t.exception()
            if exc is not None:
                done(False, exc)
            else:
                done(True, t.result())

        t.add_done_callback(finished)

    def later(self, delay: float, fn: Callable[[], None]) -> None:
        """Call ``fn()`` (in the loop thread) after ``delay`` seconds, or at :meth:`hurry`."""
        self.loop.call_soon_threadsafe(self._later, delay, fn)

    def _later(self, delay: float, fn: Callable[[], None]) -> None:
        key = self._next
        self._next += 1

        def fire() -> None:
            if self._timers.pop(key, None) is not None:
                fn()

        self._timers[key] = (self.loop.call_later(delay, fire), fn)

    def hurry(self) -> None:
        """Fire every pending :meth:`later` call now (the run is stopping)."""

        def run_all() -> None:
            timers, self._timers = self._timers, {}
            for handle, fn in timers.values():
                handle.cancel()
                fn()

        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(run_all)

    def cancel_all(self) -> None:
        """Cancel every coroutine task still running (``CancelledError`` inside each)."""

        def cancel() -> None:
            for t in list(self._tasks):
                t.cancel()

        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(cancel)

    def close(self, timeout: float = 5.0) -> None:
        """Cancel what still runs, stop the loop and join its thread."""
        if self.loop.is_closed():
            return
        import asyncio

        async def shutdown() -> None:
            pending = list(self._tasks)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=timeout)
            self.loop.stop()

        self.loop.call_soon_threadsafe(lambda: self.loop.create_task(shutdown()))
        self._thread.join(timeout + 1.0)
        if not self._thread.is_alive():
            self.loop.close()
