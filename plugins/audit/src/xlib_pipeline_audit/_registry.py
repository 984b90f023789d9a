"""One writer object per trail file in a process, shared by every manager that names it.

Two objects appending to one file would fork the chain. Writers are synced at exit, and a
forked child gets its own file description (and the flock path).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
from typing import Any

from ._sink import FlockSink
from ._trail import AuditTrail, registry


def open_trail(path: str | os.PathLike[str], **settings: Any) -> AuditTrail:
    """The process-wide writer for ``path`` (opened on first use, shared afterwards).

    A second opener must ask for the same key and durability settings, else ConfigError.
    Call :meth:`AuditTrail.release` when done.
    """
    real = os.path.realpath(os.fspath(path))
    with registry.lock:
        trail = registry.open.get(real)
        if trail is not None and not trail.closed:
            trail._check_same(settings)
            trail._refs += 1
            return trail
        trail = AuditTrail(real, **settings)
        trail._refs = 1
        registry.open[real] = trail
        return trail


def _sync_all_at_exit() -> None:
    for trail in list(registry.open.values()):
        with contextlib.suppress(Exception):
            trail.close()


def _after_fork_in_child() -> None:
    registry.lock = threading.Lock()
    for trail in list(registry.open.values()):
        after_fork(trail)


def after_fork(trail: AuditTrail) -> None:
    """In a forked child: fresh locks and an own file description (flock needs one)."""
    trail._lock = threading.Lock()
    trail._head_lock = threading.Lock()
    trail._stop = threading.Event()
    trail._wake = threading.Event()
    trail._flusher = None
    trail._sink = FlockSink(trail)
    trail._unwritten = []  # the parent writes what it had
    fd = trail._fd
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
        trail._fd = None
        with contextlib.suppress(Exception):
            trail._fd = os.open(trail.path, os.O_RDWR | os.O_APPEND)
            trail._size = -1  # re-read the tail on the next append
        if trail._fd is not None and (trail.fsync != "never" or not trail.write_through):
            trail._start_flusher()


atexit.register(_sync_all_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
