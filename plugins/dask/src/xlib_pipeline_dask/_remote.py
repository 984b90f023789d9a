"""What runs on a Dask worker: the task function wrapped to report its traceback by value.

Imported on the workers (this package must be installed there, as it is in the image the
``kubernetes`` plugin renders and in local clusters, which share the driver's environment).
"""

from __future__ import annotations

import os
import socket
import traceback
from typing import Any

from xlib_pipeline import call_body


class RemoteCall:
    """Call ``fn(*args)`` on a worker; on failure attach the formatted remote traceback.

    The text travels back with the exception (``__xlib_remote_traceback__``), which the core
    appends to the task's traceback (:func:`xlib_pipeline.remote_traceback`).
    """

    __slots__ = ("fn", "is_async", "task")

    def __init__(self, fn: Any, task: str, is_async: bool = False) -> None:
        self.fn = fn
        self.task = task
        self.is_async = is_async

    def __call__(self, *args: Any) -> Any:
        try:
            # A coroutine function runs to completion on the worker (its own event loop).
            return call_body(self.task, self.fn, args, is_async=self.is_async)
        except BaseException as exc:
            where = _where()
            text = f"task {self.task!r} on {where}\n" + traceback.format_exc()
            try:
                exc.__xlib_remote_traceback__ = text  # type: ignore[attr-defined]
            except Exception:  # exceptions with __slots__ cannot carry it
                pass
            raise

    def __reduce__(self) -> tuple[Any, ...]:
        return (RemoteCall, (self.fn, self.task, self.is_async))

    def __repr__(self) -> str:
        return f"RemoteCall({self.task!r})"


def _where() -> str:
    try:
        from distributed import get_worker

        addr = get_worker().address
    except Exception:
        addr = "?"
    return f"dask worker {addr} (pid {os.getpid()}, host {socket.gethostname()})"
