"""The content-addressed blob store: large task outputs as files named by their sha256.

An output whose pickle passes ``store.blobs.threshold`` (default 1 MiB) is streamed, while it
is pickled, into a blob file; the run store keeps only a small reference (itself passed
through the ``encrypt`` hook). Identical outputs are stored once per *scope* (``plain``, or
the scope an encryption plugin gives: one per tenant).

Plaintext stream (what the sha256 names)::

    record*    type (1 byte: 0 pickle bytes, 1 out-of-band buffer) | length (8 bytes BE) | data

Pickle protocol 5 with out-of-band buffers: numpy/Arrow buffers are written from their own
memory, and a large ``bytes`` goes from the object to the file without a copy (the pickler
hands big payloads straight to ``write``). Memory stays bounded by one chunk.

File layout::

    b"XLPBLOB" | version 0x01 | chunk size (4 bytes BE) | header length (4 bytes BE) | header
    chunk*     plaintext: the stream as it is (verified against its sha256 when read);
               sealed: each chunk of ``chunk size`` plaintext bytes sealed by the
               ``encrypt_stream`` hook's sealer with its index and a final flag (STREAM)

The header is opaque to the core (the sealer's: key id, wrapped data key, salt), so key
rotation rewrites only the header and copies the sealed chunks as they are.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import os
import pickle
import queue
import re
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import attrs

from .exceptions import ConfigError, StoreError

FILE_MAGIC = b"XLPBLOB"
FILE_VERSION = 1
REF_MAGIC = b"XLPBREF\x01"
_FILE_HEAD = struct.Struct(">7sBII")
_RECORD = struct.Struct(">BQ")
_PICKLE, _BUFFER = 0, 1
_STREAMED = frozenset({bytes, bytearray})  # pickled straight from their memory when large
_dumps = pickle.dumps
DEFAULT_THRESHOLD = 1 << 20
DEFAULT_CHUNK = 1 << 20
#: Blobs unreferenced for less than this many seconds are never removed by a prune (a run
#: may have written one a moment ago and not yet committed the row that references it).
GRACE_S = 300.0
_SCOPE = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_NAME = re.compile(r"([A-Za-z0-9_.-]{1,128})/([0-9a-f]{64})")


class StreamSealer(Protocol):
    """What the ``encrypt_stream`` hook returns: seals one blob chunk by chunk."""

    #: Written at the start of the blob (key id, wrapped data key, salt: no secret).
    header: bytes
    #: The namespace identical content is shared in (a tenant's scope): ``[A-Za-z0-9_.-]+``.
    scope: str
    #: Bytes each sealed chunk adds (the AEAD tag).
    overhead: int

    def seal(self, chunk: memoryview, index: int, final: bool) -> bytes:
        """Seal chunk ``index`` (``final`` for the last one)."""
        ...


class StreamOpener(Protocol):
    """What the ``decrypt_stream`` hook returns: opens one blob's chunks."""

    overhead: int

    def open(self, sealed: bytes, index: int, final: bool) -> bytes:
        """Open chunk ``index``; raise ``SecurityError`` when it does not authenticate."""
        ...


@attrs.frozen(kw_only=True)
class BlobRef:
    """Where a stored output went: ``name`` (``scope/sha256``) and its plaintext size."""

    name: str
    size: int

    def encode(self) -> bytes:
        """The reference as stored in the run store (before the ``encrypt`` hook)."""
        return REF_MAGIC + f"{self.name} {self.size}".encode()

    @classmethod
    def decode(cls, data: bytes) -> BlobRef | None:
        """The reference in ``data``, or ``None`` when ``data`` is an inline pickle."""
        if not data.startswith(REF_MAGIC):
            return None
        name, _, size = bytes(data[len(REF_MAGIC) :]).decode().partition(" ")
        if _NAME.fullmatch(name) is None or not size.isdigit():
            raise StoreError(f"a stored blob reference is corrupt: {bytes(data)[:80]!r}")
        return cls(name=name, size=int(size))


def blobs_section(value: Any) -> dict[str, Any]:
    """Validate ``store.blobs``: ``{url, threshold, chunk_size}`` (all optional)."""
    if value is None or value is True:
        value = {}
    if not isinstance(value, dict):
        raise ValueError(
            f"'blobs' must be a mapping like {{'url': 's3://bucket/blobs', "
            f"'threshold': 1048576}}, got {value!r}"
        )
    allowed = {"url", "threshold", "chunk_size"}
    unknown = set(value) - allowed
    if unknown:
        raise ValueError(
            f"unknown key(s) {sorted(unknown)} in 'blobs'; expected some of {sorted(allowed)}"
        )
    url = value.get("url")
    if url is not None and (not isinstance(url, str | Path) or not str(url)):
        raise ValueError(f"'blobs.url' must be a folder or an fsspec URL, got {url!r}")
    out: dict[str, Any] = {"url": None if url is None else str(url)}
    for key, default, low, high in (
        ("threshold", DEFAULT_THRESHOLD, 0, 256 << 20),
        ("chunk_size", DEFAULT_CHUNK, 4096, 64 << 20),
    ):
        v = value.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            raise ValueError(f"'blobs.{key}' must be an integer from {low} to {high}, got {v!r}")
        out[key] = v
    return out


# --- file systems -----------------------------------------------------------------------------


class _LocalFS:
    """Blob files in a local folder (0700; files 0600), written with fsync."""

    def __init__(self, root: str) -> None:
        self.root = Path(root).expanduser()
        self.where = str(self.root)

    def path(self, name: str) -> str:
        return str(self.root / name)

    def create(self, name: str) -> Any:
        path = self.root / name
        try:
            for folder in (self.root, path.parent):
                if not folder.exists():
                    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise _fault(str(path), "cannot be created", exc) from exc
        return open(fd, "wb", buffering=0)

    def commit(self, fh: Any, tmp: str, name: str) -> bool:
        """Make ``tmp`` durable as ``name``; False when ``name`` existed (deduplicated)."""
        os.fsync(fh.fileno())
        fh.close()
        final = self.root / name
        if final.exists():
            os.unlink(self.root / tmp)
            os.utime(final)  # refreshed: a prune's grace period starts again
            return False
        os.replace(self.root / tmp, final)
        dfd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return True

    def discard(self, tmp: str) -> None:
        try:
            os.unlink(self.root / tmp)
        except OSError:
            pass

    def open(self, name: str) -> tuple[Any, int]:
        fh = open(self.root / name, "rb")  # noqa: SIM115 - closed by the reader
        return fh, os.fstat(fh.fileno()).st_size

    def exists(self, name: str) -> bool:
        return (self.root / name).exists()

    def remove(self, name: str) -> None:
        try:
            os.unlink(self.root / name)
        except FileNotFoundError:
            pass

    def mtime(self, name: str) -> float:
        return os.stat(self.root / name).st_mtime

    def names(self) -> Iterator[str]:
        if not self.root.is_dir():
            return
        for scope in sorted(self.root.iterdir()):
            if scope.is_dir():
                for f in sorted(scope.iterdir()):
                    name = f"{scope.name}/{f.name}"
                    if _NAME.fullmatch(name):
                        yield name


class _FsspecFS:
    """Blob files under any fsspec URL (``s3://``, ``gs://``, ``abfs://``, ``memory://`` ...)."""

    def __init__(self, url: str) -> None:
        try:
            import fsspec  # type: ignore[import-untyped]
        except ImportError:
            raise ConfigError(
                f"store.blobs.url {url!r} needs fsspec: pip install 'xlib-pipeline[fsspec]' "
                "(and the driver of its scheme, such as s3fs or gcsfs)",
                key="store.blobs.url",
            ) from None
        try:
            self.fs, root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as exc:
            raise ConfigError(
                f"store.blobs.url {url!r}: its file system cannot be used: {exc}",
                key="store.blobs.url",
            ) from exc
        self.root = root.rstrip("/")
        self.where = url

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def create(self, name: str) -> Any:
        try:
            self.fs.makedirs(self.path(name).rsplit("/", 1)[0], exist_ok=True)
            return self.fs.open(self.path(name), "wb")
        except OSError as exc:
            raise _fault(self.path(name), "cannot be created", exc) from exc

    def commit(self, fh: Any, tmp: str, name: str) -> bool:
        fh.close()
        if self.fs.exists(self.path(name)):
            self.fs.rm(self.path(tmp))
            return False
        self.fs.mv(self.path(tmp), self.path(name))
        return True

    def discard(self, tmp: str) -> None:
        try:
            self.fs.rm(self.path(tmp))
        except (OSError, FileNotFoundError):
            pass

    def open(self, name: str) -> tuple[Any, int]:
        return self.fs.open(self.path(name), "rb"), int(self.fs.size(self.path(name)))

    def exists(self, name: str) -> bool:
        return bool(self.fs.exists(self.path(name)))

    def remove(self, name: str) -> None:
        try:
            self.fs.rm(self.path(name))
        except FileNotFoundError:
            pass

    def mtime(self, name: str) -> float:
        try:
            modified = self.fs.modified(self.path(name))
            return float(modified.timestamp())
        except (NotImplementedError, OSError, AttributeError):
            return 0.0

    def names(self) -> Iterator[str]:
        try:
            found = self.fs.find(self.root)
        except FileNotFoundError:
            return
        for path in sorted(found):
            name = str(path).rstrip("/").split("/")
            joined = "/".join(name[-2:])
            if _NAME.fullmatch(joined):
                yield joined


def _fault(path: str, what: str, exc: OSError) -> StoreError:
    code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return StoreError(f"blob {path!r} {what}: {exc.strerror or exc} (errno {code})", path=path)


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


class BlobStore:
    """Large outputs as content-addressed files, in a local folder or under an fsspec URL."""

    def __init__(
        self,
        url: str,
        *,
        threshold: int = DEFAULT_THRESHOLD,
        chunk_size: int = DEFAULT_CHUNK,
    ) -> None:
        self.url = url
        self.threshold = threshold
        self.chunk_size = chunk_size
        self.fs: _LocalFS | _FsspecFS = (
            _FsspecFS(url) if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", url) else _LocalFS(url)
        )

    def __repr__(self) -> str:
        return f"BlobStore({self.fs.where!r}, threshold={self.threshold})"

    # -- writing -------------------------------------------------------------------------------

    def dump(self, value: Any, sealer: Callable[[], StreamSealer | None]) -> bytes | BlobRef | None:
        """Pickle ``value``: the pickle itself when it stays under the threshold, else the
        :class:`BlobRef` of the blob it was written to (``sealer()`` asked once, then).
        ``None`` when it cannot be pickled, even by cloudpickle.

        A large ``bytes``-like value is streamed by a pickler straight from its memory; any
        other value is pickled in one call (the fast path for the many small outputs), its
        out-of-band buffers (numpy, Arrow) left where they are and written from there.
        """
        if type(value) not in _STREAMED or len(value) <= self.threshold:
            oob: list[pickle.PickleBuffer] = []
            try:
                raw = _dumps(value, protocol=5, buffer_callback=oob.append)
            except Exception:
                pass  # cloudpickle, below
            else:
                if not oob:
                    if len(raw) <= self.threshold:
                        return raw
                elif len(raw) + sum(b.raw().nbytes for b in oob) <= self.threshold:
                    return _dumps(value, protocol=5)
                state: dict[str, Any] = {}
                try:
                    sink = self._open_blob(sealer, state)
                    for buf in oob:  # buffers first: queued when the unpickler wants them
                        mv = buf.raw()
                        sink.feed(_RECORD.pack(_BUFFER, mv.nbytes))
                        sink.feed(mv)
                    sink.feed(_RECORD.pack(_PICKLE, len(raw)))
                    sink.feed(raw)
                    del raw
                    return self._commit(sink, state)
                except OSError as exc:
                    self._abort(state)
                    raise _fault(self.fs.where, "cannot be written", exc) from exc
                except BaseException:
                    self._abort(state)
                    raise
        for fallback in (False, True):
            state = {}
            spill = _Spill(self.threshold, functools.partial(self._open_blob, sealer, state))
            try:
                _pickler(spill, spill.buffer, fallback).dump(value)
            except StoreError:
                self._abort(state)
                raise
            except OSError as exc:
                self._abort(state)
                raise _fault(self.fs.where, "cannot be written", exc) from exc
            except Exception:
                self._abort(state)
                if fallback:
                    return None
                continue
            if spill.sink is None:
                return b"".join(spill.pieces)
            try:
                return self._commit(spill.sink, state)
            except OSError as exc:
                self._abort(state)
                raise _fault(self.fs.where, "cannot be written", exc) from exc
        return None  # pragma: no cover - the loop returns

    def _open_blob(self, sealer: Callable[[], StreamSealer | None], state: dict[str, Any]) -> _Sink:
        seal = sealer()
        scope = "plain" if seal is None else seal.scope
        if _SCOPE.fullmatch(scope) is None:
            raise StoreError(f"a stream sealer gave an invalid blob scope {scope!r}")
        tmp = f"{scope}/.tmp-{uuid.uuid4().hex}"
        fh = self.fs.create(tmp)
        state.update(fh=fh, tmp=tmp, scope=scope)
        header = b"" if seal is None else bytes(seal.header)
        fh.write(_FILE_HEAD.pack(FILE_MAGIC, FILE_VERSION, self.chunk_size, len(header)))
        fh.write(header)
        sink = state["sink"] = _Sink(fh, seal, self.chunk_size)
        return sink

    def _commit(self, sink: _Sink, state: dict[str, Any]) -> BlobRef:
        sink.finish()
        name = f"{state['scope']}/{sink.hash.hexdigest()}"
        self.fs.commit(state["fh"], state["tmp"], name)
        state.clear()
        return BlobRef(name=name, size=sink.size)

    def _abort(self, state: dict[str, Any]) -> None:
        sink = state.get("sink")
        if sink is not None:
            sink.hash.stop()
        fh = state.get("fh")
        if fh is not None:
            try:
                fh.close()
            except OSError:
                pass
            self.fs.discard(state["tmp"])

    # -- reading -------------------------------------------------------------------------------

    def _open(self, name: str) -> tuple[Any, int, int, bytes]:
        if _NAME.fullmatch(name) is None:
            raise StoreError(f"not a blob name: {name!r}")
        try:
            fh, size = self.fs.open(name)
        except FileNotFoundError:
            raise StoreError(
                f"blob {self.fs.path(name)!r} is missing from the blob store {self.fs.where!r}",
                path=self.fs.path(name),
            ) from None
        except OSError as exc:
            raise _fault(self.fs.path(name), "cannot be read", exc) from exc
        head = fh.read(_FILE_HEAD.size)
        if len(head) < _FILE_HEAD.size:
            fh.close()
            raise StoreError(f"blob {self.fs.path(name)!r} is truncated (header)")
        magic, version, chunk, hlen = _FILE_HEAD.unpack(head)
        if magic != FILE_MAGIC or version != FILE_VERSION:
            fh.close()
            raise StoreError(
                f"blob {self.fs.path(name)!r} is not an xlib-pipeline blob of version "
                f"{FILE_VERSION}",
                path=self.fs.path(name),
            )
        header = fh.read(hlen)
        if len(header) != hlen:
            fh.close()
            raise StoreError(f"blob {self.fs.path(name)!r} is truncated (header)")
        return fh, size - _FILE_HEAD.size - hlen, chunk, header

    def header(self, name: str) -> bytes:
        """The sealer's header of blob ``name`` (``b""`` for a plaintext blob)."""
        fh, _, _, header = self._open(name)
        fh.close()
        return header

    def replace_header(self, name: str, header: bytes) -> None:
        """Rewrite blob ``name`` with a new header, its sealed chunks copied as they are
        (key rotation re-wraps only the data key)."""
        fh, _, chunk, _ = self._open(name)
        tmp = f"{name.split('/')[0]}/.tmp-{uuid.uuid4().hex}"
        out = self.fs.create(tmp)
        try:
            with fh:
                out.write(_FILE_HEAD.pack(FILE_MAGIC, FILE_VERSION, chunk, len(header)))
                out.write(header)
                while True:
                    data = fh.read(4 << 20)
                    if not data:
                        break
                    out.write(data)
            if isinstance(self.fs, _LocalFS):
                os.fsync(out.fileno())
                out.close()
                os.replace(self.fs.root / tmp, self.fs.root / name)
            else:
                out.close()
                self.fs.fs.rm(self.fs.path(name))
                self.fs.fs.mv(self.fs.path(tmp), self.fs.path(name))
        except BaseException:
            try:
                out.close()
            except OSError:
                pass
            self.fs.discard(tmp)
            raise

    def load(self, ref: BlobRef, opener: Callable[[bytes], StreamOpener | None]) -> Any:
        """Unpickle blob ``ref``, opening its chunks with ``opener(header)``.

        Truncation, reordered or altered chunks and a wrong key fail authentication; a
        plaintext blob is checked against its sha256 name.
        """
        fh, body, chunk, header = self._open(ref.name)
        with fh:
            try:
                opened = opener(header)
            except BaseException:
                raise
            if header and opened is None:
                raise StoreError(
                    f"blob {self.fs.path(ref.name)!r} is encrypted, but no plugin can decrypt "
                    "it (install and enable xlib-pipeline-encryption)",
                    path=self.fs.path(ref.name),
                )
            stream = _Plain(self._chunks(fh, body, chunk, opened, ref.name), ref, self)
            try:
                value = pickle.Unpickler(stream, buffers=stream.buffers()).load()
            except (pickle.UnpicklingError, EOFError, ValueError) as exc:
                raise StoreError(
                    f"blob {self.fs.path(ref.name)!r} cannot be read back: {exc}",
                    path=self.fs.path(ref.name),
                ) from exc
            stream.drain()
        return value

    def _chunks(
        self, fh: Any, body: int, chunk: int, opener: StreamOpener | None, name: str
    ) -> Iterator[bytes]:
        if opener is None:
            while True:
                data = fh.read(chunk)
                if not data:
                    return
                yield data
        sealed = chunk + opener.overhead
        count = max(1, -(-body // sealed))
        for index in range(count):
            data = fh.read(sealed)
            final = index == count - 1
            if not data:
                raise StoreError(f"blob {self.fs.path(name)!r} is truncated")
            yield opener.open(data, index, final)

    # -- housekeeping --------------------------------------------------------------------------

    def exists(self, name: str) -> bool:
        """Whether blob ``name`` is stored."""
        return self.fs.exists(name)

    def names(self) -> Iterator[str]:
        """Every stored blob name (``scope/sha256``)."""
        yield from self.fs.names()

    def remove_unreferenced(self, candidates: set[str], referenced: set[str]) -> list[str]:
        """Delete the ``candidates`` no row references any more, unless written or reused
        within the last :data:`GRACE_S` seconds. Returns the names removed."""
        cutoff = time.time() - GRACE_S
        removed = []
        for name in sorted(candidates - referenced):
            try:
                if self.fs.mtime(name) > cutoff:
                    continue
                self.fs.remove(name)
            except FileNotFoundError:
                continue
            except OSError:
                continue  # left for the next prune
            removed.append(name)
        return removed


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
