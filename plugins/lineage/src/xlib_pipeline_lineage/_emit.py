"""Sinks (transports) and the per-run background emitter.

Hooks only append small tuples to a queue (well under a microsecond each); a background
thread turns them into OpenLineage events and hands them to the sink in batches;
``after_pipeline`` waits for the queue to drain, so every event of a run is written when
``execute_pipeline`` returns.

A batch's events are written every :data:`LINES_PER_WRITE` events as they are built (the
file transport keeps its file open for the batch), not joined into one text per batch: a
batch of a few thousand events of ~2 KB was a text of megabytes, allocated fresh (and
copied twice more: the final newline, the encoding) per batch, and the events themselves
were all alive until then; small writes reuse the same memory.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ._events import to_client_event

_log = logging.getLogger("xlib_pipeline.lineage")

#: How many events the emitter writes per batch at most.
BATCH = 2048
#: Seconds the emitter lets records gather before building and writing them.
WINDOW_S = 0.02
#: Events the emitter writes at once (one text, one ``write``), as they are built.
LINES_PER_WRITE = 32


class WriteError(RuntimeError):
    """A lineage write failed: names the file (or transport) and the OS error number."""

    def __init__(self, where: str, cause: BaseException) -> None:
        self.where = where
        self.errno: int | None = getattr(cause, "errno", None)
        super().__init__(f"lineage file {where!r} is not writable: {cause}")


class Chunk:
    """Events written together (one ``write``), with how much of them is written:
    ``done`` counts bytes of :attr:`data` for the file transport (a failed write can stop
    mid-line; the retry goes on from that byte, so no line is torn or written twice) and
    events for any other transport."""

    __slots__ = ("data", "done", "lines")

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.data: bytes | None = None
        self.done = 0

    def unwritten(self) -> list[str]:
        """The events not (entirely) written yet."""
        if self.data is None:
            return self.lines[self.done :]
        end = 0
        for i, line in enumerate(self.lines):
            end += len(line.encode()) + 1
            if end > self.done:
                return self.lines[i:]
        return []


@functools.cache
def batched_file_transport() -> type[Any]:
    """openlineage-python's file transport in append mode, writing a batch per open
    (the class is built on first use: openlineage is imported only once lineage is on).

    The base class opens the file once per event; the emitter writes chunks (:class:`Chunk`) of
    many pre-serialised events at once instead. ``emit`` (one event object) still works as
    in the base class. The output is the base transport's format: one JSON event per line.
    """
    from openlineage.client.transport.file import FileTransport, LocalFileHandler

    class BatchedFileTransport(FileTransport):
        kind = "file"

        def open_lines(self) -> Any:
            """The file, opened to append bytes (unbuffered when local: a short or failed
            write leaves nothing pending in a buffer); the caller closes it."""
            path = self.config.log_file_path
            try:
                if isinstance(self._file_handler, LocalFileHandler):
                    return open(self._file_handler._to_local_path(path), "ab", buffering=0)
                f = self._file_handler.open_file(path, "ab")
                if not hasattr(f, "write") and hasattr(f, "open"):
                    # fsspec.open() (a remote or memory:// path) gives an OpenFile: the
                    # file object is what its open() returns.
                    f = f.open()
                return f
            except OSError as exc:
                raise WriteError(path, exc) from exc

        def write_chunk(self, f: Any, chunk: Chunk) -> None:
            """Write the rest of ``chunk`` to ``f`` (from :meth:`open_lines`), advancing
            ``chunk.done`` by what the file took, even when a write fails."""
            data = chunk.data
            if data is None:
                data = chunk.data = ("\n".join(chunk.lines) + "\n").encode()
            size = len(data)
            try:
                if chunk.done == 0:  # the common case: one write takes it all
                    n = f.write(data)
                    chunk.done = size if n is None else n
                if chunk.done < size:
                    view = memoryview(data)
                    while chunk.done < size:
                        n = f.write(view[chunk.done :])
                        if n == 0:
                            raise OSError(errno.EIO, "the file took no bytes")
                        chunk.done = size if n is None else chunk.done + n
                f.flush()
            except OSError as exc:
                _cut_torn_line(f, chunk)
                raise WriteError(self.config.log_file_path, exc) from exc

    return BatchedFileTransport


def _cut_torn_line(f: Any, chunk: Chunk) -> None:
    """After a failed write that stopped mid-line, cut that line's written part off the
    file (truncating a file works on a full disk or past ``RLIMIT_FSIZE``) and rewind
    ``chunk.done`` to the line's start: the file keeps whole lines only, whether or not
    the fault goes away. Done only when the file ends where this write left it (no other
    writer appended since); otherwise the retry goes on from the byte it stopped at."""
    data, done = chunk.data, chunk.done
    if data is None or done == 0 or data[done - 1] == 10:  # nothing written, or whole lines
        return
    start = data.rfind(b"\n", 0, done) + 1
    try:
        fd = f.fileno()
        end = os.lseek(fd, 0, os.SEEK_CUR)  # where this (appending) write stopped
        if end == os.fstat(fd).st_size and end >= done - start:
            os.ftruncate(fd, end - (done - start))
            chunk.done = start
    except (OSError, AttributeError, ValueError):  # not a local file: go on from the byte
        pass


class Sink:
    """Where events go: a file (fast path) or any openlineage-python transport."""

    def __init__(self, transport_config: Mapping[str, Any]) -> None:
        cfg = dict(transport_config)
        self.kind = str(cfg.get("type"))
        self._lock = threading.Lock()
        self.path: Path | None = None
        self._file: Any = None
        self._client: Any = None
        if self.kind == "file":
            path = cfg.pop("path", None) or cfg.get("log_file_path")
            cfg["log_file_path"] = str(path)
            cfg.setdefault("append", True)
            cfg.pop("type", None)
            if not cfg["append"]:
                raise ValueError(
                    "lineage.transport: the file transport must append (append=True); "
                    "one file holds every run's events"
                )
            self.path = Path(cfg["log_file_path"]) if "://" not in cfg["log_file_path"] else None
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            from openlineage.client.transport.file import FileConfig

            self._file = batched_file_transport()(FileConfig.from_dict(cfg))
        else:
            from openlineage.client import OpenLineageClient
            from openlineage.client.transport import get_default_factory

            transport = get_default_factory().create(cfg)
            self._client = OpenLineageClient(transport=transport)

    @property
    def where(self) -> str:
        """The file events go to, or the transport's type."""
        return self._file.config.log_file_path if self._file is not None else self.kind

    def write(self, events: list[str]) -> None:
        """Write JSON events at once (raises :class:`WriteError` when that fails)."""
        batch = self.batch()
        try:
            batch.write(Chunk(events))
        finally:
            batch.close()

    def write_chunk(self, batch: Batch, chunk: Chunk) -> None:
        """Write the rest of ``chunk`` under the sink's lock (thread-safe: runs of one
        manager share the sink and interleave whole writes, never lines); the file
        transport's file is opened into ``batch`` at its first write."""
        with self._lock:
            file = self._file
            if file is not None:
                if batch.f is None:
                    batch.f = file.open_lines()
                file.write_chunk(batch.f, chunk)
                return
            lines = chunk.lines
            while chunk.done < len(lines):
                try:
                    self._client.emit(to_client_event(json.loads(lines[chunk.done])))
                except Exception as exc:
                    raise WriteError(self.kind, exc) from exc
                chunk.done += 1

    def batch(self) -> Batch:
        """A writer for one emitter batch (the file transport's file stays open for it)."""
        return Batch(self)

    def close(self) -> None:
        """Release the transport."""
        if self._client is not None:
            try:
                self._client.close(timeout=5.0)
            except Exception:  # pragma: no cover - best effort
                pass


class Batch:
    """The writes of one emitter batch: the file transport's file is opened at the first
    (by :meth:`Sink.write_chunk`) and closed by :meth:`close`."""

    __slots__ = ("f", "sink")

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.f: Any = None

    def write(self, chunk: Chunk) -> None:
        """Write the rest of ``chunk``; after a failure the file is closed (the next
        write opens it again)."""
        try:
            self.sink.write_chunk(self, chunk)
        except BaseException:
            try:
                self.close()
            except OSError:
                pass
            raise

    def close(self) -> None:
        """Close the file (if one was opened)."""
        f, self.f = self.f, None
        if f is not None:
            f.close()


#: How many unwritten events a report names (the count is always complete).
REPORT_NAMES = 20
#: Chunks (of up to :data:`LINES_PER_WRITE` events) a run keeps queued while writes fail:
#: about 64 MiB of 2 KB events. Past it, new events are counted as not written (and
#: reported) instead of growing the process without bound on a full disk.
MAX_PENDING = 1024


class Emitter:
    """A background thread draining ``put`` records through ``build`` into a sink.

    Events are never dropped silently: when a write fails, that chunk and every later one
    stay queued (in order) and the next batch writes them first, from the byte the failed
    write stopped at; what is still unwritten when the run ends is in :meth:`unwritten`.
    """

    def __init__(self, sink: Sink, build: Callable[[tuple[Any, ...], list[str]], None]) -> None:
        self.sink = sink
        self._build = build
        self._q: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self.put = self._q.put
        self._wake = threading.Event()
        #: Errors building events (each such record has no event).
        self.errors: list[BaseException] = []
        #: The last failed write while events are unwritten (``None`` once all are written).
        self.failure: WriteError | None = None
        #: Failed writes so far (retries included), and the last of them.
        self.failed_writes = 0
        self.last_failure: WriteError | None = None
        self._pending: deque[Chunk] = deque()
        #: Events not queued because :data:`MAX_PENDING` chunks were (the first few kept).
        self.dropped = 0
        self.dropped_first: list[str] = []
        self._thread = threading.Thread(target=self._loop, name="xlib-lineage", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        q = self._q
        build = self._build
        pending = self._pending
        done = False
        while not done:
            item = q.get()
            if item is not None:
                # Let records gather instead of waking per record: every wake-up takes
                # the GIL from the scheduler's lanes. finish() cuts the window short.
                self._wake.wait(WINDOW_S)
            events: list[str] = []
            batch = self.sink.batch()
            ok = True  # one failed write per batch: the next batch tries again
            n = 0
            while True:
                if item is None:
                    done = True
                    break
                try:
                    build(item, events)
                except Exception as exc:  # never lose the thread; report at the end
                    self.errors.append(exc)
                if len(events) >= LINES_PER_WRITE:
                    self._queue(events)
                    events = []
                    if ok:
                        ok = self._write(batch)
                n += 1
                if n >= BATCH:
                    break
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    break
            if events:
                self._queue(events)
            if pending and ok:
                self._write(batch)
            try:
                batch.close()
            except OSError as exc:
                self._failed(exc)

    def _write(self, batch: Batch) -> bool:
        """Write the queued chunks in order; stop at the first that fails (it stays
        queued, with what of it was written); ``False`` then."""
        pending = self._pending
        while pending:
            try:
                batch.write(pending[0])
            except Exception as exc:
                self._failed(exc)
                return False
            pending.popleft()
        self.failure = None
        return True

    def _failed(self, exc: BaseException) -> None:
        self.failed_writes += 1
        self.failure = exc if isinstance(exc, WriteError) else WriteError(self.sink.where, exc)
        self.last_failure = self.failure

    def _queue(self, events: list[str]) -> None:
        pending = self._pending
        if len(pending) < MAX_PENDING:
            pending.append(Chunk(events))
            return
        self.dropped += len(events)
        room = REPORT_NAMES - len(self.dropped_first)
        if room > 0:
            self.dropped_first.extend(events[:room])

    def unwritten(self) -> list[str]:
        """The events still queued (after :meth:`finish`: those the run could not write,
        beside the :attr:`dropped` ones)."""
        return [line for chunk in self._pending for line in chunk.unwritten()]

    def finish(self, timeout: float | None = None) -> None:
        """Write everything queued so far and stop the thread."""
        self._q.put(None)
        self._wake.set()
        self._thread.join(timeout)


def _describe(line: str) -> str:
    """An event as a report names it: its type and job."""
    try:
        e = json.loads(line)
        return f"{e['eventType']} {e['job']['name']}"
    except (ValueError, KeyError, TypeError):
        return line[:80]


def report(emitter: Emitter, log: Any) -> None:
    """Log what a finished emitter could not do (``log``: the run's, else this module's):
    ``lineage.emit_failed`` names the file, the errno, how many events were not written and
    the first :data:`REPORT_NAMES` of them; ``lineage.emit_recovered`` says writes failed
    and every event was written after all; ``lineage.build_failed`` counts records no
    event could be built from."""

    def out(event: str, **fields: Any) -> None:
        if log is not None:
            log.warning(event, **fields)
        else:
            _log.warning("%s %s", event, fields)

    lost = emitter.unwritten()
    count = len(lost) + emitter.dropped
    if emitter.dropped:
        lost += emitter.dropped_first
    fail = emitter.failure or emitter.last_failure
    if count:
        where, code = (fail.where, fail.errno) if fail is not None else (emitter.sink.where, None)
        out(
            "lineage.emit_failed",
            file=where,
            errno=code,
            error=str(fail),
            not_written=count,
            events=[_describe(line) for line in lost[:REPORT_NAMES]],
            failed_writes=emitter.failed_writes,
        )
    elif emitter.failed_writes:
        out("lineage.emit_recovered", failed_writes=emitter.failed_writes)
    if emitter.errors:
        err = emitter.errors[0]
        out(
            "lineage.build_failed",
            errors=len(emitter.errors),
            error=f"{type(err).__name__}: {err}",
        )
