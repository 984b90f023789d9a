"""The ciphertext format and the envelope cipher (AES-256-GCM data keys).

Layout of one stored payload (version 1)::

    ENCRYPTED_MAGIC  b"XLPENC"                  6 bytes
    version          0x01                       1 byte
    key id length    n                          1 byte
    master key id    UTF-8                      n bytes
    wrapped length   m (big-endian)             2 bytes
    wrapped data key (by the master key)        m bytes
    nonce            random                     12 bytes
    ciphertext || GCM tag                       len(payload) + 16 bytes

The payload is sealed with the data key under associated data
``b"XLPENC\\x01" + ref.aad()``: the kind, pipeline, run, task and tenant. A ciphertext
moved to another run, task or tenant fails authentication. The data key is wrapped with
the tenant as context, so another tenant's ciphertext does not even unwrap. The master key
id and wrapped key are *not* in the payload's AAD: rotation re-wraps the header and leaves
the sealed payload untouched.
"""

from __future__ import annotations

import os
import struct
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from xlib_pipeline import ENCRYPTED_MAGIC, DataShreddedError, PayloadRef, SecurityError

from ._keyring import KeyManagementService

VERSION = 1
_PREFIX = PREFIX = ENCRYPTED_MAGIC + bytes([VERSION])
_NONCE = 12


class _NoncePool:
    """Random 96-bit nonces sliced from one ``os.urandom`` read of many.

    One ``getrandom(2)`` per nonce released the GIL on every stored output; a pool reads
    4,096 at a time. The nonces wait in a deque: each ``popleft`` hands one to exactly one
    caller without a lock (two threads refilling at once add different random bytes). A
    forked child drops the pool it inherited, so parent and child never hand out the same
    bytes.
    """

    _COUNT = 4096

    def __init__(self) -> None:
        #: the nonces not handed out yet (``q.popleft()`` takes one; :meth:`take` when
        #: it is empty)
        self.q: deque[bytes] = deque()

    def take(self) -> bytes:
        q = self.q
        while True:
            try:
                return q.popleft()
            except IndexError:
                buf = os.urandom(_NONCE * self._COUNT)
                q.extend([buf[i : i + _NONCE] for i in range(0, len(buf), _NONCE)])

    def reset(self) -> None:
        self.q = deque()


_NONCES = NONCES = _NoncePool()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_NONCES.reset)
_U16 = struct.Struct(">H")
_CACHE_MAX = 4096


def _where(ref: PayloadRef) -> str:
    tenant = f", tenant {ref.tenant!r}" if ref.tenant else ""
    where = f"pipeline {ref.pipeline!r}, run {ref.run_id}{tenant}"
    return f"the stored {ref.kind} of task {ref.task!r} ({where})"


def _context(tenant: str | None) -> bytes:
    return (tenant or "").encode()


class Header:
    """A parsed ciphertext header (no secrets: ids and the wrapped key only)."""

    __slots__ = ("body", "key_id", "wrapped", "wrapped_at")

    def __init__(self, key_id: str, wrapped: bytes, body: int, wrapped_at: int) -> None:
        self.key_id = key_id
        self.wrapped = wrapped
        self.body = body  # offset of the nonce
        self.wrapped_at = wrapped_at  # offset of the key-id length byte


def parse_header(data: bytes, ref: PayloadRef) -> Header:
    """Parse the header of ``data``; :class:`SecurityError` when it is malformed."""
    if not data.startswith(ENCRYPTED_MAGIC):
        raise SecurityError(f"{_where(ref)} is not an xlib-pipeline ciphertext")
    if len(data) < 8 or data[6] != VERSION:
        version = data[6] if len(data) > 6 else None
        raise SecurityError(
            f"{_where(ref)} uses ciphertext format version {version!r}; this "
            f"xlib-pipeline-encryption reads version {VERSION} (upgrade the plugin)"
        )
    n = data[7]
    pos = 8 + n
    if len(data) < pos + 2:
        raise SecurityError(f"{_where(ref)} is truncated (header)")
    try:
        kid = data[8:pos].decode()
    except UnicodeDecodeError:
        raise SecurityError(f"{_where(ref)} has a corrupt header (key id)") from None
    (m,) = _U16.unpack_from(data, pos)
    pos += 2
    wrapped = data[pos : pos + m]
    pos += m
    if len(wrapped) != m or len(data) < pos + _NONCE + 16:
        raise SecurityError(f"{_where(ref)} is truncated (header)")
    return Header(kid, bytes(wrapped), pos, 7)


class Envelope:
    """Seals and opens payloads for one manager; thread-safe.

    Data keys are made per tenant (per tenant *and run* when ``per_run_keys``), wrapped once
    by the KMS and cached; opened data keys are cached by ``(key id, wrapped, tenant)``.
    ``kms`` is a callable returning the current :class:`KeyManagementService` (so a keyring
    re-read after rotation takes effect for new data keys).
    """

    def __init__(self, kms: Callable[[], KeyManagementService], *, per_run_keys: bool) -> None:
        self._kms = kms
        self.per_run_keys = per_run_keys
        #: scope -> (ciphertext header, data key's AEAD, master key id)
        self._seal: dict[tuple[str, str | None], tuple[bytes, AESGCM, str]] = {}
        self._open: dict[tuple[str, bytes, str], AESGCM] = {}
        self._lock = threading.Lock()

    # -- encrypt ---------------------------------------------------------------------------

    def sealing_key(self, ref: PayloadRef) -> tuple[bytes, AESGCM, str]:
        """(ciphertext header, the data key's AEAD, master key id) sealing ``ref``'s payload
        (a data key made and wrapped on first use of its scope)."""
        scope = (ref.tenant or "", ref.run_id if self.per_run_keys else None)
        entry = self._seal.get(scope)
        if entry is not None:
            return entry
        with self._lock:
            entry = self._seal.get(scope)
            if entry is None:
                from cryptography.hazmat.primitives.ciphers.aead import AESGCM

                kms = self._kms()
                dek = AESGCM.generate_key(bit_length=256)
                kid, wrapped = kms.wrap(dek, _context(ref.tenant))
                aead = AESGCM(dek)
                entry = (_header(kid, wrapped), aead, kid)
                self._seal[scope] = entry
                self._remember(kid, wrapped, ref.tenant or "", aead)
            return entry

    def seal(self, data: bytes, ref: PayloadRef) -> bytes:
        """Encrypt ``data`` bound to ``ref`` (its run, task, tenant and kind)."""
        return self.seal_noting_key(data, ref)[0]

    def seal_noting_key(self, data: bytes, ref: PayloadRef) -> tuple[bytes, str]:
        """:meth:`seal`, and the id of the master key the data key is wrapped under (what
        :func:`key_id_of` reads back from the ciphertext)."""
        header, aead, kid = self.sealing_key(ref)
        nonce = _NONCES.take()
        return header + nonce + aead.encrypt(nonce, data, _PREFIX + ref.aad()), kid

    @staticmethod
    def key_id(data: bytes) -> str | None:
        """:func:`key_id_of`, for callers holding the envelope (no import per call)."""
        return key_id_of(data)

    def forget_run(self, run_id: str) -> None:
        """Drop the cached per-run data keys of ``run_id`` (new runs get new keys)."""
        if self.per_run_keys:
            with self._lock:
                for scope in [s for s in self._seal if s[1] == run_id]:
                    del self._seal[scope]

    def forget_tenant(self, tenant: str | None) -> None:
        """Drop every cached data key of ``tenant`` (after shredding it): new data of the
        tenant gets a new data key, old ciphertexts can no longer be opened from cache."""
        t = tenant or ""
        with self._lock:
            for scope in [s for s in self._seal if s[0] == t]:
                del self._seal[scope]
            for ck in [k for k in self._open if k[2] == t]:
                del self._open[ck]

    def reset(self) -> None:
        """Forget every cached sealing key (after the active master key changed)."""
        with self._lock:
            self._seal.clear()

    # -- decrypt ---------------------------------------------------------------------------

    def _remember(self, kid: str, wrapped: bytes, tenant: str, aead: AESGCM) -> None:
        if len(self._open) >= _CACHE_MAX:
            self._open.clear()
        self._open[(kid, wrapped, tenant)] = aead

    def _opening_key(self, head: Header, ref: PayloadRef) -> AESGCM:
        tenant = ref.tenant or ""
        ck = (head.key_id, head.wrapped, tenant)
        aead = self._open.get(ck)
        if aead is not None:
            return aead
        try:
            kms = self._kms()
        except Exception as exc:  # the keyring itself: file mode, format, missing variable
            raise SecurityError(
                f"{_where(ref)} cannot be decrypted: the keyring cannot be loaded: {exc}"
            ) from exc
        known = getattr(kms, "key_ids", None)
        if known is not None and head.key_id not in known:
            raise SecurityError(
                f"{_where(ref)} cannot be decrypted: master key {head.key_id!r} is missing "
                f"from the keyring ({getattr(kms, 'source', 'key service')}; it holds "
                f"{', '.join(known)}); restore the key that encrypted it"
            )
        try:
            dek = kms.unwrap(head.key_id, head.wrapped, _context(ref.tenant))
        except Exception as exc:
            if known is not None:  # our Keyring: only authentication fails here
                reason = (
                    f"its data key does not unwrap under master key {head.key_id!r} for "
                    "this tenant: it was encrypted for another tenant, or altered"
                )
            else:
                reason = (
                    f"the key service refused to unwrap its data key under master key "
                    f"{head.key_id!r} ({type(exc).__name__}: {exc}): encrypted for another "
                    "tenant, altered, or the service failed"
                )
            raise SecurityError(f"{_where(ref)} cannot be decrypted: {reason}") from None
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        aead = AESGCM(dek)
        with self._lock:
            self._remember(head.key_id, head.wrapped, tenant, aead)
        return aead

    def open(self, data: bytes, ref: PayloadRef) -> bytes:
        """Decrypt a payload sealed for ``ref``; :class:`SecurityError` if anything differs
        (:class:`DataShreddedError` when its data key was shredded)."""
        from cryptography.exceptions import InvalidTag

        head = parse_header(data, ref)
        if head.key_id == SHREDDED_KEY_ID:
            raise DataShreddedError(
                f"{_where(ref)} was crypto-shredded (right to erasure): its data key was "
                "destroyed, so it can never be decrypted; its digest in signed evidence remains"
            )
        aead = self._opening_key(head, ref)
        b = head.body
        try:
            return aead.decrypt(data[b : b + _NONCE], data[b + _NONCE :], _PREFIX + ref.aad())
        except InvalidTag:
            raise SecurityError(
                f"{_where(ref)} failed authentication: the ciphertext was made for a "
                "different run, task or tenant, or it was altered"
            ) from None

    # -- rotation --------------------------------------------------------------------------

    def rewrap(self, data: bytes, ref: PayloadRef) -> bytes | None:
        """Re-wrap the data key of ``data`` under the active master key.

        Returns the new ciphertext, or ``None`` when it already uses the active key. The
        sealed payload is untouched (and authenticated first, so nothing altered is
        re-wrapped).
        """
        head = parse_header(data, ref)
        kms = self._kms()
        if head.key_id in (kms.active_key_id, SHREDDED_KEY_ID):
            return None
        self.open(data, ref)  # authenticate before re-wrapping
        try:
            dek = kms.unwrap(head.key_id, head.wrapped, _context(ref.tenant))
        except Exception:
            raise SecurityError(f"{_where(ref)}: its data key cannot be unwrapped") from None
        kid, wrapped = kms.wrap(dek, _context(ref.tenant))
        return _header(kid, wrapped) + data[head.body :]


def key_id_of(data: bytes) -> str | None:
    """The master key id a ciphertext's data key is wrapped under (``None``: not one)."""
    if not data.startswith(_PREFIX) or len(data) < 8:
        return None
    n = data[7]
    try:
        return data[8 : 8 + n].decode()
    except UnicodeDecodeError:
        return None


#: The key id written in place of a master key id when a data key is shredded.
SHREDDED_KEY_ID = "shredded"


def shredded(data: bytes) -> bytes:
    """``data`` with its wrapped data key destroyed: the header names no master key and
    holds no wrapped key; the sealed payload stays, undecryptable."""
    ref = PayloadRef(run_id="?", pipeline="?", task="?", tenant=None)
    head = parse_header(data, ref)
    return _header(SHREDDED_KEY_ID, b"") + data[head.body :]


def is_shredded(data: bytes) -> bool:
    """Whether ``data`` is a ciphertext whose data key was shredded."""
    return key_id_of(data) == SHREDDED_KEY_ID


def _header(kid: str, wrapped: bytes) -> bytes:
    raw = kid.encode()
    if len(raw) > 255 or len(wrapped) > 0xFFFF:
        raise SecurityError(
            f"master key id {kid!r} or its wrapped data key is too long for the header"
        )
    return _PREFIX + bytes([len(raw)]) + raw + _U16.pack(len(wrapped)) + wrapped
