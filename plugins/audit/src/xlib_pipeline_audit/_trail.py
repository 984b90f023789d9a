"""The trail writer: one append-only JSON-lines file, hash-chained, with a head anchor.

Writing a record::

    fields --> [user processors] --> chain hasher --> line renderer --> os.write --> destinations
               (a structlog processor chain)

The chain hasher assigns ``seq`` and ``prev`` and computes ``hash``; the renderer produces
the line; it is appended with one ``write(2)`` on an ``O_APPEND`` descriptor and then handed
to the destinations. All of this runs under the trail's lock, so threads
never interleave. Several processes appending to one file take ``fcntl.flock`` around
"read the tail, append" (``multiprocess=True``; a single-process trail that notices
someone else wrote to its file switches to that mode by itself).

The head anchor ``<trail>.head`` holds the last synced ``seq``, ``hash`` and file size,
replaced atomically (temporary file + ``rename``) at every sync point, so a truncated trail
no longer reaches its anchor.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import structlog

from xlib_pipeline.exceptions import StoreError

from ._canonical import (
    ALG_HMAC,
    ALG_SHA256,
    GENESIS,
    canonical,
    record_hash,
    render_line,
    split_line,
)

_log = logging.getLogger("xlib_pipeline.audit")

FSYNC_POLICIES = ("always", "batch", "never")
HEAD_SUFFIX = ".head"
TORN_SUFFIX = ".torn"
HEAD_VERSION = 1

Processor = Callable[[Any, str, Any], Any]
Destination = Callable[[str], None]


class AuditTrailError(StoreError):
    """The audit trail cannot be written safely (tampered, truncated, wrong key, I/O error)."""


def head_path(path: str | os.PathLike[str]) -> Path:
    """The head anchor beside trail ``path``: the trail's file name plus ``.head``."""
    p = Path(path)
    return p.with_name(p.name + HEAD_SUFFIX)


def head_document(
    *, trail: str, seq: int, last_hash: str, size: int, key: bytes | None
) -> dict[str, Any]:
    """The head anchor's content, with its ``check`` hash (HMAC with a key)."""
    doc: dict[str, Any] = {
        "alg": ALG_HMAC if key is not None else ALG_SHA256,
        "hash": last_hash,
        "seq": seq,
        "size": size,
        "trail": trail,
        "v": HEAD_VERSION,
    }
    doc["check"] = record_hash(canonical(doc), key)
    return doc


def read_head(path: Path) -> dict[str, Any] | None:
    """The parsed head anchor at ``path`` (``None`` when absent); raises ValueError if garbled."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    doc = json.loads(text.decode("ascii"))
    if not isinstance(doc, dict):
        raise ValueError("the head anchor is not a JSON object")
    return doc


class _ChainHasher:
    """structlog processor: assigns ``seq`` and ``prev`` and computes ``hash`` over the
    canonical body. Runs under the trail's lock, after every user processor."""

    def __init__(self, trail: AuditTrail) -> None:
        self._trail = weakref.proxy(trail)

    def __call__(self, logger: Any, method: str, ev: dict[str, Any]) -> dict[str, Any]:
        t = self._trail
        seq = t._seq + 1
        ev.pop("hash", None)
        ev["seq"] = seq
        ev["prev"] = t._prev
        try:
            body = canonical(ev)
        except (TypeError, ValueError) as exc:
            raise AuditTrailError(
                f"audit record for action {ev.get('action')!r} holds a value that is not JSON "
                f"data ({exc}); processors must add only JSON values",
                path=str(t.path),
            ) from exc
        h = record_hash(body, t._key)
        ev["hash"] = h
        t._staged = (seq, h, body, ev)
        return ev


class _LineRenderer:
    """structlog renderer: the trail line for the hashed event (serialized only once)."""

    def __init__(self, trail: AuditTrail) -> None:
        self._trail = weakref.proxy(trail)

    def __call__(self, logger: Any, method: str, ev: dict[str, Any]) -> str:
        staged = self._trail._staged
        if staged is None or staged[3] is not ev:
            raise AuditTrailError(
                "the audit renderer got an event the chain hasher did not hash",
                path=str(self._trail.path),
            )
        return render_line(staged[2], staged[1])


# One writer object per trail file in a process, shared by every manager that names it:
# two objects appending to one file would fork the chain. Keyed by real path.
_OPEN: dict[str, AuditTrail] = {}
_OPEN_LOCK = threading.Lock()


def open_trail(path: str | os.PathLike[str], **settings: Any) -> AuditTrail:
    """The process-wide writer for ``path`` (opened on first use, shared afterwards).

    A second opener must ask for the same key and durability settings, else ConfigError.
    Call :meth:`AuditTrail.release` when done.
    """
    real = os.path.realpath(os.fspath(path))
    with _OPEN_LOCK:
        trail = _OPEN.get(real)
        if trail is not None and not trail.closed:
            trail._check_same(settings)
            trail._refs += 1
            return trail
        trail = AuditTrail(real, **settings)
        trail._refs = 1
        _OPEN[real] = trail
        return trail


def _sync_all_at_exit() -> None:
    for trail in list(_OPEN.values()):
        with contextlib.suppress(Exception):
            trail.close()


def _after_fork_in_child() -> None:
    global _OPEN_LOCK
    _OPEN_LOCK = threading.Lock()
    for trail in list(_OPEN.values()):
        trail._after_fork()


import atexit  # noqa: E402 - registered right after the functions it names

atexit.register(_sync_all_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class AuditTrail:
    """Appends hash-chained records to one JSON-lines file. Thread-safe.

    ``fsync``: ``"always"`` syncs every record before :meth:`append` returns;
    ``"batch"`` has a background thread sync when ``batch_size`` records are pending and
    every ``batch_interval_ms``; both also sync on :meth:`sync` and :meth:`close`, and the
    head anchor follows each sync. ``"never"`` leaves it to the OS (the head is still
    replaced on :meth:`sync` and :meth:`close`). ``key`` switches hashes to HMAC-SHA256.
    ``processors`` are structlog processors run before the chain hasher (their fields are
    hashed); ``destinations`` receive every line after it is in the file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: str = "batch",
        batch_size: int = 256,
        batch_interval_ms: int = 200,
        key: bytes | None = None,
        multiprocess: bool = False,
        write_through: bool = False,
        processors: Iterable[Processor] = (),
        destinations: Iterable[Destination] = (),
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {list(FSYNC_POLICIES)}, got {fsync!r}")
        self.path = Path(path)
        self.head_path = head_path(self.path)
        self.fsync = fsync
        self.batch_size = int(batch_size)
        self.batch_interval = batch_interval_ms / 1000.0
        self._key = key
        self.multiprocess = bool(multiprocess)
        self._mp = self.multiprocess
        # Group commit: records wait in memory and reach the file together (one write(2)
        # per batch), unless every record must be written before append returns.
        self.write_through = bool(write_through) or fsync == "always"
        self._combining = not self.write_through and not self.multiprocess
        self._inbox: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._buf: list[tuple[bytes, str, dict[str, Any]]] = []
        self._processors: list[Processor] = list(processors)
        self._destinations: list[Destination] = list(destinations)
        self._lock = threading.Lock()
        self._head_lock = threading.Lock()
        self._fd: int | None = None
        self._seq = 0
        self._prev = GENESIS
        self._size = 0
        self._staged: tuple[int, str, str, dict[str, Any]] | None = None
        self._pending = 0
        self._last_sync = time.monotonic()
        self._head_seq = -1
        self._refs = 0
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._flusher: threading.Thread | None = None
        self.closed = False
        self._build_logger()

    # -- setup ---------------------------------------------------------------------------------

    def _settings(self) -> dict[str, Any]:
        return {
            "fsync": self.fsync,
            "batch_size": self.batch_size,
            "batch_interval_ms": round(self.batch_interval * 1000),
            "write_through": self.write_through,
            "key": self._key,
        }

    def _check_same(self, settings: dict[str, Any]) -> None:
        mine = self._settings()
        settings = dict(settings)
        if settings.get("fsync") == "always":
            settings["write_through"] = True
        for name, value in settings.items():
            if name in mine and mine[name] != value:
                what = "HMAC key" if name == "key" else name
                raise AuditTrailError(
                    f"audit trail {self.path} is already open in this process with a different "
                    f"{what}; every manager writing one trail must use the same audit settings",
                    path=str(self.path),
                )
        if settings.get("multiprocess"):
            self._mp = self.multiprocess = True
        for p in settings.get("processors", ()) or ():
            if p not in self._processors:
                self.add_processor(p)
        for d in settings.get("destinations", ()) or ():
            if d not in self._destinations:
                self._destinations.append(d)

    def _build_logger(self) -> None:
        # A structlog processor chain, run directly (no BoundLogger: it would copy the
        # event dict once more per record). User processors first, so their fields are
        # hashed; the renderer's string is what gets written.
        self._chain = (*self._processors, _ChainHasher(self), _LineRenderer(self))

    def add_processor(self, processor: Processor) -> None:
        """Add a structlog processor that runs before the chain hasher (fields are hashed)."""
        with self._lock:
            self._processors.append(processor)
            self._build_logger()

    def add_destination(self, destination: Destination) -> None:
        """Call ``destination(line)`` with every line once it is in the trail file."""
        with self._lock:
            self._destinations.append(destination)

    @property
    def alg(self) -> str:
        """``hmac-sha256`` when the trail is keyed, else ``sha256``."""
        return ALG_HMAC if self._key is not None else ALG_SHA256

    def _open(self) -> None:
        """Open the file, check it against its head anchor, learn the chain's tail."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise AuditTrailError(
                f"cannot open audit trail {self.path}: {exc.strerror}", path=str(self.path)
            ) from exc
        self._fd = fd
        try:
            with self._flocked(force=True):
                self._load_tail(check_head=True)
        except BaseException:
            self._fd = None
            os.close(fd)
            raise
        if self.fsync != "never" or not self.write_through:
            self._start_flusher()

    @contextlib.contextmanager
    def _flocked(self, force: bool = False) -> Iterator[None]:
        if not (self._mp or force):
            yield
            return
        fd = self._fd
        assert fd is not None
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _fail(self, message: str) -> AuditTrailError:
        return AuditTrailError(
            f"audit trail {self.path}: {message}; refusing to append. "
            f"Run `xlib-pipeline audit verify {self.path}` to see what changed.",
            path=str(self.path),
        )

    def _load_tail(self, *, check_head: bool) -> None:
        """Read the last record (and, at open, check the head anchor). Holds the flock."""
        fd = self._fd
        assert fd is not None
        size = os.fstat(fd).st_size
        if size:
            size = self._drop_torn_tail(size)
        if size == 0:
            seq, last = 0, GENESIS
        else:
            rec = self._parse_line(self._tail_line(size), "its last record")
            seq, last = rec["seq"], rec["hash"]
        self._seq, self._prev, self._size = seq, last, size
        if not check_head:
            return
        try:
            head = read_head(self.head_path)
        except (ValueError, UnicodeDecodeError) as exc:
            raise self._fail(f"its head anchor {self.head_path} is unreadable ({exc})") from exc
        if head is None:
            if seq != 0:
                raise self._fail(
                    f"it holds {seq} record(s) but its head anchor {self.head_path} is missing"
                )
            self._write_head(0, GENESIS, 0)
            return
        if head.get("alg") != self.alg:
            raise self._fail(
                f"it is protected with {head.get('alg')!r} but this writer is configured for "
                f"{self.alg!r} (check hmac_key_env / hmac_key_file)"
            )
        check = dict(head)
        given = check.pop("check", None)
        if record_hash(canonical(check), self._key) != given:
            raise self._fail(
                f"its head anchor {self.head_path} does not match its check hash "
                "(edited, or written with another HMAC key)"
            )
        hseq = head.get("seq")
        if not isinstance(hseq, int) or hseq > seq:
            raise self._fail(
                f"its head anchor records seq {hseq} but the trail ends at seq {seq} (truncated?)"
            )
        if hseq == 0:
            ok = head.get("hash") == GENESIS
        else:
            rec = self._find_record(size, hseq)
            ok = rec is not None and rec.get("hash") == head.get("hash")
        if not ok:
            raise self._fail(f"record seq {hseq} does not match its head anchor")
        self._head_seq = hseq

    def _drop_torn_tail(self, size: int) -> int:
        """A crash mid-write can leave a last line without newline: move it aside."""
        fd = self._fd
        assert fd is not None
        if os.pread(fd, 1, size - 1) == b"\n":
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
        torn_path = self.path.with_name(self.path.name + TORN_SUFFIX)
        with open(torn_path, "ab") as fh:
            fh.write(torn + b"\n")
        os.ftruncate(fd, keep)
        os.fsync(fd)
        _log.warning(
            "audit.torn_record_moved path=%s bytes=%d to=%s", self.path, len(torn), torn_path
        )
        return keep

    def _tail_line(self, size: int) -> bytes:
        fd = self._fd
        assert fd is not None
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

    def _parse_line(self, raw: bytes, what: str) -> dict[str, Any]:
        try:
            rec, given, body = split_line(raw.decode("ascii"))
        except UnicodeDecodeError as exc:
            raise self._fail(f"{what} holds a non-ASCII byte (edited?)") from exc
        except ValueError as exc:
            raise self._fail(f"{what} is not intact: {exc}") from exc
        if not isinstance(rec.get("seq"), int) or record_hash(body, self._key) != given:
            key_hint = " or was written with another HMAC key" if self._key else ""
            raise self._fail(f"{what} does not match its hash (edited{key_hint})")
        rec["hash"] = given
        return rec

    def _find_record(self, size: int, seq: int) -> dict[str, Any] | None:
        """The record numbered ``seq``, searching backwards from the end of the file."""
        fd = self._fd
        assert fd is not None
        chunk = 65536
        while True:
            start = max(0, size - chunk)
            data = os.pread(fd, size - start, start)
            lines = data.split(b"\n")[:-1]
            if start > 0:
                lines = lines[1:]  # the first one may be cut
            for raw in reversed(lines):
                try:
                    rec = json.loads(raw)
                except ValueError:
                    return None
                if rec.get("seq") == seq:
                    return rec if isinstance(rec, dict) else None
                if isinstance(rec.get("seq"), int) and rec["seq"] < seq:
                    return None
            if start == 0:
                return None
            chunk *= 4

    # -- writing -------------------------------------------------------------------------------

    def append(self, fields: dict[str, Any]) -> int | None:
        """Chain, render and append one record. Raises AuditTrailError.

        With group commit (the default, single process) appends never wait for each other:
        the record joins an inbox and whichever thread gets the trail's lock chains every
        waiting record, in arrival order (flat combining). Threads that find the lock taken
        go on at once; their records are chained by the holder, the next append or the next
        sync. Returns the record's ``seq`` when it was chained by this call, else ``None``.
        """
        if self._combining and not self._mp:
            self._inbox.put(fields)
            lock = self._lock
            while lock.acquire(blocking=False):
                try:
                    self._drain_locked()
                finally:
                    lock.release()
                if self._inbox.empty():
                    break
            return None
        with self._lock:
            self._drain_locked()
            return self._append_one_locked(fields)

    def _drain_locked(self) -> None:
        """Chain every record waiting in the inbox, in arrival order. Holds the lock."""
        inbox = self._inbox
        while True:
            try:
                fields = inbox.get_nowait()
            except queue.Empty:
                return
            self._append_one_locked(fields)

    def _append_one_locked(self, fields: dict[str, Any]) -> int:
        if self._fd is None:
            if self.closed:
                raise AuditTrailError(f"audit trail {self.path} is closed", path=str(self.path))
            self._open()
        if self._error is not None:
            err, self._error = self._error, None
            raise AuditTrailError(
                f"audit trail {self.path}: background sync failed: {err}",
                path=str(self.path),
            ) from err
        fd = self._fd
        assert fd is not None
        if self._mp:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.fstat(fd).st_size != self._size:
                    self._load_tail(check_head=False)
                return self._append_locked(fields)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        if not self.write_through:
            return self._append_locked(fields)  # the size check happens at each flush
        if os.fstat(fd).st_size != self._size:
            # Someone else appended: from now on take the cross-process path.
            _log.warning(
                "audit.concurrent_writer_detected path=%s: switching to flock mode "
                "(set audit.multiprocess: true when several processes share a trail)",
                self.path,
            )
            self._mp = True
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                self._load_tail(check_head=False)
                return self._append_locked(fields)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        return self._append_locked(fields)

    def _append_locked(self, fields: dict[str, Any]) -> int:
        self._staged = None
        ev: Any = dict(fields)
        try:
            for proc in self._chain:
                ev = proc(self, "info", ev)
        except structlog.DropEvent:  # a user processor dropped the record
            self._staged = None
            return self._seq
        self._commit(ev)
        seq = self._seq
        policy = self.fsync
        if not self.write_through and not self._mp:
            return seq  # queued: counted and synced when the batch is written
        if policy == "never":
            self._pending += 1
            return seq
        if policy == "always":
            os.fdatasync(self._fd)  # type: ignore[arg-type]
        self._pending += 1
        if self._pending == self.batch_size:
            # fsync (batch) and the head anchor are done by the flusher thread, off the
            # writers' path; "always" already synced the record itself.
            self._wake.set()
        return seq

    def _commit(self, line: str) -> None:
        """Write (or, in group commit, queue) the rendered line and advance the chain."""
        staged = self._staged
        fd = self._fd
        assert staged is not None and fd is not None
        data = (line + "\n").encode("ascii")
        if not self.write_through and not self._mp:
            self._buf.append((data, line, staged[3]))
            self._seq, self._prev = staged[0], staged[1]
            self._staged = None
            if len(self._buf) >= self.batch_size:
                self._flush_locked()
                if self.fsync == "batch":
                    self._wake.set()  # the flusher syncs the batch just written
            return
        try:
            self._write_all(fd, data)
        finally:
            self._staged = None
        self._seq, self._prev = staged[0], staged[1]
        self._size += len(data)
        for dest in self._destinations:
            dest(line)

    def _write_all(self, fd: int, data: bytes) -> None:
        """Append ``data`` whole; on an error cut the file back so no half record stays."""
        written = 0
        try:
            written = os.write(fd, data)
            while written < len(data):  # rare: a short write
                written += os.write(fd, data[written:])
        except OSError as exc:
            if written:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, self._size)
            raise AuditTrailError(
                f"cannot append to audit trail {self.path}: {exc.strerror}", path=str(self.path)
            ) from exc

    def _flush_locked(self) -> None:
        """Write the queued records with one write(2). Holds the trail's lock.

        If another process appended meanwhile, the queued records are chained again on top
        of its last record (under flock), and the trail switches to the flock path.
        """
        buf = self._buf
        fd = self._fd
        if not buf or fd is None:
            return
        if os.fstat(fd).st_size != self._size:
            _log.warning(
                "audit.concurrent_writer_detected path=%s: switching to flock mode "
                "(set audit.multiprocess: true when several processes share a trail)",
                self.path,
            )
            self._mp = True
            self._buf = []
            with self._flocked(force=True):
                self._load_tail(check_head=False)
                for _, _, ev in buf:
                    ev.pop("hash", None)
                    for proc in self._chain[-2:]:  # hasher and renderer only
                        ev = proc(self, "info", ev)
                    self._commit(ev)
            return
        data = b"".join(item[0] for item in buf)
        self._write_all(fd, data)
        self._buf = []
        self._size += len(data)
        self._pending += len(buf)
        if self._destinations:
            for _, line, _ in buf:
                for dest in self._destinations:
                    dest(line)

    def flush(self) -> None:
        """Write every queued record to the file now (without syncing it)."""
        with self._lock:
            self._drain_locked()
            self._flush_locked()

    # -- durability ----------------------------------------------------------------------------

    def _sync_locked(self) -> None:
        if not self._inbox.empty():
            self._drain_locked()  # opens the file if nothing had yet
        fd = self._fd
        if fd is None:
            return
        self._flush_locked()
        if self.fsync != "never":
            os.fdatasync(fd)
        self._pending = 0
        self._last_sync = time.monotonic()
        if self._seq != self._head_seq:
            self._write_head(self._seq, self._prev, self._size)

    def _write_head(self, seq: int, last_hash: str, size: int) -> None:
        doc = head_document(
            trail=self.path.name, seq=seq, last_hash=last_hash, size=size, key=self._key
        )
        data = (canonical(doc) + "\n").encode("ascii")
        tmp = self.head_path.with_name(
            f"{self.head_path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
        )
        with self._head_lock:
            if 0 < seq <= self._head_seq:
                return  # a newer anchor was written meanwhile: never move it back
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, data)
                if self.fsync != "never":
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.head_path)
            self._head_seq = seq

    def sync(self) -> None:
        """Make every record so far durable (per the policy) and move the head anchor to it."""
        with self._lock:
            if self._fd is None and self._inbox.empty():
                return
            if self._buf or not self._inbox.empty() or self._pending or self._seq != self._head_seq:
                with self._flocked():
                    self._sync_locked()

    def _start_flusher(self) -> None:
        ref = weakref.ref(self)
        stop, wake = self._stop, self._wake
        interval = self.batch_interval if self.batch_interval > 0 else None

        def loop() -> None:
            while True:
                wake.wait(interval)
                wake.clear()
                if stop.is_set():
                    return
                trail = ref()
                if trail is None:
                    return
                try:
                    trail._background_sync()
                except Exception as exc:  # reported on the next append
                    trail._error = exc
                del trail

        t = threading.Thread(target=loop, name=f"xlib-audit-sync:{self.path.name}", daemon=True)
        self._flusher = t
        t.start()

    def _background_sync(self) -> None:
        """Flusher thread: fsync what is written so far and move the head anchor to it.

        The trail's lock is held only to read the chain's position, so writers never wait
        for the disk."""
        with self._lock:
            fd = self._fd
            if fd is None:
                return
            self._drain_locked()
            self._flush_locked()
            if not self._pending:
                return
            seq, last, size = self._seq, self._prev, self._size
            self._pending = 0
            self._last_sync = time.monotonic()
        if self.fsync == "batch":
            os.fdatasync(fd)
        self._write_head(seq, last, size)

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The ``seq`` of the last record this writer knows of."""
        return self._seq

    def release(self) -> None:
        """Drop one reference taken by :func:`open_trail`; the last one closes the trail."""
        with _OPEN_LOCK:
            self._refs -= 1
            if self._refs > 0:
                return
            real = os.path.realpath(self.path)
            if _OPEN.get(real) is self:
                del _OPEN[real]
        self.close()

    def close(self) -> None:
        """Sync, update the head anchor and close the file. Idempotent."""
        self._stop.set()
        self._wake.set()
        flusher = self._flusher
        if flusher is not None and flusher is not threading.current_thread():
            flusher.join(timeout=30)
        with self._lock:
            if not self._inbox.empty() and not self.closed:
                self._drain_locked()
            fd = self._fd
            if fd is None:
                self.closed = True
                return
            try:
                with self._flocked():
                    self._sync_locked()
            finally:
                self._fd = None
                self.closed = True
                os.close(fd)

    def _after_fork(self) -> None:
        """In a forked child: fresh locks and an own file description (flock needs one)."""
        self._lock = threading.Lock()
        self._head_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._flusher = None
        self._mp = True
        fd = self._fd
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
            self._fd = None
            with contextlib.suppress(Exception):
                self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
                self._size = -1  # re-read the tail on the next append
            self._buf = []  # the parent writes what it had queued
            if self._fd is not None and (self.fsync != "never" or not self.write_through):
                self._start_flusher()
