"""The trail writer: one append-only JSON-lines file, hash-chained, with a head anchor.

Writing a record::

    fields --> [user processors] --> chain hasher --> line renderer --> sink --> destinations
               (a structlog processor chain)

The chain hasher assigns ``seq`` and ``prev`` and computes ``hash``; the renderer produces
the line; a *sink* chosen once when the trail opens (:mod:`._sink`: group commit,
write-through or flock) appends it with ``write(2)`` on an ``O_APPEND`` descriptor, and it is
handed to the destinations. The head anchor (:mod:`._head`) follows every sync point.

On opening, the writer checks the whole file (:func:`._tail.scan`) and the anchor
(:func:`._head.check_head`), the same checks as ``audit verify``: it refuses to append
after damage anywhere in the file, not only at its end. A write that fails is kept and
written again before anything newer; the caller gets an :class:`AuditTrailError`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import structlog

from xlib_pipeline.exceptions import StoreError

from . import _segments
from ._append import chain_rendered, chain_waiting, commit_waiting, write_all, write_records
from ._canonical import (
    ALG_HMAC,
    ALG_SHA256,
    GENESIS,
    hmac_pads,
)
from ._chain import _ChainHasher, _LineRenderer
from ._flusher import start_flusher, sync_error
from ._head import check_head, head_path, read_head, write_head
from ._render import Rendered, fields_of
from ._settings import FSYNC_POLICIES
from ._sink import FlockSink, GroupCommitSink, WriteThroughSink, hold_record, reload_tail
from ._tail import drop_torn_tail, read_all, scan

_log = logging.getLogger("xlib_pipeline.audit")


Processor = Callable[[Any, str, Any], Any]
Destination = Callable[[str], None]
#: A chained record: (line bytes, line or None (then the bytes without the newline,
#: decoded, when a destination needs it), seq, hash, event dict or pre-rendered record).
Chained = tuple[bytes, str | None, int, str, dict[str, Any] | Rendered]


class AuditTrailError(StoreError):
    """The audit trail cannot be written safely (tampered, truncated, wrong key, I/O error)."""


class _Registry:
    """The process-wide table of open writers, keyed by real path (see :mod:`._registry`)."""

    def __init__(self) -> None:
        self.open: dict[str, AuditTrail] = {}
        self.lock = threading.Lock()


registry = _Registry()


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
        max_bytes: int | None = None,
        rotate: str = "never",
    ) -> None:
        if rotate not in _segments.ROTATE_POLICIES:
            known = list(_segments.ROTATE_POLICIES)
            raise ValueError(f"rotate must be one of {known}, got {rotate!r}")
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {list(FSYNC_POLICIES)}, got {fsync!r}")
        self.path = Path(path)
        self.head_path = head_path(self.path)
        self.fsync = fsync
        self.batch_size = int(batch_size)
        self.batch_interval = batch_interval_ms / 1000.0
        self._key = key
        #: SHA-256 states holding the HMAC pads of ``key`` (copied per record), or None.
        self._hmac = hmac_pads(key) if key is not None else None
        #: Rotation: close the active segment at the first sync once it holds ``max_bytes``,
        #: or once the UTC hour/day it started in is over (see :mod:`._segments`).
        self.max_bytes = max_bytes
        self.rotate = rotate
        self._segment_period: int | None = None
        self.multiprocess = bool(multiprocess)
        self.write_through = bool(write_through) or fsync == "always"
        self._processors: list[Processor] = list(processors)
        self._destinations: list[Destination] = list(destinations)
        self._lock = threading.Lock()
        self._head_lock = threading.Lock()
        self._fd: int | None = None
        self._seq = 0  # the chain's end (records chained, written or not)
        self._prev = GENESIS
        self._size = 0  # bytes in the file that this writer knows of
        self._written = (0, GENESIS)  # seq and hash of the last record in the file
        self._unwritten: list[Chained] = []  # chained, but their write failed: retried first
        self._staged: tuple[int, str, str, dict[str, Any]] | None = None
        self._pending = 0
        self._last_sync = time.monotonic()
        self._head_seq = -1
        self._refs = 0
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._flusher: threading.Thread | None = None
        self._sink: Any = self._choose_sink()
        self.closed = False
        self._build_logger()

    # -- setup ---------------------------------------------------------------------------------

    def _choose_sink(self) -> Any:
        if self.multiprocess:
            return FlockSink(self)
        if self.write_through:
            return WriteThroughSink(self)
        return GroupCommitSink(self)

    @property
    def sink(self) -> str:
        """The write path in use: ``group-commit``, ``write-through`` or ``flock``."""
        return str(self._sink.name)

    def _settings(self) -> dict[str, Any]:
        return {
            "fsync": self.fsync,
            "batch_size": self.batch_size,
            "batch_interval_ms": round(self.batch_interval * 1000),
            "write_through": self.write_through,
            "key": self._key,
            "max_bytes": self.max_bytes,
            "rotate": self.rotate,
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
        if settings.get("multiprocess") and not self.multiprocess:
            with self._lock:
                self.multiprocess = True
                self._use(FlockSink(self))
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
        self._chain_procs = (*self._processors, _ChainHasher(self), _LineRenderer(self))

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
    def prerendered(self) -> bool:
        """Whether pre-rendered records (:mod:`._render`) can go in as they are: no user
        processor has to see (and may change) their fields first."""
        return not self._processors

    @property
    def alg(self) -> str:
        """``hmac-sha256`` when the trail is keyed, else ``sha256``."""
        return ALG_HMAC if self._key is not None else ALG_SHA256

    def _fail(self, message: str) -> AuditTrailError:
        err = AuditTrailError(
            f"audit trail {self.path}: {message}; refusing to append. "
            f"Run `xlib-pipeline audit verify {self.path}` to see what changed.",
            path=str(self.path),
        )
        # The core reports a run ended by this error as a compliance event of this kind.
        err.compliance_kind = "tamper_detected"  # type: ignore[attr-defined]
        return err

    def _open(self) -> None:
        """Open the file and check it whole against its head anchor. Holds the lock."""
        if not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise AuditTrailError(
                f"cannot open audit trail {self.path}: {exc.strerror}", path=str(self.path)
            ) from exc
        try:
            while True:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if _segments.same_file(fd, self.path) or not self.path.exists():
                    break
                # Another process rotated the trail between our open and our lock: the
                # file we hold is a closed segment now; use the new active file.
                os.close(fd)
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            self._fd = fd
            try:
                self._check_file()
            finally:
                if self._fd is not None:  # finishing a cut rotation replaces the file
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
        except BaseException:
            fd = self._fd if self._fd is not None else fd
            self._fd = None
            os.close(fd)
            raise
        if self.fsync != "never" or not self.write_through:
            self._start_flusher()

    def _check_file(self) -> None:
        """Every record intact and chained, and the head anchor matching (holds flock)."""
        fd = self._fd
        assert fd is not None
        size = drop_torn_tail(fd, self.path, os.fstat(fd).st_size)
        try:
            head = read_head(self.head_path)
        except (ValueError, UnicodeDecodeError) as exc:
            raise self._fail(f"its head anchor {self.head_path} is unreadable ({exc})") from exc
        want = (
            frozenset([head["seq"]]) if head and isinstance(head.get("seq"), int) else frozenset()
        )
        data = read_all(fd, size)
        if _segments.finish_cut(self, data):
            return  # a rotation cut short between its link and its rename, finished now
        found = scan(data, self._key, mark=want)
        started = _segments.first_record_time(data)
        self._segment_period = _segments.period_of(
            self.rotate, time.time() if started is None else started
        )
        if (
            found.ok
            and found.records == 0
            and head is not None
            and isinstance(head.get("seq"), int)
            and head["seq"] > 0
            and _segments.finish_interrupted(self, head)
        ):
            return  # a rotation cut short by a crash, finished now
        if not found.ok:
            raise self._fail(f"line {found.line} (seq {found.seq}): {found.reason}")
        self._seq, self._prev, self._size = found.last_seq, found.last_hash, size
        self._written = (found.last_seq, found.last_hash)
        if head is None:
            if found.last_seq != 0:
                raise self._fail(
                    f"it holds {found.last_seq} record(s) but its head anchor "
                    f"{self.head_path} is missing"
                )
            self._write_head(0, GENESIS, 0)
            return
        problem = check_head(head, self._key, last_seq=found.last_seq, lookup=found.marks.get)
        if problem is not None:
            raise self._fail(f"head anchor {self.head_path}: {problem.reason}")
        self._head_seq = head["seq"]

    def _fd_or_fail(self) -> int:
        if self._fd is None:
            if self.closed:
                raise AuditTrailError(f"audit trail {self.path} is closed", path=str(self.path))
            self._open()
        assert self._fd is not None
        return self._fd

    def _use(self, sink: Any) -> None:
        old, self._sink = self._sink, sink
        if isinstance(old, GroupCommitSink):
            old.drain_to(sink)

    # -- writing -------------------------------------------------------------------------------

    def append(self, fields: dict[str, Any] | Rendered, *, wait: bool = False) -> int | None:
        """Chain, render and append one record. Raises AuditTrailError.

        With group commit (the default, single process) the record is written at once by
        whichever thread holds the trail's lock, together with every record waiting then.
        ``wait=True`` returns only once the record is in the file (``write(2)`` returned);
        otherwise a thread that finds the lock taken goes on, and the holder writes it.
        Returns the record's ``seq`` when this call chained it, else ``None``.
        """
        if self._fd is None:
            with self._lock:
                self._fd_or_fail()
        return self._sink.append(fields, wait)  # type: ignore[no-any-return]

    def _chain(self, fields: dict[str, Any] | Rendered) -> Chained | None:
        """Run the processors, hash and render: the record as it will be written.

        A pre-rendered record (:mod:`._render`) only gets its chain fields and hash, unless
        processors were added since it was rendered: they get its fields as a dict."""
        if type(fields) is list:
            if not self._processors:
                return chain_rendered(self, fields)
            fields = fields_of(fields)
        self._staged = None
        ev: Any = dict(fields)
        try:
            for proc in self._chain_procs:
                ev = proc(self, "info", ev)
        except structlog.DropEvent:  # a user processor dropped the record
            self._staged = None
            return None
        return self._advance(ev)

    def _rechain(self, ev: dict[str, Any] | Rendered) -> Chained:
        """Hash and render an already processed event again (a new place in the chain)."""
        if type(ev) is list:
            return chain_rendered(self, ev)
        for proc in self._chain_procs[-2:]:  # hasher and renderer only
            ev = proc(self, "info", ev)
        return self._advance(ev)

    def _advance(self, line: Any) -> Chained:
        staged = self._staged
        assert staged is not None
        self._staged = None
        self._seq, self._prev = staged[0], staged[1]
        return ((line + "\n").encode("utf-8"), line, staged[0], staged[1], staged[3])

    # The write path under the lock (see :mod:`._append`).
    _chain_waiting = chain_waiting
    _commit_waiting = commit_waiting
    _write_records = write_records
    _write_all = write_all
    hold = hold_record

    #: Tests only: called with the bytes about to be written (raise OSError to inject).
    write_hook: Callable[[bytes], None] | None = None

    def flush(self) -> None:
        """Write every waiting record to the file now (without syncing it)."""
        if self._fd is None and not self._sink.pending():
            return
        self._sink.flush()

    # -- durability ----------------------------------------------------------------------------

    def _sync_locked(self) -> None:
        fd = self._fd
        if fd is None:
            return
        if isinstance(self._sink, GroupCommitSink):
            self._sink.write_waiting()
        elif self._unwritten:
            self._write_records([])
        if self.fsync != "never":
            os.fdatasync(fd)
        self._pending = 0
        self._last_sync = time.monotonic()
        seq, last = self._written
        if seq != self._head_seq:
            self._write_head(seq, last, self._size)
        if (self.max_bytes is not None or self.rotate != "never") and _segments.due(self):
            _segments.rotate(self)

    def _write_head(self, seq: int, last_hash: str, size: int) -> None:
        with self._head_lock:
            if 0 < seq <= self._head_seq:
                return  # a newer anchor was written meanwhile: never move it back
            write_head(
                self.head_path,
                trail=self.path.name,
                seq=seq,
                last_hash=last_hash,
                size=size,
                key=self._key,
                sync=self.fsync != "never",
            )
            self._head_seq = seq

    def sync(self) -> None:
        """Make every record so far durable (per the policy) and move the head anchor to it.

        Raises :class:`AuditTrailError` if the background flusher's ``fdatasync`` failed
        since the trail was opened. The error stays: after a failed ``fdatasync`` the kernel
        may have dropped the dirty pages, and a later sync that succeeds proves nothing about
        them, so no later sync of this writer reports the trail durable."""
        if self._error is not None:
            raise sync_error(self, self._error)
        with self._lock:
            if self._fd is None and not self._sink.pending():
                return
            self._fd_or_fail()
            with self._flocked():
                self._sync_locked()

    @contextlib.contextmanager
    def _flocked(self) -> Any:
        if not isinstance(self._sink, FlockSink) or self._fd is None:
            yield
            return
        _segments.lock_current(self)
        try:
            if os.fstat(self._fd_or_fail()).st_size != self._size:
                reload_tail(self)
            yield
        finally:
            if self._fd is not None:  # the current file (a rotation may have replaced it)
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _start_flusher(self) -> None:
        self._flusher = start_flusher(self)

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The ``seq`` of the last record this writer knows of."""
        return self._seq

    def release(self) -> None:
        """Drop one reference taken by :func:`open_trail`; the last one closes the trail."""
        with registry.lock:
            self._refs -= 1
            if self._refs > 0:
                return
            real = os.path.realpath(self.path)
            if registry.open.get(real) is self:
                del registry.open[real]
        self.close()

    def close(self) -> None:
        """Sync, update the head anchor and close the file. Idempotent."""
        self._stop.set()
        self._wake.set()
        flusher = self._flusher
        if flusher is not None and flusher is not threading.current_thread():
            flusher.join(timeout=30)
        with self._lock:
            if self.closed:
                return
            if self._fd is None and self._sink.pending():
                self._fd_or_fail()
            fd = self._fd
            if fd is None:
                self.closed = True
                return
            try:
                with self._flocked():
                    self._sync_locked()
            finally:
                fd = self._fd if self._fd is not None else fd  # a rotation replaces it
                self._fd = None
                self.closed = True
                os.close(fd)
