"""The blob stream: what a blob's plaintext is, and how it is written and read.

Plaintext stream (what the sha256 names)::

    record*    type (1 byte: 0 pickle bytes, 1 out-of-band buffer) | length (8 bytes BE) | data

Writing: the pickler writes into a :class:`_Spill`, which keeps a small output in memory and
turns into a :class:`_Sink` (hashing on a helper thread, sealing chunk by chunk) once it
passes the threshold. Reading: :class:`_Plain` gives the unpickler the pickle bytes and
queues the out-of-band buffers aside, checking the sha256 at the end.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import queue
import struct
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .exceptions import StoreError

if TYPE_CHECKING:  # pragma: no cover
    from ._blobs import BlobRef, BlobStore, StreamSealer

_RECORD = struct.Struct(">BQ")
_PICKLE, _BUFFER = 0, 1
_STREAMED = frozenset({bytes, bytearray})  # pickled straight from their memory when large


# --- writing -----------------------------------------------------------------------------------


class _Hasher:
    """sha256 of the stream on a thread of its own: hashlib releases the GIL, so hashing
    runs beside the sealing and writing instead of after them. Fed read-only views of
    memory that stays alive and unchanged until :meth:`hexdigest` (the value being stored,
    or bytes objects)."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._small: list[Any] = []
        self._small_size = 0

    def update(self, mv: memoryview) -> None:
        if len(mv) < 65536:  # batch small pieces: a thread hop each would cost more
            self._small.append(bytes(mv))
            self._small_size += len(mv)
            if self._small_size < 65536:
                return
            mv = memoryview(b"".join(self._small))
            self._small, self._small_size = [], 0
        elif self._small:
            self._queue.put(b"".join(self._small))
            self._small, self._small_size = [], 0
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="xlib-blob-hash", daemon=True)
            self._thread.start()
        self._queue.put(mv)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self._hash.update(item)

    def hexdigest(self) -> str:
        if self._small:
            self._queue.put(b"".join(self._small))
            self._small = []
            if self._thread is None:
                self._hash.update(self._queue.get())
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        return self._hash.hexdigest()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None


class _Sink:
    """Hashes the plaintext stream and writes it (sealed chunk by chunk when a sealer is given)."""

    def __init__(self, fh: Any, sealer: StreamSealer | None, chunk: int) -> None:
        self.fh = fh
        self.sealer = sealer
        self.hash = _Hasher()
        self.size = 0
        self.chunk = chunk
        self.index = 0
        if sealer is not None:
            self.buf = bytearray(chunk)
            self.view = memoryview(self.buf)
            self.fill = 0

    def feed(self, data: Any) -> None:
        mv = memoryview(data).cast("B")
        n = len(mv)
        if not n:
            return
        self.hash.update(mv)  # the value's memory: no task changes it any more
        self.size += n
        if self.sealer is None:
            self.fh.write(mv)
            return
        pos = 0
        while pos < n:
            if self.fill == self.chunk:  # a full chunk with more to come: not the last
                self.fh.write(self.sealer.seal(self.view, self.index, False))
                self.index += 1
                self.fill = 0
            take = min(self.chunk - self.fill, n - pos)
            self.view[self.fill : self.fill + take] = mv[pos : pos + take]
            self.fill += take
            pos += take

    def finish(self) -> None:
        if self.sealer is not None:
            self.fh.write(self.sealer.seal(self.view[: self.fill], self.index, True))


class _Spill:
    """The pickler's file: keeps the stream in memory until it passes the threshold, then
    opens a blob and streams everything (earlier pieces first) into it."""

    def __init__(self, threshold: int, open_blob: Callable[[], _Sink]) -> None:
        self.threshold = threshold
        self.open_blob = open_blob
        self.pieces: list[Any] = []
        self.size = 0
        self.sink: _Sink | None = None

    def _spill(self) -> _Sink:
        sink = self.sink = self.open_blob()
        if self.pieces:
            self._record(_PICKLE, b"".join(self.pieces))
        self.pieces = []
        return sink

    def _record(self, kind: int, data: Any) -> None:
        assert self.sink is not None
        n = memoryview(data).nbytes
        self.sink.feed(_RECORD.pack(kind, n))
        self.sink.feed(data)

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        if self.sink is None:
            self.size += n
            if self.size <= self.threshold:
                self.pieces.append(bytes(data))
                return n
            self._spill()
        self._record(_PICKLE, data)
        return n

    def buffer(self, buf: pickle.PickleBuffer) -> bool:
        """The pickler's ``buffer_callback``: out of band once the stream is a blob."""
        raw = buf.raw()
        if self.sink is None:
            if self.size + raw.nbytes <= self.threshold:
                return True  # small: in band, the pickle stays inline
            self._spill()
        self._record(_BUFFER, raw)
        return False


def _pickler(
    fh: Any, buffer_callback: Callable[[pickle.PickleBuffer], bool], fallback: bool
) -> Any:
    if not fallback:
        return pickle.Pickler(fh, protocol=5, buffer_callback=buffer_callback)
    import cloudpickle

    return cloudpickle.CloudPickler(fh, protocol=5, buffer_callback=buffer_callback)


class _Plain(io.RawIOBase):
    """The pickle stream of a blob, for the unpickler (out-of-band buffers queued aside)."""

    def __init__(self, chunks: Iterator[bytes], ref: BlobRef, blobs: BlobStore) -> None:
        self._chunks = chunks
        self._cur = memoryview(b"")
        self._left = 0  # bytes left in the current pickle record
        self._queue: list[bytearray] = []
        self._hash = hashlib.sha256()
        self._size = 0
        self._ref = ref
        self._blobs = blobs

    def readable(self) -> bool:
        return True

    def _raw(self, out: memoryview) -> int:
        """Fill ``out`` from the plaintext stream; fewer bytes only at its end."""
        got = 0
        want = len(out)
        while got < want:
            if not self._cur:
                nxt = next(self._chunks, None)
                if nxt is None:
                    break
                self._hash.update(nxt)
                self._size += len(nxt)
                self._cur = memoryview(nxt)
                continue
            take = min(len(self._cur), want - got)
            out[got : got + take] = self._cur[:take]
            self._cur = self._cur[take:]
            got += take
        return got

    def _next_record(self) -> bool:
        head = bytearray(_RECORD.size)
        n = self._raw(memoryview(head))
        if n == 0:
            return False
        if n < _RECORD.size:
            raise StoreError(f"blob {self._ref.name!r} is truncated (record)")
        kind, size = _RECORD.unpack(head)
        if kind == _BUFFER:
            buf = bytearray(size)
            if self._raw(memoryview(buf)) != size:
                raise StoreError(f"blob {self._ref.name!r} is truncated (buffer)")
            self._queue.append(buf)
        elif kind == _PICKLE:
            self._left = size
        else:
            raise StoreError(f"blob {self._ref.name!r} is corrupt (record type {kind})")
        return True

    def readinto(self, b: Any) -> int:
        out = memoryview(b).cast("B")
        got = 0
        while got < len(out):
            if not self._left:
                if not self._next_record():
                    break
                continue
            take = min(self._left, len(out) - got)
            n = self._raw(out[got : got + take])
            got += n
            self._left -= n
            if n < take:
                raise StoreError(f"blob {self._ref.name!r} is truncated (pickle)")
        return got

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        buf = bytearray(size)
        n = self.readinto(buf)
        return bytes(buf[:n])

    def readline(self, size: int | None = -1) -> bytes:
        out = bytearray()
        while size is None or size < 0 or len(out) < size:
            c = self.read(1)
            if not c:
                break
            out += c
            if c == b"\n":
                break
        return bytes(out)

    def buffers(self) -> Iterator[bytearray]:
        """Out-of-band buffers, in order, as the unpickler asks for them."""
        while True:
            while not self._queue:
                if not self._next_record():
                    raise StoreError(f"blob {self._ref.name!r} is truncated (buffers)")
            yield self._queue.pop(0)

    def drain(self) -> None:
        """Read to the end and check the size and the sha256 the blob is named by."""
        sink = bytearray(1 << 16)
        while self._raw(memoryview(sink)):
            pass
        digest = self._ref.name.split("/")[1]
        if self._size != self._ref.size or self._hash.hexdigest() != digest:
            raise StoreError(
                f"blob {self._blobs.fs.path(self._ref.name)!r} does not match its content "
                "address (sha256): it was altered or replaced",
                path=self._blobs.fs.path(self._ref.name),
            )
