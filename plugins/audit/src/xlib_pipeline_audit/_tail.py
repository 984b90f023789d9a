"""Reading a trail's chain: torn-tail recovery and the record-by-record scan.

:func:`scan` is the one walk over a trail's records, used by the writer when it opens a
trail (it refuses to append after damage anywhere in the file, not only at the end) and by
``audit verify``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import attrs

from ._canonical import GENESIS, record_hash, split_line

TORN_SUFFIX = ".torn"

_log = logging.getLogger("xlib_pipeline.audit")


def drop_torn_tail(fd: int, path: Path, size: int) -> int:
    """A crash mid-write can leave a last line without newline: move it to ``<trail>.torn``.

    Returns the new size of the file (the end of its last complete line).
    """
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    chunk = 65536
    while True:
        start = max(0, size - chunk)
        data = os.pread(fd, size - start, start)
        nl = data.rfind(b"\n")
        if nl != -1 or start == 0:
            break
        chunk *= 4
    keep = start + nl + 1 if nl != -1 else 0
    torn = data[nl + 1 :] if nl != -1 else data
    torn_path = path.with_name(path.name + TORN_SUFFIX)
    fd_torn = os.open(torn_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd_torn, torn + b"\n")
    finally:
        os.close(fd_torn)
    os.ftruncate(fd, keep)
    os.fsync(fd)
    _log.warning("audit.torn_record_moved path=%s bytes=%d to=%s", path, len(torn), torn_path)
    return keep


@attrs.frozen(kw_only=True)
class Scan:
    """What :func:`scan` found: the intact chain's end, and the first problem if any."""

    records: int
    last_seq: int
    last_hash: str
    #: record seq -> (hash, end offset), for the seqs asked for.
    marks: dict[int, tuple[str, int]]
    line: int | None = None
    seq: int | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


def scan(data: bytes, key: bytes | None, *, mark: frozenset[int] = frozenset()) -> Scan:
    """Check every record of ``data`` (a whole trail): seq, prev and hash, in order."""
    marks: dict[int, tuple[str, int]] = {}
    records = 0
    last_seq = 0
    last_hash = GENESIS
    expected = 1
    pos = 0
    lines = data.split(b"\n")
    complete = lines[:-1]
    if complete and b'"audit.segment_started"' in complete[0]:
        # A rotated trail's segment continues the chain of the one before it: its first
        # record says where (the series check verifies that the link is true).
        try:
            first, _, _ = split_line(complete[0].decode("utf-8"))
            if first.get("action") == "audit.segment_started" and isinstance(first.get("seq"), int):
                expected = first["seq"]
                last_seq = expected - 1
                last_hash = str(first.get("prev"))
        except (UnicodeDecodeError, ValueError):
            pass  # reported as a bad first line below

    def bad(lineno: int, reason: str) -> Scan:
        return Scan(
            records=records,
            last_seq=last_seq,
            last_hash=last_hash,
            marks=marks,
            line=lineno,
            seq=expected,
            reason=reason,
        )

    for lineno, raw in enumerate(complete, 1):
        pos += len(raw) + 1
        if not raw:
            return bad(lineno, "empty line (a record was cut or a newline inserted)")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return bad(lineno, "a byte of the record is not UTF-8 (a byte was changed)")
        try:
            rec, given, body = split_line(text)
        except ValueError as exc:
            return bad(lineno, str(exc))
        seq = rec.get("seq")
        if seq != expected:
            return bad(
                lineno,
                f"expected seq {expected}, found {seq!r}: records were deleted, inserted or "
                "reordered",
            )
        if rec.get("prev") != last_hash:
            return bad(
                lineno,
                "prev does not match the hash of the previous record (a record was replaced)",
            )
        if record_hash(body, key) != given:
            hint = " or the key is wrong" if key is not None else ""
            return bad(lineno, f"hash mismatch: the record was edited{hint}")
        records += 1
        last_seq, last_hash = seq, given
        if seq in mark:
            marks[seq] = (given, pos)
        expected += 1
    if lines[-1]:
        return bad(
            len(complete) + 1,
            "incomplete last record (no newline): the trail was truncated or a write was torn",
        )
    return Scan(records=records, last_seq=last_seq, last_hash=last_hash, marks=marks)


def read_all(fd: int, size: int) -> bytes:
    """The first ``size`` bytes of the file open as ``fd``."""
    parts = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(size - offset, 1 << 24), offset)
        if not chunk:
            break
        parts.append(chunk)
        offset += len(chunk)
    return b"".join(parts)


def last_line(fd: int, size: int) -> bytes:
    """The last complete line (without its newline) of a file ending in a newline."""
    chunk = 4096
    while True:
        start = max(0, size - chunk)
        data = os.pread(fd, size - start, start)
        nl = data.rfind(b"\n", 0, len(data) - 1)
        if nl != -1:
            return data[nl + 1 : -1]
        if start == 0:
            return data[:-1]
        chunk *= 8
