"""What runs on a Dask worker: the task function wrapped to report its traceback by value.

Imported on the workers (this package must be installed there, as it is in the image the
``kubernetes`` plugin renders and in local clusters, which share the driver's environment).

The function travels as cloudpickle bytes made once per function in the driver, and is
loaded inside the task on the worker. Two reasons:

* Dask pickles a task with the standard pickle first and keeps that (by-reference) pickle
  unless the object's own module is registered for pickling by value. The object it
  pickles is this wrapper (module ``xlib_pipeline_dask``), so a function from a file that
  ``xlib-pipeline run`` loaded (module ``xlib_pipeline_user_<stem>``, registered by value)
  would reach the worker by reference, where no such module exists. cloudpickle honours
  the registration.
* Loading inside the task turns any failure to rebuild the function on the worker (a
  module missing there, a version skew) into an ordinary task error the driver receives
  at once, instead of a worker that logs an error while the run waits for ever.
"""

from __future__ import annotations

import os
import socket
import traceback
from typing import Any

from xlib_pipeline import call_body


class WorkerLoadError(RuntimeError):
    """A Dask worker could not rebuild a task's function or arguments (raised on the
    worker; the driver turns it into :class:`xlib_pipeline.SerializationError`)."""


class ByValue:
    """An argument pickled with cloudpickle in the driver, loaded in the task on the worker
    (used for plain values when files are registered for pickling by value)."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def __reduce__(self) -> tuple[Any, ...]:
        return (ByValue, (self.payload,))


def _dumps(obj: Any) -> bytes:
    import cloudpickle

    return bytes(cloudpickle.dumps(obj, protocol=5))


def by_value(obj: Any) -> ByValue:
    """``obj`` as cloudpickle bytes, for :class:`RemoteCall` to load on the worker."""
    return ByValue(_dumps(obj))


def by_value_modules() -> bool:
    """Whether any module is registered for pickling by value (``xlib-pipeline run``)."""
    import sys

    cp = sys.modules.get("cloudpickle")  # nothing registered if it was never imported
    if cp is None:
        return False
    try:
        return bool(cp.list_registry_pickle_by_value())
    except Exception:  # pragma: no cover - cloudpickle < 2
        return False


class RemoteCall:
    """Call ``fn(*args)`` on a worker; on failure attach the formatted remote traceback.

    The text travels back with the exception (``__xlib_remote_traceback__``), which the core
    appends to the task's traceback (:func:`xlib_pipeline.remote_traceback`).
    """

    __slots__ = ("_fn", "_payload", "is_async", "task")

    def __init__(self, fn: Any, task: str, is_async: bool = False) -> None:
        self._fn = fn
        self._payload: bytes | None = None
        self.task = task
        self.is_async = is_async

    @property
    def fn(self) -> Any:
        """The task function (loaded from its bytes on first use on the worker)."""
        if self._fn is None:
            self._fn = self._load(self._payload, "its function")
        return self._fn

    def _load(self, payload: Any, what: str) -> Any:
        import pickle

        try:
            return pickle.loads(payload)
        except BaseException as exc:
            raise WorkerLoadError(
                f"task {self.task!r}: {_where()} could not load {what}: "
                f"{type(exc).__name__}: {exc}. Modules the task needs must be importable "
                "on the workers (install them in the worker image), unless they are files "
                "run by `xlib-pipeline run`, which travel by value"
            ) from None

    def payload(self) -> bytes:
        """The function as cloudpickle bytes (made once: a wrapper is cached per function)."""
        if self._payload is None:
            self._payload = _dumps(self._fn)
        return self._payload

    def __call__(self, *args: Any) -> Any:
        fn = self.fn
        if args and any(a.__class__ is ByValue for a in args):
            args = tuple(
                self._load(a.payload, f"argument {k + 1}") if a.__class__ is ByValue else a
                for k, a in enumerate(args)
            )
        try:
            # A coroutine function runs to completion on the worker (its own event loop).
            return call_body(self.task, fn, args, is_async=self.is_async)
        except BaseException as exc:
            where = _where()
            text = f"task {self.task!r} on {where}\n" + traceback.format_exc()
            try:
                exc.__xlib_remote_traceback__ = text  # type: ignore[attr-defined]
            except Exception:  # exceptions with __slots__ cannot carry it
                pass
            raise

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.payload(), self.task, self.is_async))

    def __repr__(self) -> str:
        return f"RemoteCall({self.task!r})"


def _rebuild(payload: bytes, task: str, is_async: bool) -> RemoteCall:
    call = RemoteCall(None, task, is_async)
    call._payload = payload
    return call


def _where() -> str:
    try:
        from distributed import get_worker

        addr = get_worker().address
    except Exception:
        addr = "?"
    return f"dask worker {addr} (pid {os.getpid()}, host {socket.gethostname()})"
