"""The content-addressed blob store: large task outputs as files named by their sha256.

An output whose pickle passes ``store.blobs.threshold`` (default 1 MiB) is streamed, while it
is pickled, into a blob file; the run store keeps only a small reference (itself passed
through the ``encrypt`` hook). Identical outputs are stored once per *scope* (``plain``, or
the scope an encryption plugin gives: one per tenant).

The plaintext stream (what the sha256 names) is written and read by :mod:`._blob_stream`;
the files live where :mod:`._blob_fs` puts them (a local folder or an fsspec URL).

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

import functools
import os
import pickle
import re
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import attrs

from ._blob_fs import _NAME, _fault, _FsspecFS, _LocalFS
from ._blob_stream import _BUFFER, _PICKLE, _RECORD, _STREAMED, _pickler, _Plain, _Sink, _Spill
from .exceptions import StoreError

FILE_MAGIC = b"XLPBLOB"
FILE_VERSION = 1
REF_MAGIC = b"XLPBREF\x01"
_FILE_HEAD = struct.Struct(">7sBII")
_dumps = pickle.dumps
DEFAULT_THRESHOLD = 1 << 20
DEFAULT_CHUNK = 1 << 20
#: Blobs unreferenced for less than this many seconds are never removed by a prune (a run
#: may have written one a moment ago and not yet committed the row that references it).
GRACE_S = 300.0
_SCOPE = re.compile(r"[A-Za-z0-9_.-]{1,128}")


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
                    # In band, each buffer costs a few opcode bytes more than out of band:
                    # the inline pickle itself must stay under the threshold too.
                    inline = _dumps(value, protocol=5)
                    if len(inline) <= self.threshold:
                        return inline
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
