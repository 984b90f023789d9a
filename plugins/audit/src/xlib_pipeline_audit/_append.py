"""The trail's write path under its lock: chain waiting records, then one ``write(2)``.

These are :class:`._trail.AuditTrail` methods (bound in its class body), kept here so the
hot path reads in one place. A pre-rendered record (:mod:`._render`) costs one
concatenation, one encode and the hash (SHA-256, or HMAC-SHA256 from precomputed pads)
here; a dict record goes through the processors, the chain hasher and the line renderer.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import operator
import os
from typing import TYPE_CHECKING, Any

from ._sink import FlockSink, switch_to_flock

if TYPE_CHECKING:
    from ._render import Rendered
    from ._trail import AuditTrail, Chained

_sha256 = hashlib.sha256
_write = os.write
_lseek = os.lseek
_SEEK_END = os.SEEK_END
_line = operator.itemgetter(0)  # a chained record's line


def chain_rendered(self: AuditTrail, rendered: Rendered) -> Chained:
    """Chain one pre-rendered record at the chain's end: its line, seq and hash."""
    batch: list[Chained] = []
    chain_waiting(self, collections.deque((rendered,)), batch)
    return batch[0]


def chain_waiting(self: AuditTrail, inbox: collections.deque[Any], batch: list[Chained]) -> None:
    """Chain every record waiting in ``inbox`` into ``batch``, in order. Holds the lock.

    A record that cannot be chained (not JSON data, not Unicode text) raises; the ones
    before it are in ``batch`` and the chain's end is theirs."""
    pads = self._hmac
    processors = self._processors
    seq, prev = self._seq, self._prev
    try:
        while inbox:
            rec = inbox.popleft()
            if type(rec) is not list or processors:
                self._seq, self._prev = seq, prev
                item = self._chain(rec)
                seq, prev = self._seq, self._prev
                if item is not None:
                    batch.append(item)
                continue
            seq += 1
            try:
                data = (rec[0] + prev + rec[1] + str(seq) + rec[2]).encode()
            except UnicodeEncodeError as exc:  # a lone surrogate in a string value
                seq -= 1
                raise _not_text(self, rec, exc) from exc
            if pads is None:
                prev = _sha256(data).hexdigest()
            else:
                inner = pads[0].copy()
                inner.update(data)
                outer = pads[1].copy()
                outer.update(inner.digest())
                prev = outer.hexdigest()
            batch.append((data[:-1] + b',"hash":"' + prev.encode() + b'"}\n', None, seq, prev, rec))
    finally:
        self._seq, self._prev = seq, prev


def commit_waiting(self: AuditTrail, inbox: collections.deque[Any]) -> None:
    """Chain and write every waiting record with one ``write(2)``. Holds the lock.

    The hot path of :class:`._sink.GroupCommitSink`: :func:`chain_waiting` and
    :func:`write_records` fused for the common case (pre-rendered records, no processor,
    no destination, nothing kept from a failed write, no test hook, ``fsync`` not
    ``always``). Anything else, or the first record that is not pre-rendered or not
    Unicode text, goes to those two with what this loop chained so far, so the bytes, the
    errors and the order are theirs."""
    fd = self._fd
    if (
        fd is None
        or self._processors
        or self._destinations
        or self._unwritten
        or self.write_hook is not None
        or self.fsync == "always"
    ):
        commit_general(self, inbox)
        return
    pads = self._hmac
    seq, prev = self._seq, self._prev
    chained: list[Chained] = []
    add = chained.append
    popleft = inbox.popleft
    if pads is not None:
        inner_copy, outer_copy = pads[0].copy, pads[1].copy
    while inbox:
        rec = inbox[0]
        if type(rec) is not list:
            break
        try:
            data = (rec[0] + prev + rec[1] + str(seq + 1) + rec[2]).encode()
        except UnicodeEncodeError:
            break  # chain_waiting names it
        popleft()
        seq += 1
        if pads is None:
            prev = _sha256(data).hexdigest()
        else:
            inner = inner_copy()
            inner.update(data)
            outer = outer_copy()
            outer.update(inner.digest())
            prev = outer.hexdigest()
        add((data[:-1] + b',"hash":"' + prev.encode() + b'"}\n', None, seq, prev, rec))
    if not chained:
        commit_general(self, inbox)
        return
    self._seq, self._prev = seq, prev
    if inbox:  # something the general path must chain: one write for all, in order
        try:
            chain_waiting(self, inbox, chained)
        except BaseException:
            write_records(self, chained)
            raise
        write_records(self, chained)
        return
    # write_records for this case: the foreign-writer check, then one write(2).
    if _lseek(fd, 0, _SEEK_END) != self._size:
        write_records(self, chained)  # it switches to flock and rechains them
        return
    data = b"".join(map(_line, chained)) if len(chained) > 1 else chained[0][0]
    try:
        written = _write(fd, data)
    except OSError as exc:  # nothing of it was written
        self._unwritten = chained  # never dropped: written again before anything newer
        raise _write_error(self, exc) from exc
    if written != len(data):
        try:
            write_all(self, fd, data, written)
        except BaseException:
            self._unwritten = chained
            raise
    self._size += len(data)
    self._written = (seq, prev)
    pending = self._pending = self._pending + len(chained)
    if self.fsync == "batch" and pending >= self.batch_size and not self._wake.is_set():
        self._wake.set()  # the flusher syncs off the writers' path (once, not per write)


def commit_general(self: AuditTrail, inbox: collections.deque[Any]) -> None:
    """:func:`chain_waiting` then :func:`write_records` (records chained before one that is
    refused are written: the chain never goes on from hashes never written)."""
    batch: list[Chained] = []
    try:
        chain_waiting(self, inbox, batch)
    except BaseException:
        if batch:
            write_records(self, batch)
        raise
    if batch or self._unwritten:
        write_records(self, batch)


def _not_text(self: AuditTrail, rec: Rendered, exc: Exception) -> Exception:
    from ._trail import AuditTrailError

    return AuditTrailError(
        f"audit record {rec[0][:60]!r}... holds a string that is not Unicode text ({exc})",
        path=str(self.path),
    )


def write_records(self: AuditTrail, batch: list[Chained]) -> None:
    """Write records (after any kept from a failed write) with one write(2). Holds lock."""
    fd = self._fd
    if fd is None:
        fd = self._fd_or_fail()
    if self._unwritten:
        batch = self._unwritten + batch
    if not batch:
        return
    # The file's end (lseek: cheaper than fstat, and every read here is a pread): another
    # writer's records mean our chain position is stale.
    if os.lseek(fd, 0, os.SEEK_END) != self._size and not isinstance(self._sink, FlockSink):
        self._unwritten = batch
        switch_to_flock(self)
        return
    data = b"".join([item[0] for item in batch]) if len(batch) > 1 else batch[0][0]
    try:
        if self.write_hook is not None:
            self._write_all(fd, data)
        else:
            try:
                written = os.write(fd, data)
            except OSError as exc:  # nothing of it was written
                raise _write_error(self, exc) from exc
            if written != len(data):
                self._write_all(fd, data, written)
    except BaseException:
        self._unwritten = batch  # never dropped: written again before anything newer
        raise
    self._unwritten = []
    self._size += len(data)
    last = batch[-1]
    self._written = (last[2], last[3])
    if self.fsync == "always":
        os.fdatasync(fd)
    self._pending += len(batch)
    if self._destinations:
        for item in batch:
            line = item[1]
            if line is None:
                line = item[0][:-1].decode("utf-8")
            for dest in self._destinations:
                dest(line)
    if self.fsync == "batch" and self._pending >= self.batch_size and not self._wake.is_set():
        self._wake.set()  # the flusher syncs off the writers' path (once, not per write)


def write_all(self: AuditTrail, fd: int, data: bytes, written: int = 0) -> None:
    """Append ``data`` whole (``written`` bytes of it are in the file already: a short
    write); on an error cut the file back so no half record stays, and raise
    AuditTrailError."""
    try:
        if not written and self.write_hook is not None:
            self.write_hook(data)
        while written < len(data):
            written += os.write(fd, data[written:])
    except OSError as exc:
        if written:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self._size)
        raise _write_error(self, exc) from exc


def _write_error(self: AuditTrail, exc: OSError) -> Exception:
    from ._trail import AuditTrailError

    code = os.strerror(exc.errno) if exc.errno else str(exc)
    name = errno.errorcode.get(exc.errno or 0, "?")
    return AuditTrailError(
        f"cannot append to audit trail {self.path}: {code} (errno {name}); the "
        "records were kept and are written first once the fault is gone",
        path=str(self.path),
    )
