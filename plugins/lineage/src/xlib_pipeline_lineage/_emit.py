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

import functools
import json
import logging
import queue
import threading
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


@functools.cache
def batched_file_transport() -> type[Any]:
    """openlineage-python's file transport in append mode, writing a batch per open
    (the class is built on first use: openlineage is imported only once lineage is on).

    The base class opens the file once per event; the emitter calls ``write_lines``
    with many pre-serialised events at once instead. ``emit`` (one event object) still
    works as in the base class. The output is the base transport's format: one JSON event
    per line.
    """
    from openlineage.client.transport.file import FileTransport

    class BatchedFileTransport(FileTransport):
        kind = "file"

        def open_lines(self) -> Any:
            """The file, opened to append (for :meth:`write_lines`; the caller closes it)."""
            path = self.config.log_file_path
            try:
                return self._file_handler.open_file(path, "a")
            except OSError as exc:
                raise RuntimeError(f"lineage file {path!r} is not writable: {exc}") from exc

        def write_lines(self, lines: list[str], f: Any = None) -> None:
            """Append already-serialised events, one per line: to ``f`` (from
            :meth:`open_lines`; flushed before returning) or else to the file opened for
            this call."""
            if f is None:
                with self.open_lines() as f:
                    self.write_lines(lines, f)
                return
            try:
                for k in range(0, len(lines), LINES_PER_WRITE):
                    f.write("\n".join(lines[k : k + LINES_PER_WRITE]) + "\n")
                f.flush()
            except OSError as exc:
                path = self.config.log_file_path
                raise RuntimeError(f"lineage file {path!r} is not writable: {exc}") from exc

    return BatchedFileTransport


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

    def write(self, events: list[str]) -> None:
        """Write a batch of JSON events (thread-safe: runs of one manager share the sink)."""
        if self._file is not None:
            with self._lock:
                self._file.write_lines(events)
            return
        with self._lock:
            for e in events:
                self._client.emit(to_client_event(json.loads(e)))

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
    and closed by :meth:`close`; each :meth:`write` is whole lines, written and flushed
    under the sink's lock (runs of one manager interleave whole writes, never lines)."""

    __slots__ = ("_f", "sink")

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self._f: Any = None

    def write(self, events: list[str]) -> None:
        """Write ``events`` (JSON texts, one per line)."""
        sink = self.sink
        file = sink._file
        if file is None:
            sink.write(events)
            return
        with sink._lock:
            if self._f is None:
                self._f = file.open_lines()
            file.write_lines(events, self._f)

    def close(self) -> None:
        """Close the file (if one was opened)."""
        f, self._f = self._f, None
        if f is not None:
            f.close()


class Emitter:
    """A background thread draining ``put`` records through ``build`` into a sink."""

    def __init__(self, sink: Sink, build: Callable[[tuple[Any, ...], list[str]], None]) -> None:
        self.sink = sink
        self._build = build
        self._q: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self.put = self._q.put
        self._wake = threading.Event()
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._loop, name="xlib-lineage", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        q = self._q
        build = self._build
        done = False
        while not done:
            item = q.get()
            if item is not None:
                # Let records gather instead of waking per record: every wake-up takes
                # the GIL from the scheduler's lanes. finish() cuts the window short.
                self._wake.wait(WINDOW_S)
            events: list[str] = []
            batch = self.sink.batch()
            failed = False  # a failed write drops the rest of its batch (one error each)
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
                    if not failed:
                        failed = self._write(batch, events)
                    events = []
                n += 1
                if n >= BATCH:
                    break
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    break
            if events and not failed:
                self._write(batch, events)
            try:
                batch.close()
            except Exception as exc:
                self.errors.append(exc)

    def _write(self, batch: Batch, events: list[str]) -> bool:
        """Write ``events``; ``True`` when that failed (the error is kept)."""
        try:
            batch.write(events)
        except Exception as exc:
            self.errors.append(exc)
            return True
        return False

    def finish(self, timeout: float | None = None) -> None:
        """Write everything queued so far and stop the thread."""
        self._q.put(None)
        self._wake.set()
        self._thread.join(timeout)
