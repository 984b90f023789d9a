"""Master keys: the local keyring (env var or key file) and the KMS interface.

A *master key* never encrypts payloads; it wraps the per-tenant *data keys* that do
(envelope encryption). Anything with ``active_key_id``, ``wrap`` and ``unwrap`` (the
:class:`KeyManagementService` protocol) can hold master keys: the local :class:`Keyring`
does it with AES-256-GCM, a cloud KMS adapter would call its service.

Key file format (JSON, mode 0600)::

    {"format": "xlib-pipeline-keyring/1",
     "keys": [{"id": "mk-20250101-1a2b3c4d", "created": "2025-01-01T00:00:00+00:00",
               "key": "<base64 of 32 random bytes>"}, ...]}

The *last* key is the active (encrypting) one; earlier keys only decrypt. The env-var
form is the same JSON, or the compact ``id:base64[,id:base64...]`` (last one active).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import attrs

from xlib_pipeline import ConfigError, SecurityError
from xlib_pipeline.files import check_private_file

KEY_FILE_FORMAT = "xlib-pipeline-keyring/1"
MASTER_KEY_BYTES = 32
#: Associated data prefix of a wrapped data key; the wrap context (tenant) follows.
WRAP_AAD = b"xlib-pipeline/data-key/v1\x1f"
_NONCE = 12


@runtime_checkable
class KeyManagementService(Protocol):
    """What holds master keys: implement these three members to plug in a KMS.

    ``wrap`` encrypts a 32-byte data key under the *active* master key and returns
    ``(key_id, wrapped)``; ``unwrap`` reverses it with the master key named ``key_id``
    and must raise (any exception) when ``wrapped`` or ``context`` do not match.
    ``context`` is associated data (the tenant the data key belongs to): a wrapped key
    presented under another context must fail to unwrap. Key ids are at most 255 bytes
    of UTF-8; wrapped keys at most 65535 bytes.
    """

    @property
    def active_key_id(self) -> str:
        """The id of the master key new data keys are wrapped under."""
        ...

    def wrap(self, data_key: bytes, context: bytes) -> tuple[str, bytes]:
        """Wrap ``data_key`` under the active master key; return ``(key_id, wrapped)``."""
        ...

    def unwrap(self, key_id: str, wrapped: bytes, context: bytes) -> bytes:
        """Recover a data key wrapped by ``wrap``; raise when it does not authenticate."""
        ...


@attrs.frozen(kw_only=True)
class MasterKey:
    """One master key. Its material never appears in ``repr``, logs or errors."""

    id: str
    material: bytes = attrs.field(repr=False)
    created: str = ""

    def __attrs_post_init__(self) -> None:
        if not self.id or len(self.id.encode()) > 255 or any(c in self.id for c in ",: \n"):
            raise ConfigError(f"master key id {self.id!r} must be 1-255 bytes without ',: '")
        if len(self.material) != MASTER_KEY_BYTES:
            raise ConfigError(
                f"master key {self.id!r} must be {MASTER_KEY_BYTES} bytes (AES-256), "
                f"got {len(self.material)}"
            )


def new_master_key() -> MasterKey:
    """A fresh random AES-256 master key with a dated, unique id."""
    now = datetime.now(UTC)
    kid = f"mk-{now:%Y%m%d}-{secrets.token_hex(4)}"
    return MasterKey(
        id=kid, material=secrets.token_bytes(MASTER_KEY_BYTES), created=now.isoformat()
    )


class Keyring:
    """Local master keys implementing :class:`KeyManagementService` with AES-256-GCM wraps.

    ``source`` says where the keys came from (``"env:VAR"``, ``"file:PATH"``) for messages.
    """

    def __init__(self, keys: Sequence[MasterKey], *, source: str) -> None:
        if not keys:
            raise ConfigError(f"keyring {source} holds no master keys")
        self.source = source
        self._keys = {k.id: k for k in keys}
        if len(self._keys) != len(keys):
            raise ConfigError(f"keyring {source} lists a master key id twice")
        self._order = [k.id for k in keys]
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # on first keyring

        self._aead = {k.id: AESGCM(k.material) for k in keys}

    def __repr__(self) -> str:
        return f"Keyring(source={self.source!r}, keys={self._order!r})"

    @property
    def active_key_id(self) -> str:
        """The newest key: the one new data keys are wrapped under."""
        return self._order[-1]

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Every key id, oldest first."""
        return tuple(self._order)

    def wrap(self, data_key: bytes, context: bytes) -> tuple[str, bytes]:
        """Wrap ``data_key`` with AES-256-GCM under the active key (nonce + ciphertext)."""
        kid = self.active_key_id
        nonce = os.urandom(_NONCE)
        return kid, nonce + self._aead[kid].encrypt(nonce, data_key, WRAP_AAD + context)

    def unwrap(self, key_id: str, wrapped: bytes, context: bytes) -> bytes:
        """Unwrap with master key ``key_id``; :class:`SecurityError` when it cannot."""
        from cryptography.exceptions import InvalidTag

        aead = self._aead.get(key_id)
        if aead is None:
            raise SecurityError(
                f"master key {key_id!r} is not in the keyring ({self.source}); "
                f"known keys: {', '.join(self._order)}"
            )
        try:
            return aead.decrypt(wrapped[:_NONCE], wrapped[_NONCE:], WRAP_AAD + context)
        except InvalidTag:
            raise SecurityError(
                f"the data key wrapped under master key {key_id!r} does not authenticate "
                "in this context (another tenant, or altered)"
            ) from None

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def from_env(cls, var: str) -> Keyring:
        """Read the keyring from environment variable ``var`` (JSON or ``id:b64,...``)."""
        value = os.environ.get(var)
        if not value:
            raise ConfigError(
                f"encryption keyring: environment variable {var!r} is not set or empty; "
                f"create keys with 'xlib-pipeline keys generate FILE' and export them",
                key="encryption.keyring",
            )
        source = f"env:{var}"
        text = value.strip()
        if text.startswith("{"):
            return cls(_parse_json(text, source), source=source)
        keys = []
        for item in text.split(","):
            kid, sep, b64 = item.strip().partition(":")
            if not sep:
                raise ConfigError(
                    f"encryption keyring {source}: expected 'id:base64key[,id:base64key]' "
                    "or key-file JSON",
                    key="encryption.keyring",
                )
            keys.append(MasterKey(id=kid, material=_b64(b64, kid, source)))
        return cls(keys, source=source)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Keyring:
        """Read a key file; refuse one that other users can read (like ssh does)."""
        file = Path(path).expanduser()
        source = f"file:{file}"
        try:
            st = file.stat()
        except FileNotFoundError:
            raise ConfigError(
                f"encryption keyring: key file {str(file)!r} does not exist; create it with "
                f"'xlib-pipeline keys generate {file}'",
                key="encryption.keyring",
            ) from None
        check_private_file(file, st, "key file")
        return cls(_parse_json(file.read_text(), source), source=source)

    @classmethod
    def load(cls, spec: Mapping[str, Any]) -> Keyring:
        """Build from the config form ``{"env": VAR}`` or ``{"file": PATH}``."""
        if "env" in spec:
            return cls.from_env(str(spec["env"]))
        return cls.from_file(str(spec["file"]))


def _b64(text: str, kid: str, source: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(
            f"encryption keyring {source}: master key {kid!r} is not valid base64",
            key="encryption.keyring",
        ) from None


def _parse_json(text: str, source: str) -> list[MasterKey]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"encryption keyring {source} is not valid JSON: {exc.msg}") from None
    if not isinstance(data, dict) or data.get("format") != KEY_FILE_FORMAT:
        raise ConfigError(
            f"encryption keyring {source}: expected a JSON object with format {KEY_FILE_FORMAT!r}"
        )
    keys = []
    for entry in data.get("keys") or ():
        if not isinstance(entry, dict) or "id" not in entry or "key" not in entry:
            raise ConfigError(f"encryption keyring {source}: each key needs 'id' and 'key'")
        kid = str(entry["id"])
        keys.append(
            MasterKey(
                id=kid, material=_b64(entry["key"], kid, source), created=entry.get("created", "")
            )
        )
    return keys


# --- key files ------------------------------------------------------------------------------


def _dump(keys: Sequence[MasterKey]) -> str:
    return json.dumps(
        {
            "format": KEY_FILE_FORMAT,
            "keys": [
                {"id": k.id, "created": k.created, "key": base64.b64encode(k.material).decode()}
                for k in keys
            ],
        },
        indent=2,
    )


def _write_private(path: Path, text: str, *, exclusive: bool) -> None:
    """Write ``text`` to ``path`` with mode 0600 from the first byte (no umask window)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if exclusive:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(path, 0o600)
        return
    tmp = path.with_name(path.name + f".tmp-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def generate_key_file(path: str | os.PathLike[str]) -> MasterKey:
    """Create a key file holding one new master key (mode 0600); refuse to overwrite."""
    file = Path(path).expanduser()
    key = new_master_key()
    try:
        _write_private(file, _dump([key]), exclusive=True)
    except FileExistsError:
        raise ConfigError(
            f"key file {str(file)!r} already exists; refusing to overwrite it (add a key "
            f"with 'xlib-pipeline keys add {file}')"
        ) from None
    return key


def add_key(path: str | os.PathLike[str]) -> MasterKey:
    """Append a new master key to a key file; it becomes the active (encrypting) key."""
    file = Path(path).expanduser()
    ring = Keyring.from_file(file)
    keys = [ring._keys[k] for k in ring.key_ids]
    key = new_master_key()
    _write_private(file, _dump([*keys, key]), exclusive=False)
    return key
