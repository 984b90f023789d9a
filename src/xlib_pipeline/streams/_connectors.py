"""The embedded connectors: iterables, JSON-lines files (tail with ``follow``), callbacks."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import threading
import time
from collections.abc import AsyncIterable, Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..exceptions import ConfigError, StreamError
from ._protocol import BaseSink, BaseSource, Checkpoint, Source, SourceBatch

_END = object()


def _make_encoder() -> Callable[[Any], str]:
    """The C encoder called directly (half the cost of json.dumps per record), else
    the standard encoder."""
    import json.encoder as je

    make = getattr(je, "c_make_encoder", None)
    if make is None:  # pragma: no cover - no C accelerator
        return json.JSONEncoder(ensure_ascii=False).encode
    enc = make(None, _not_json, je.encode_basestring, None, ": ", ", ", False, False, True)

    def encode(record: Any) -> str:
        return "".join(enc(record, 0))

    return encode


def _not_json(value: Any) -> Any:
    """The encoder's ``default``: the type of a value that is not JSON (the C encoder
    without one says only "'NoneType' object is not callable"); never the value, which the
    stream's stored error would quote in clear."""
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_ENCODE = _make_encoder()


class IterableSource(BaseSource):
    """Records from an iterable or an async iterable; the offset is the count consumed.

    ``seek(n)`` skips the first ``n`` records, so a restarted stream over the same
    (replayable) iterable continues where it stopped. An async iterable is drained on an
    event loop of its own, a few batches ahead at most (``prefetch`` records).
    """

    def __init__(
        self,
        records: Iterable[Any] | AsyncIterable[Any],
        *,
        prefetch: int = 10_000,
        url: str = "iterable",
    ) -> None:
        if not isinstance(records, Iterable | AsyncIterable):
            raise ConfigError(
                f"IterableSource expects an iterable or async iterable, "
                f"got {type(records).__name__}"
            )
        self.url = url
        self._records = records
        self._pos = 0
        self._it: Iterator[Any] | None = None
        self._q: queue.Queue[Any] | None = None
        self._prefetch = prefetch
        self._done = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def seek(self, offset: Any) -> None:
        skip = int(offset or 0)
        if isinstance(self._records, AsyncIterable) and not isinstance(self._records, Iterable):
            self._q = queue.Queue(maxsize=max(1, self._prefetch))
            self._thread = threading.Thread(
                target=self._drain, args=(self._records,), name="xlib-stream-aiter", daemon=True
            )
            self._thread.start()
        else:
            self._it = iter(self._records)
        self._pos = 0
        while self._pos < skip:
            if self._next(None) is _END:
                raise StreamError(
                    f"source {self.url}: the checkpoint is at record {skip}, but the iterable "
                    f"ends after {self._pos}; start over with from_start=True"
                )
            self._pos += 1

    def _drain(self, records: AsyncIterable[Any]) -> None:
        q = self._q
        assert q is not None

        async def pump() -> None:
            try:
                async for item in records:
                    while not self._stop.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            await asyncio.sleep(0)
                    if self._stop.is_set():
                        return
            except BaseException as exc:
                q.put(("__error__", exc))
                return
            q.put(_END)

        asyncio.run(pump())

    def _next(self, deadline: float | None) -> Any:
        if self._it is not None:
            return next(self._it, _END)
        assert self._q is not None
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            item = self._q.get(timeout=wait)
        except queue.Empty:
            return None
        if isinstance(item, tuple) and len(item) == 2 and item[0] == "__error__":
            raise StreamError(f"source {self.url}: the async iterable raised {item[1]!r}")
        return item

    def read(self, max_records: int, timeout: float) -> SourceBatch | None:
        if self._done:
            return None
        if self._it is None and self._q is None:
            self.seek(None)
        start = self._pos
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        append = out.append
        asynchronous = self._it is None
        while len(out) < max_records:
            if asynchronous:
                item = self._next(deadline)
                if item is None and time.monotonic() >= deadline:
                    break
            else:
                item = next(self._it, _END)  # type: ignore[arg-type]
            if item is _END:
                self._done = True
                break
            append(item)
            if asynchronous and time.monotonic() >= deadline:
                break
        self._pos = start + len(out)
        if not out and self._done:
            return None
        return SourceBatch(records=out, start=start, end=self._pos)

    def close(self) -> None:
        self._stop.set()


class JsonLinesSource(BaseSource):
    """JSON-lines file: one JSON value per line; the offset is a byte position.

    ``follow=True`` tails a growing file (as ``tail -f``): at its end the stream waits
    for more, polling every ``poll_interval`` seconds, and a half-written last line is
    read only once its newline arrives. Blank lines are skipped; a line that is not JSON
    stops the stream with an error naming the file, the line and the byte offset.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        follow: bool = False,
        poll_interval: float | None = None,
    ) -> None:
        self.path = Path(path)
        self.url = f"jsonl:{self.path}"
        if not isinstance(follow, bool):
            raise ConfigError(
                f"source {self.url}: follow must be true or false, got {follow!r}", key="follow"
            )
        if poll_interval is not None:
            if not follow:  # only a followed file waits (and polls) at its end
                raise ConfigError(
                    f"source {self.url}: poll_interval applies only to a followed file "
                    "(follow=true, CLI --follow); without it the source reads to the file's "
                    "end and stops",
                    key="poll_interval",
                )
            number = not isinstance(poll_interval, bool) and isinstance(poll_interval, int | float)
            if not number or not poll_interval > 0:  # (NaN too)
                raise ConfigError(
                    f"source {self.url}: poll_interval must be seconds > 0, got {poll_interval!r}",
                    key="poll_interval",
                )
        self.follow = follow
        self.poll_interval = 0.05 if poll_interval is None else float(poll_interval)
        self._f: Any = None
        self._pos = 0
        #: The file's size as last seen (by a read that reached its end, or a stat) and when
        #: (``time.monotonic()``): :meth:`lag` stats the file at most every LAG_INTERVAL s.
        self._size: int | None = None
        self._size_at = 0.0

    #: Seconds a size seen by a read or a stat is trusted for :meth:`lag`.
    LAG_INTERVAL = 0.25

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any]) -> JsonLinesSource:
        """``jsonl:PATH`` with options ``follow`` and ``poll_interval``."""
        path = url.split(":", 1)[1] if url.startswith("jsonl:") else url
        if not path:
            raise ConfigError(f"source {url!r}: expected jsonl:PATH")
        unknown = set(options) - {"follow", "poll_interval"}
        if unknown:
            raise ConfigError(
                f"source {url!r}: unknown option(s) {sorted(unknown)}; "
                "expected follow, poll_interval"
            )
        return cls(
            path, follow=options.get("follow", False), poll_interval=options.get("poll_interval")
        )

    def _open(self) -> None:
        if self._f is None:
            if self.follow and not self.path.exists():
                self.path.touch()
            try:
                self._f = open(self.path, "rb")  # noqa: SIM115 - kept open across batches
            except OSError as exc:
                raise StreamError(f"source {self.url}: cannot open the file: {exc}") from exc

    def seek(self, offset: Any) -> None:
        self._open()
        pos = int(offset or 0)
        size = os.fstat(self._f.fileno()).st_size
        if pos > size:
            raise StreamError(
                f"source {self.url}: the checkpoint is at byte {pos} but the file has only "
                f"{size} bytes (was it replaced?); start over with --from-start"
            )
        self._f.seek(pos)
        self._pos = pos
        self._size, self._size_at = size, time.monotonic()

    def read(self, max_records: int, timeout: float) -> SourceBatch | None:
        if self._f is None:
            self.seek(0)
        f = self._f
        start = self._pos
        lines: list[bytes] = []
        readline = f.readline
        deadline: float | None = None
        while len(lines) < max_records:
            line = readline()
            if line.endswith(b"\n"):
                lines.append(line)
                continue
            # The end of the file (as of this read): its size is known without a stat.
            now = time.monotonic()
            self._size = start + sum(map(len, lines)) + len(line)
            self._size_at = now
            if not self.follow:
                if line:
                    lines.append(line)
                if not lines:
                    return None
                break
            if line:  # half-written: read it again once complete
                f.seek(-len(line), os.SEEK_CUR)
            elif not lines:  # idle at the end: still the file it was (log rotation)?
                self._same_file(start)
            if deadline is None:
                deadline = now + timeout
            if now >= deadline:
                if not lines and timeout < self.poll_interval:
                    # Nothing new within a timeout shorter than the poll interval (0, say):
                    # still poll every poll_interval, not in a busy loop while idle.
                    time.sleep(self.poll_interval - timeout)
                break
            time.sleep(min(self.poll_interval, max(0.0, deadline - now)))
        end = start + sum(map(len, lines))  # where the file is (no lseek(2) for a tell())
        self._pos = end
        return SourceBatch(records=self._parse(lines, start), start=start, end=end)

    def _same_file(self, pos: int) -> None:
        """Refuse to wait on a file truncated below ``pos`` or replaced at its path (log
        rotation): the stream would wait forever, looking healthy (lag 0)."""
        st = os.fstat(self._f.fileno())
        if st.st_size < pos:
            raise StreamError(
                f"source {self.url}: the file was truncated to {st.st_size} bytes while the "
                f"stream was at byte {pos} (rotated with copytruncate?); what it holds now is "
                "not what the checkpoint counts: read it as a new stream (another name)"
            )
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return  # moved away: its replacement may not exist yet
        if (now.st_ino, now.st_dev) != (st.st_ino, st.st_dev):
            raise StreamError(
                f"source {self.url}: another file replaced it at its path (rotated?) after the "
                f"stream read the old one to its end (byte {pos}); read the new file as a new "
                "stream (another name)"
            )

    def _parse(self, lines: list[bytes], start: int) -> list[Any]:
        if not lines:
            return []
        try:
            parsed: list[Any] = json.loads(b"[" + b",".join(lines) + b"]")
        except ValueError:
            pass
        else:  # one value per line: a line "1, 2" or "[1" + "2]" parses joined, not alone
            if len(parsed) == len(lines):
                return parsed
        out: list[Any] = []
        pos = start
        for line in lines:
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError as exc:
                    raise StreamError(
                        f"source {self.url}: line {self._line_no(pos)} (byte {pos}) is not "
                        f"JSON: {exc}"
                    ) from None
            pos += len(line)
        return out

    def _line_no(self, pos: int) -> int:
        with open(self.path, "rb") as f:
            return f.read(pos).count(b"\n") + 1

    def lag(self) -> int | None:
        """Bytes behind the file's end as of the last read that reached the end or the last
        stat, whichever is newer; the file is stat'ed at most every :attr:`LAG_INTERVAL`
        seconds (not once per batch), or when the stream has read past the size it knew."""
        size = self._size
        now = time.monotonic()
        if size is None or size < self._pos or now - self._size_at >= self.LAG_INTERVAL:
            try:
                size = self.path.stat().st_size
            except OSError:
                return None
            self._size, self._size_at = size, now
        return max(0, size - self._pos)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


class JsonLinesSink(BaseSink):
    """Appends each output record as one JSON line; the position is the file's length.

    On restart the file is truncated to the checkpointed length, so a batch written but
    not checkpointed before a crash is written again exactly once. A new stream starts at
    the file's current end (existing content is kept). ``fsync=True`` makes each batch
    durable against power loss before its checkpoint commits (a killed process loses
    nothing either way).
    """

    #: Restored to its checkpoint on restart (truncated): see Sink.rewinds.
    rewinds = True

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.url = f"jsonl:{self.path}"
        if not isinstance(fsync, bool):  # "no" would be truthy: a sync nobody asked for
            raise ConfigError(
                f"sink {self.url}: fsync must be true or false, got {fsync!r}", key="fsync"
            )
        self.fsync = fsync
        self._f: Any = None
        self._pos = 0

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any]) -> JsonLinesSink:
        """``jsonl:PATH`` with option ``fsync``."""
        path = url.split(":", 1)[1] if url.startswith("jsonl:") else url
        if not path:
            raise ConfigError(f"sink {url!r}: expected jsonl:PATH")
        unknown = set(options) - {"fsync"}
        if unknown:
            raise ConfigError(f"sink {url!r}: unknown option(s) {sorted(unknown)}; expected fsync")
        return cls(path, fsync=options.get("fsync", False))

    def open(self, checkpoint: Checkpoint | None) -> Checkpoint | None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "ab")  # noqa: SIM115 - kept open across batches
        except OSError as exc:
            raise StreamError(f"sink {self.url}: cannot open the file: {exc}") from exc
        size = os.fstat(self._f.fileno()).st_size
        if checkpoint is None or checkpoint.position is None:
            self._pos = size
            return None
        pos = int(checkpoint.position)
        if size < pos:
            raise StreamError(
                f"sink {self.url}: the checkpoint says {pos} bytes were written but the file "
                f"has {size} (it was truncated or replaced); start over with --from-start"
            )
        if size > pos:
            self._f.truncate(pos)
        self._pos = pos
        return None

    def position(self) -> int:
        """The file's length as written by this stream."""
        return self._pos

    def write(self, records: Sequence[Any], checkpoint: Checkpoint, source: Source) -> Any:
        if not records:
            return self._pos
        try:
            data = ("\n".join(map(_ENCODE, records)) + "\n").encode()
        except (TypeError, ValueError) as exc:
            raise StreamError(
                f"sink {self.url}: batch {checkpoint.seq} has an output record that is not "
                f"JSON-serializable: {exc}"
            ) from exc
        self._f.write(data)
        self._f.flush()
        if self.fsync:
            os.fsync(self._f.fileno())
        self._pos += len(data)
        return self._pos

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


class CallbackSink(BaseSink):
    """Calls ``callback(records)`` for each batch (``callback(records, seq)`` with
    ``with_seq=True``, so the receiver can drop a batch it saw before a crash).

    A callback cannot be rolled back: after a crash the last batch may be delivered
    again (at least once); the sequence number makes it idempotent for the receiver.
    """

    def __init__(self, callback: Callable[..., Any], *, with_seq: bool = False) -> None:
        if not callable(callback):
            raise ConfigError(f"CallbackSink expects a callable, got {type(callback).__name__}")
        self.callback = callback
        self.with_seq = with_seq
        self.url = f"callback:{getattr(callback, '__qualname__', type(callback).__name__)}"
        self._count = 0

    def open(self, checkpoint: Checkpoint | None) -> Checkpoint | None:
        if checkpoint is not None and checkpoint.position is not None:
            self._count = int(checkpoint.position)
        return None

    def position(self) -> int:
        """Records delivered so far."""
        return self._count

    def write(self, records: Sequence[Any], checkpoint: Checkpoint, source: Source) -> Any:
        if self.with_seq:
            self.callback(list(records), checkpoint.seq)
        else:
            self.callback(list(records))
        self._count += len(records)
        return self._count
