"""How chained records reach the trail file: one sink, chosen when the trail opens.

- :class:`GroupCommitSink` (default, one process): records join an inbox; whichever thread
  gets the trail's lock chains every waiting record and writes them all with one
  ``write(2)``, at once: no window. Only what arrives during a write forms the next one.
- :class:`WriteThroughSink` (``write_through: true`` or ``fsync: always``): each record is
  chained and written before ``append`` returns (``fsync: always`` syncs it too).
- :class:`FlockSink` (``multiprocess: true``, or once another writer is noticed): each
  append takes ``fcntl.flock``, re-reads the tail if another process appended, then writes.

``append(fields, wait=True)`` returns only once the record is in the file (``write(2)``
returned): the ``task.started`` record of a task is written before its body starts.
"""

from __future__ import annotations

import collections
import fcntl
import logging
import os
from typing import TYPE_CHECKING, Any

from ._canonical import GENESIS, record_hash, split_line
from ._segments import lock_current
from ._tail import drop_torn_tail, last_line

if TYPE_CHECKING:
    from ._render import Rendered
    from ._trail import AuditTrail

_log = logging.getLogger("xlib_pipeline.audit")


class GroupCommitSink:
    """Flat combining: never a window, one ``write(2)`` per group of waiting records.

    The inbox is a deque: any thread appends (atomic), only the holder of the trail's lock
    takes from it, so "not empty, then popleft" never races and no exception ends a drain."""

    name = "group-commit"

    def __init__(self, trail: AuditTrail) -> None:
        self.trail = trail
        self.inbox: collections.deque[dict[str, Any] | Rendered] = collections.deque()

    def append(self, fields: dict[str, Any] | Rendered, wait: bool) -> int | None:
        inbox = self.inbox
        inbox.append(fields)
        trail = self.trail
        lock = trail._lock
        # Waiting for the lock means: whoever holds it is writing, and by the time we hold
        # it our record is either in the file or still in the inbox, where we take it.
        got = lock.acquire() if wait else lock.acquire(blocking=False)
        while got:
            try:
                if trail._sink is not self:  # switched to flock meanwhile
                    self.drain_to(trail._sink)
                    return None
                trail._commit_waiting(inbox)  # write_waiting, one call fewer
            finally:
                lock.release()
            if not inbox:
                break
            got = lock.acquire(blocking=False)
        return None

    def write_waiting(self) -> None:
        """Chain and write every waiting record. Holds the trail's lock. A record that
        cannot be chained (not JSON data) is refused; the ones chained before it are
        written, or the chain would go on from hashes never written."""
        self.trail._commit_waiting(self.inbox)

    def drain_to(self, other: Any) -> None:
        """Hand records still waiting here to the sink that replaced this one."""
        inbox = self.inbox
        while inbox:
            other.append_locked(inbox.popleft())

    def flush(self) -> None:
        """Write every waiting record now, and those that arrive while this thread writes
        (their appenders found the lock taken and went on), as :meth:`append` does."""
        trail, inbox = self.trail, self.inbox
        if not inbox and not trail._unwritten:
            return  # taken by a writer holding the lock: in the file when it lets go
        lock = trail._lock
        lock.acquire()
        while True:
            try:
                if trail._sink is not self:
                    self.drain_to(trail._sink)
                    return
                self.write_waiting()
            finally:
                lock.release()
            if not inbox or not lock.acquire(blocking=False):
                return

    def pending(self) -> bool:
        return bool(self.inbox)


def hold_record(self: AuditTrail, fields: dict[str, Any] | Rendered) -> None:
    """Queue a record to go out with the next write (:meth:`AuditTrail.hold`).

    Group commit: the record joins the inbox without taking the lock, so whichever write
    comes next (the lane's next ``task.started``, any other thread's record, a flush, a
    sync, the flusher) carries it in the same ``write(2)``. The caller makes sure a write
    comes: the recorder flushes when its lane goes idle (``lane_idle``) and at the run's
    end. Other sinks (write-through, flock) append it at once."""
    sink = self._sink
    if sink.__class__ is not GroupCommitSink or self._fd is None:
        self.append(fields)
        return
    sink.inbox.append(fields)
    if self._sink is not sink:  # switched to flock meanwhile: hand it over now
        with self._lock:
            sink.drain_to(self._sink)


class WriteThroughSink:
    """One record, one ``write(2)`` (and one ``fdatasync`` under ``fsync: always``)."""

    name = "write-through"

    def __init__(self, trail: AuditTrail) -> None:
        self.trail = trail

    def append(self, fields: dict[str, Any], wait: bool) -> int | None:
        trail = self.trail
        with trail._lock:
            if trail._sink is not self:
                seq: int | None = trail._sink.append_locked(fields)
                return seq
            mine: int | None = self.append_locked(fields)
            return mine

    def append_locked(self, fields: dict[str, Any]) -> int | None:
        trail = self.trail
        if os.fstat(trail._fd_or_fail()).st_size != trail._size:
            switch_to_flock(trail)
            seq: int | None = trail._sink.append_locked(fields)
            return seq
        item = trail._chain(fields)
        if item is None:
            return None
        trail._write_records([item])
        written: int | None = item[2]
        return written

    def flush(self) -> None:
        with self.trail._lock:
            if self.trail._unwritten:
                self.trail._write_records([])

    def pending(self) -> bool:
        return False


class FlockSink:
    """Several processes appending to one file: ``flock`` around "read the tail, append"."""

    name = "flock"

    def __init__(self, trail: AuditTrail) -> None:
        self.trail = trail

    def append(self, fields: dict[str, Any], wait: bool) -> int | None:
        with self.trail._lock:
            return self.append_locked(fields)

    def append_locked(self, fields: dict[str, Any]) -> int | None:
        trail = self.trail
        fd = lock_current(trail)  # another process may have rotated the trail meanwhile
        try:
            if os.fstat(fd).st_size != trail._size or trail._size < 0:
                reload_tail(trail)
            item = trail._chain(fields)
            if item is None:
                return None
            trail._write_records([item])
            seq: int | None = item[2]
            return seq
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def flush(self) -> None:
        pass

    def pending(self) -> bool:
        return False


def reload_tail(self: AuditTrail) -> None:
    """Another process appended: learn the chain's new end from the last line (flock)."""
    fd = self._fd_or_fail()
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        size = drop_torn_tail(fd, self.path, size)
    if size == 0:
        seq, last = 0, GENESIS
    else:
        raw = last_line(fd, size)
        try:
            rec, given, body = split_line(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise self._fail(f"its last record is not intact ({exc})") from exc
        if not isinstance(rec.get("seq"), int) or record_hash(body, self._key) != given:
            raise self._fail("its last record does not match its hash (edited?)")
        seq, last = rec["seq"], given
    self._seq, self._prev, self._size = seq, last, size
    self._written = (seq, last)


def switch_to_flock(self: AuditTrail) -> None:
    """Someone else appended to the file: from now on take the cross-process path."""
    _log.warning(
        "audit.concurrent_writer_detected path=%s: switching to flock mode "
        "(set audit.multiprocess: true when several processes share a trail)",
        self.path,
    )
    fd = self._fd_or_fail()
    unwritten, self._unwritten = self._unwritten, []
    self._sink = FlockSink(self)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        reload_tail(self)
        for item in unwritten:  # chained on top of the other writer's records
            ev = item[4]
            if type(ev) is dict:
                ev.pop("hash", None)
            again = self._rechain(ev)
            self._write_records([again])
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
