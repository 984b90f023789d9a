"""What runs on a Dask worker: the task function wrapped to report its traceback by value.

Imported on the workers (this package must be installed there, as it is in the image the
``kubernetes`` plugin renders and in local clusters, which share the driver's environment).
"""

from __future__ import annotations

import os
import socket
import traceback
from typing import Any


class RemoteCall:
    """Call ``fn(*args)`` on a worker; on failure attach the formatted remote traceback.

    The text travels back with the exception (``__xlib_remote_traceback__``), which the core
    appends to the task's traceback (:func:`xlib_pipeline.remote_traceback`).
    """

    __slots__ = ("fn", "task")

    def __init__(self, fn: Any, task: str) -> None:
        self.fn = fn
        self.task = task

    def __call__(self, *args: Any) -> Any:
        try:
            return self.fn(*args)
        except BaseException as exc:
            where = _where()
            text = f"task {self.task!r} on {where}\n" + traceback.format_exc()
            try:
                exc.__xlib_remote_traceback__ = text  # type: ignore[attr-defined]
            except Exception:  # exceptions with __slots__ cannot carry it
                pass
            raise

    def __reduce__(self) -> tuple[Any, ...]:
        return (RemoteCall, (self.fn, self.task))

    def __repr__(self) -> str:
        return f"RemoteCall({self.task!r})"


def _where() -> str:
    try:
        from distributed import get_worker

        addr = get_worker().address
    except Exception:
        addr = "?"
    return f"dask worker {addr} (pid {os.getpid()}, host {socket.gethostname()})"
