"""Trail rotation: a series of segment files that form one hash chain.

The trail file (``audit.jsonl``) is always the *active* segment. Rotation (``audit.max_bytes``
or ``audit.rotate: hourly | daily``) happens at a sync, under the writer's lock (and
``flock``): the active file, synced and anchored, is renamed to the next closed segment
(``audit.000001.jsonl``, ``audit.000002.jsonl``, ...; its head anchor beside it names it), and a
new active file starts with an ``audit.segment_started`` record. That record continues the
chain (``seq`` and ``prev`` follow the closed segment's last record) and names the segment it
follows, so every segment verifies on its own and the series verifies as one chain:
a missing, reordered or replaced segment is reported by name.

Crash safety and other processes: the active name never goes missing. The active file is
first hard-linked under the closed segment's name (its anchor already written beside it); the
next active file is written whole under a temporary name (``audit.jsonl.next``: its segment
record, synced, and the active head anchor) and then renamed over the active name. A process
that opened the old file waits on its ``flock`` until the rotating one lets go of it, then moves
to the new file. A trail whose active file is still the last closed segment (the same inode: a
crash between the link and the rename) finishes the rotation on open.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from ._head import head_path, write_head
from ._tail import scan

if TYPE_CHECKING:
    from ._trail import AuditTrail

SEGMENT_ACTION = "audit.segment_started"
ROTATE_POLICIES = ("never", "hourly", "daily")
_PERIOD = {"hourly": 3600, "daily": 86400}


def segment_path(path: Path, n: int) -> Path:
    """The name of closed segment ``n`` of the trail at ``path``."""
    return path.with_name(f"{path.stem}.{n:06d}{path.suffix}")


def segments(path: Path) -> list[tuple[int, Path]]:
    """The closed segments of the trail at ``path``, oldest first (number, file)."""
    pattern = re.compile(re.escape(path.stem) + r"\.(\d{6})" + re.escape(path.suffix) + "$")
    found: list[tuple[int, Path]] = []
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    for name in names:
        m = pattern.match(name)
        if m:
            found.append((int(m.group(1)), path.with_name(name)))
    return sorted(found)


def period_of(policy: str, when: float) -> int | None:
    """The UTC hour or day ``when`` falls in (``None`` when rotation by time is off)."""
    length = _PERIOD.get(policy)
    return None if length is None else int(when // length)


def first_record_time(data: bytes) -> float | None:
    """The ``ts`` of the first record of ``data`` as epoch seconds (``None``: no record)."""
    import datetime as _dt
    import json

    nl = data.find(b"\n")
    if nl <= 0:
        return None
    try:
        ts = json.loads(data[:nl]).get("ts")
        return _dt.datetime.fromisoformat(str(ts)).timestamp()
    except (ValueError, AttributeError, TypeError):
        return None


def due(trail: AuditTrail, now: float | None = None) -> bool:
    """Whether the active segment should be closed at this sync."""
    if trail.max_bytes is not None and trail._size >= trail.max_bytes:
        return True
    period = period_of(trail.rotate, time.time() if now is None else now)
    return period is not None and trail._segment_period not in (None, period)


def rotate(trail: AuditTrail) -> Path:
    """Close the active segment (synced and anchored by the caller) and start the next one.

    Holds the trail's lock (and its ``flock`` when several processes write). Returns the
    closed segment's path.
    """
    fd = trail._fd_or_fail()
    seq, last = trail._written
    closed = segment_path(trail.path, (segments(trail.path) or [(0, trail.path)])[-1][0] + 1)
    # 1. The closed segment's own anchor, naming it, before it gets its name.
    write_head(
        head_path(closed),
        trail=closed.name,
        seq=seq,
        last_hash=last,
        size=trail._size,
        key=trail._key,
        sync=True,
    )
    # 2. The closed segment gets its name; the active name still points at it.
    try:
        os.link(trail.path, closed)
    except OSError as exc:
        if trail.multiprocess:
            raise trail._fail(
                f"cannot hard-link it to {closed.name} to rotate it ({exc.strerror}); "
                "several processes can rotate a trail only on a file system with hard links"
            ) from exc
        os.rename(trail.path, closed)  # one process: nobody can open the name meanwhile
    _sync_dir(trail.path.parent)
    # 3. The next active file, written whole, then renamed over the active name.
    start(trail, previous=closed, old_fd=fd, lock=trail._sink.name == "flock")
    return closed


def start(trail: AuditTrail, *, previous: Path, old_fd: int | None, lock: bool) -> None:
    """Write the next active file under a temporary name (its ``audit.segment_started``
    record, synced, and the active head anchor), rename it over the active name, then close
    ``old_fd``. With ``lock`` the new file is ``flock``-ed before anyone can see it (the
    caller unlocks ``trail._fd``). Holds the trail's lock."""
    tmp = trail.path.with_name(trail.path.name + ".next")
    new_fd = os.open(tmp, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o600)
    if lock:
        fcntl.flock(new_fd, fcntl.LOCK_EX)
    trail._fd = new_fd
    trail._size = 0
    trail._head_seq = -1
    seq, last = trail._written
    item = trail._chain(
        {
            "action": SEGMENT_ACTION,
            "outcome": "success",
            "previous_segment": previous.name,
            "previous_seq": seq,
            "previous_hash": last,
        }
    )
    assert item is not None
    trail._write_records([item])
    os.fdatasync(new_fd)
    trail._write_head(item[2], item[3], trail._size)
    os.rename(tmp, trail.path)
    _sync_dir(trail.path.parent)
    if old_fd is not None:
        os.close(old_fd)  # processes waiting on the old file's flock now move to the new one
    trail._segment_period = period_of(trail.rotate, time.time())


def same_file(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is the file named ``path`` now."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_ino, st.st_dev) == (mine.st_ino, mine.st_dev)


def finish_cut(trail: AuditTrail, data: bytes) -> bool:
    """The active file is still the last closed segment (a crash between the link and the
    rename): check that segment as it is (``data``, its bytes) and start the next active
    file. ``False`` when the active file is not a closed segment. Lock and flock held."""
    segs = segments(trail.path)
    fd = trail._fd_or_fail()
    if not segs or not same_file(fd, segs[-1][1]):
        return False
    last_path = segs[-1][1]
    found = scan(data, trail._key)
    if not found.ok:
        raise trail._fail(f"{last_path.name} line {found.line} (seq {found.seq}): {found.reason}")
    trail._size = len(data)
    _continue_after(trail, found, last_path, fd)
    return True


def finish_interrupted(trail: AuditTrail, head: dict[str, Any]) -> bool:
    """An empty active file while the head anchor is ahead: the active file was renamed away
    and its successor never written (a rotation cut short in a writer that renamed first,
    or a file moved by hand). Finish it when the last closed segment ends exactly
    where the anchor says (lock and flock held); ``False`` otherwise."""
    segs = segments(trail.path)
    if not segs:
        return False
    last_path = segs[-1][1]
    found = scan(last_path.read_bytes(), trail._key)
    if not found.ok or found.last_seq != head.get("seq") or found.last_hash != head.get("hash"):
        return False
    _continue_after(trail, found, last_path, trail._fd_or_fail())
    return True


def _continue_after(trail: AuditTrail, found: Any, last_path: Path, fd: int) -> None:
    """Take the chain's end from ``found`` (the last closed segment's scan) and start the next
    active file after it (a rotation cut short, finished now; lock and flock held)."""
    trail._seq, trail._prev = found.last_seq, found.last_hash
    trail._written = (found.last_seq, found.last_hash)
    start(trail, previous=last_path, old_fd=fd, lock=True)


def _sync_dir(folder: Path) -> None:
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - not POSIX
        return
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def lock_current(trail: AuditTrail) -> int:
    """Take ``flock`` on the trail's current active file and return its descriptor.

    When another process rotated the trail while we waited, the lock we got is on a closed
    segment: move to the new active file (closing the old descriptor releases that lock),
    lock it, and check again. The caller unlocks the descriptor returned (``_size`` is -1
    after a move: the caller reloads the tail).
    """
    fd = trail._fd_or_fail()
    fcntl.flock(fd, fcntl.LOCK_EX)
    while True:
        try:
            current = os.stat(trail.path).st_ino
        except FileNotFoundError:
            return fd  # mid-rotation in a process that died: the head check will say
        if current == os.fstat(fd).st_ino:
            return fd
        new_fd = os.open(trail.path, os.O_RDWR | os.O_APPEND, 0o600)
        os.close(fd)
        trail._fd = fd = new_fd
        trail._size = -1
        fcntl.flock(fd, fcntl.LOCK_EX)


# -- verifying a series -------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class SeriesReport:
    """What :func:`verify_series` found: one report per segment, and the links between."""

    path: str
    ok: bool
    segments: list[Any]  # VerifyReport per file, oldest first, the active file last
    reason: str | None = None

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        lines = [str(r) for r in self.segments]
        if self.ok:
            total = sum(r.records for r in self.segments)
            lines.append(
                f"OK series {self.path}: {len(self.segments)} segment(s), {total} record(s), "
                "one unbroken chain"
            )
        else:
            lines.append(f"TAMPERED series {self.path}: {self.reason}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON data."""
        return {
            "path": self.path,
            "ok": self.ok,
            "reason": self.reason,
            "segments": [r.as_dict() for r in self.segments],
        }


def _first_record(p: Path) -> dict[str, Any] | None:
    import json

    with open(p, "rb") as fh:
        line = fh.readline()
    if not line.endswith(b"\n"):
        return None
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


def verify_series(path: Path, key: bytes | str | None, verify_one: Any) -> SeriesReport:
    """Verify every closed segment of ``path``, the active file, and the links between them."""
    segs = segments(path)
    files = [p for _, p in segs] + ([path] if path.exists() else [])
    if not files:
        raise FileNotFoundError(2, "no such audit trail", str(path))
    reports = [verify_one(p, key) for p in files]

    def fail(reason: str) -> SeriesReport:
        return SeriesReport(path=str(path), ok=False, segments=reports, reason=reason)

    if segs and path.exists() and os.path.samefile(path, segs[-1][1]):
        return SeriesReport(
            path=str(path),
            ok=False,
            segments=reports,
            reason=(
                f"a rotation was cut short: the active file is still {segs[-1][1].name}; "
                "the next writer to open the trail finishes it"
            ),
        )
    bad = next((r for r in reports if not r.ok), None)
    if bad is not None:
        return fail(f"segment {Path(bad.path).name} is damaged (see its line above)")
    numbers = [n for n, _ in segs]
    expected = 1
    for n, p in segs:
        if n != expected:
            missing = ", ".join(segment_path(path, k).name for k in range(expected, n))
            return fail(f"segment(s) {missing} missing (the series jumps to {p.name})")
        expected = n + 1
    prev_report = None
    prev_name = None
    for p, rep in zip(files, reports, strict=True):
        first = _first_record(p)
        if prev_report is None:
            if first is not None and first.get("action") == SEGMENT_ACTION:
                return fail(
                    f"{p.name} continues segment {first.get('previous_segment')!r}, which "
                    "is missing: the series does not start at the chain's first record"
                )
        else:
            if first is None or first.get("action") != SEGMENT_ACTION:
                return fail(f"{p.name} does not start with a segment record after {prev_name}")
            if first.get("previous_segment") != prev_name:
                return fail(
                    f"{p.name} continues {first.get('previous_segment')!r}, not {prev_name}: "
                    "a segment is missing or was renamed"
                )
            if (first.get("prev"), first.get("seq")) != (
                prev_report.last_hash,
                prev_report.last_seq + 1,
            ):
                return fail(
                    f"{p.name} does not continue the chain where {prev_name} ends (seq "
                    f"{prev_report.last_seq}): a segment was replaced or records removed"
                )
        prev_report, prev_name = rep, p.name
    if numbers and not path.exists():
        return fail(f"the active segment {path.name} is missing")
    return SeriesReport(path=str(path), ok=True, segments=reports)


def series_files(path: Path) -> list[Path]:
    """Every file of the series, oldest first (closed segments, then the active file)."""
    return [p for _, p in segments(path)] + ([path] if path.exists() else [])


__all__ = [
    "ROTATE_POLICIES",
    "SEGMENT_ACTION",
    "SeriesReport",
    "due",
    "finish_cut",
    "finish_interrupted",
    "lock_current",
    "rotate",
    "same_file",
    "segment_path",
    "segments",
    "series_files",
    "verify_series",
]
