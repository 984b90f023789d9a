"""Streaming authenticated encryption of blobs (the STREAM construction of age and Tink).

A blob gets its own 256-bit data key, wrapped by the master key like any data key (tenant
as context). Its chunks are sealed with AES-256-GCM under a *segment key* derived by
HKDF-SHA256 from the data key and a random 32-byte salt, with the nonce::

    nonce prefix (7 random bytes) | chunk index (4 bytes BE) | final flag (1 byte)

so every chunk is bound to its position and the last one says it is the last: a chunk
dropped, repeated, moved or cut off at the end fails authentication, as does a wrong key.
Memory stays bounded by the chunk size.

Header (stored at the blob's start, no secret)::

    b"XLPENC" | 0x02 | key id length | key id | wrapped length (2 BE) | wrapped data key
    | tenant length | tenant | salt (32) | nonce prefix (7)

Rotation re-wraps the data key and writes a new header; the sealed chunks stay as they are.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from xlib_pipeline import ENCRYPTED_MAGIC, DataShreddedError, PayloadRef, SecurityError

from ._envelope import SHREDDED_KEY_ID
from ._keyring import KeyManagementService

STREAM_VERSION = 2
_PREFIX = ENCRYPTED_MAGIC + bytes([STREAM_VERSION])
_U16 = struct.Struct(">H")
_INDEX = struct.Struct(">IB")
_INFO = b"xlib-pipeline/blob/v1\x1f"
_SCOPE_SAFE = re.compile(r"[A-Za-z0-9_.-]{1,60}")
TAG = 16


def _segment_key(dek: bytes, salt: bytes, tenant: str) -> AESGCM:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_INFO + tenant.encode())
    return AESGCM(hkdf.derive(dek))


def _aad(tenant: str) -> bytes:
    return _PREFIX + b"blob\x1f" + tenant.encode()


class Header:
    """A parsed blob header."""

    __slots__ = ("key_id", "prefix", "salt", "tenant", "wrapped")

    def __init__(self, key_id: str, wrapped: bytes, tenant: str, salt: bytes, prefix: bytes):
        self.key_id = key_id
        self.wrapped = wrapped
        self.tenant = tenant
        self.salt = salt
        self.prefix = prefix

    def encode(self) -> bytes:
        kid = self.key_id.encode()
        tenant = self.tenant.encode()
        if len(kid) > 255 or len(self.wrapped) > 0xFFFF or len(tenant) > 255:
            raise SecurityError("a master key id, wrapped key or tenant is too long for a blob")
        return (
            _PREFIX
            + bytes([len(kid)])
            + kid
            + _U16.pack(len(self.wrapped))
            + self.wrapped
            + bytes([len(tenant)])
            + tenant
            + self.salt
            + self.prefix
        )

    @classmethod
    def parse(cls, data: bytes, where: str) -> Header:
        if not data.startswith(_PREFIX):
            raise SecurityError(f"{where}: not an xlib-pipeline encrypted blob header")
        try:
            pos = len(_PREFIX)
            n = data[pos]
            kid = data[pos + 1 : pos + 1 + n].decode()
            pos += 1 + n
            (m,) = _U16.unpack_from(data, pos)
            wrapped = data[pos + 2 : pos + 2 + m]
            pos += 2 + m
            t = data[pos]
            tenant = data[pos + 1 : pos + 1 + t].decode()
            pos += 1 + t
            salt, prefix = data[pos : pos + 32], data[pos + 32 : pos + 39]
        except (IndexError, UnicodeDecodeError, struct.error):
            raise SecurityError(f"{where}: the encrypted blob header is corrupt") from None
        if len(wrapped) != m or len(salt) != 32 or len(prefix) != 7 or pos + 39 != len(data):
            raise SecurityError(f"{where}: the encrypted blob header is corrupt")
        return cls(kid, bytes(wrapped), tenant, bytes(salt), bytes(prefix))


class Sealer:
    """Seals one blob (returned by the ``encrypt_stream`` hook)."""

    overhead = TAG

    def __init__(self, kms: KeyManagementService, ref: PayloadRef, scope: str) -> None:
        tenant = ref.tenant or ""
        dek = AESGCM.generate_key(bit_length=256)
        kid, wrapped = kms.wrap(dek, tenant.encode())
        head = Header(kid, wrapped, tenant, os.urandom(32), os.urandom(7))
        self.header = head.encode()
        self.scope = scope
        self._aead = _segment_key(dek, head.salt, tenant)
        self._prefix = head.prefix
        self._aad = _aad(tenant)

    def seal(self, chunk: memoryview, index: int, final: bool) -> bytes:
        if index > 0xFFFFFFFF:
            raise SecurityError("a blob has more chunks than the STREAM nonce can count")
        nonce = self._prefix + _INDEX.pack(index, 1 if final else 0)
        return self._aead.encrypt(nonce, chunk, self._aad)


class Opener:
    """Opens one blob's chunks (returned by the ``decrypt_stream`` hook)."""

    overhead = TAG

    def __init__(self, kms: Callable[[], KeyManagementService], header: bytes, ref: PayloadRef):
        self._where = f"the stored output of task {ref.task!r} (run {ref.run_id}), a blob"
        head = Header.parse(header, self._where)
        tenant = ref.tenant or ""
        if head.tenant != tenant:
            raise SecurityError(
                f"{self._where} cannot be decrypted: it was encrypted for another tenant"
            )
        if head.key_id == SHREDDED_KEY_ID:
            raise DataShreddedError(
                f"{self._where} was crypto-shredded (right to erasure): its data key was "
                "destroyed, so it can never be decrypted; its digest in signed evidence remains"
            )
        try:
            service = kms()
        except Exception as exc:
            raise SecurityError(
                f"{self._where} cannot be decrypted: the keyring cannot be loaded: {exc}"
            ) from exc
        known = getattr(service, "key_ids", None)
        if known is not None and head.key_id not in known:
            raise SecurityError(
                f"{self._where} cannot be decrypted: master key {head.key_id!r} is missing "
                f"from the keyring (it holds {', '.join(known)}); restore the key that "
                "encrypted it"
            )
        try:
            dek = service.unwrap(head.key_id, head.wrapped, tenant.encode())
        except Exception:
            raise SecurityError(
                f"{self._where} cannot be decrypted: its data key does not unwrap under "
                f"master key {head.key_id!r} for this tenant (another tenant's, or altered)"
            ) from None
        self._aead = _segment_key(dek, head.salt, tenant)
        self._prefix = head.prefix
        self._aad = _aad(tenant)

    def open(self, sealed: bytes, index: int, final: bool) -> bytes:
        nonce = self._prefix + _INDEX.pack(index, 1 if final else 0)
        try:
            return self._aead.decrypt(nonce, sealed, self._aad)
        except InvalidTag:
            what = "the last chunk" if final else f"chunk {index}"
            raise SecurityError(
                f"{self._where} failed authentication at {what}: it was truncated, its "
                "chunks reordered or altered, or the key is wrong"
            ) from None


def scope_for(ref: PayloadRef, per_run: bool) -> str:
    """The blob scope of ``ref``: identical outputs share a blob only within it."""
    tenant = ref.tenant or "_"
    scope = f"t-{tenant}"
    if per_run:
        run = ref.run_id if _SCOPE_SAFE.fullmatch(ref.run_id) else _digest(ref.run_id)
        scope += f".r-{run}"
    return scope[:128]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def rewrap_header(kms: KeyManagementService, header: bytes, where: str) -> bytes | None:
    """``header`` with its data key re-wrapped under the active master key (``None`` when
    it already is). The unwrap authenticates the wrapped key first."""
    head = Header.parse(header, where)
    if head.key_id == kms.active_key_id:
        return None
    try:
        dek = kms.unwrap(head.key_id, head.wrapped, head.tenant.encode())
    except Exception:
        raise SecurityError(f"{where}: its data key cannot be unwrapped") from None
    kid, wrapped = kms.wrap(dek, head.tenant.encode())
    return Header(kid, wrapped, head.tenant, head.salt, head.prefix).encode()


def shredded_header(header: bytes, where: str) -> bytes | None:
    """``header`` with its wrapped data key destroyed (``None`` when it already is): the
    sealed chunks stay and can never be opened, whatever master keys survive."""
    head = Header.parse(header, where)
    if head.key_id == SHREDDED_KEY_ID:
        return None
    return Header(SHREDDED_KEY_ID, b"", head.tenant, head.salt, head.prefix).encode()


def tenant_of_header(header: bytes, where: str) -> str:
    """The tenant a blob was sealed for ("" for none)."""
    return Header.parse(header, where).tenant


def key_id_of_header(header: bytes) -> str | None:
    """The master key id of a blob header (``None``: not one)."""
    try:
        return Header.parse(header, "blob").key_id
    except SecurityError:
        return None
