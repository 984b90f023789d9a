"""The background flusher: fsync (``fsync: batch``) and the head anchor, off the writers' path."""

from __future__ import annotations

import errno
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING

from ._sink import FlockSink, GroupCommitSink

if TYPE_CHECKING:
    from ._trail import AuditTrail


def start_flusher(trail: AuditTrail) -> threading.Thread:
    """Start the thread that syncs the trail (fsync: batch) and moves its head anchor."""
    ref = weakref.ref(trail)
    stop, wake = trail._stop, trail._wake
    interval = trail.batch_interval if trail.batch_interval > 0 else None

    def loop() -> None:
        while True:
            wake.wait(interval)
            wake.clear()
            if stop.is_set():
                return
            current = ref()
            if current is None:
                return
            try:
                background_sync(current)
                sink = current._sink
                if sink.__class__ is GroupCommitSink and sink.inbox:
                    sink.flush()  # appended while this thread held the lock: write them now
            except Exception as exc:  # AuditTrail.sync raises it (the run's end)
                current._error = exc
            del current

    t = threading.Thread(target=loop, name=f"xlib-audit-sync:{trail.path.name}", daemon=True)
    t.start()
    return t


def background_sync(self: AuditTrail) -> None:
    """Flusher thread: fsync what is written so far and move the head anchor to it.

    The trail's lock is held only to read the chain's position, so writers never wait
    for the disk."""
    with self._lock:
        fd = self._fd
        if fd is None or isinstance(self._sink, FlockSink):
            if fd is not None and self._pending:
                with self._flocked():
                    self._sync_locked()
            return
        if isinstance(self._sink, GroupCommitSink):
            self._sink.write_waiting()
        if not self._pending:
            return
        (seq, last), size = self._written, self._size
        self._pending = 0
        self._last_sync = time.monotonic()
    if self.fsync == "batch":
        os.fdatasync(fd)
    self._write_head(seq, last, size)


def sync_error(trail: AuditTrail, exc: BaseException) -> Exception:
    """The error :meth:`AuditTrail.sync` raises once the flusher's ``fdatasync`` failed."""
    from ._trail import AuditTrailError

    if isinstance(exc, OSError) and exc.errno:
        what = f"{os.strerror(exc.errno)} (errno {errno.errorcode.get(exc.errno, '?')})"
    else:
        what = f"{type(exc).__name__}: {exc}"
    err = AuditTrailError(
        f"audit trail {trail.path}: the background fdatasync failed: {what}; records "
        "written since the last successful sync may not be on disk. Check the disk, "
        f"then run `xlib-pipeline audit verify {trail.path}`.",
        path=str(trail.path),
    )
    err.__cause__ = exc
    return err
