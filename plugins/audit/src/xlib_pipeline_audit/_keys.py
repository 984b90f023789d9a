"""The trail's default HMAC key: a 0600 file outside the data folder, created on first use.

An unkeyed trail (plain SHA-256 chain) detects accidental damage, but anyone who can write
the trail can append a forged record with a correct hash, and the next writer anchors it.
So ``audit_logging: true`` keys the trail by default, as the encryption plugin does for its
master keys: the key lives in ``$XLIB_PIPELINE_KEYS_DIR`` (else
``$XDG_CONFIG_HOME/xlib-pipeline/keys``, else ``~/.config/xlib-pipeline/keys``), never inside
the data folder, in the file ``audit-hmac.key`` (64 hex characters, mode 0600).
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from xlib_pipeline import ConfigError, data_dir
from xlib_pipeline.files import check_private_file

KEYS_DIR_ENV = "XLIB_PIPELINE_KEYS_DIR"
DEFAULT_KEY_FILE = "audit-hmac.key"

_log = logging.getLogger("xlib_pipeline.audit")


def default_key_dir() -> Path:
    """``$XLIB_PIPELINE_KEYS_DIR``, else ``$XDG_CONFIG_HOME/xlib-pipeline/keys``, else
    ``~/.config/xlib-pipeline/keys`` (the same folder as the encryption plugin's keys)."""
    env = os.environ.get(KEYS_DIR_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".config"
    return base / "xlib-pipeline" / "keys"


def default_key_path() -> Path:
    """Where the default audit HMAC key file lives."""
    return default_key_dir() / DEFAULT_KEY_FILE


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def read_key_file(path: Path) -> bytes:
    """The key in ``path``; refuses a file other users can read, or an empty one."""
    try:
        st = path.stat()
        data = path.read_bytes().rstrip(b"\r\n")
    except OSError as exc:
        raise ConfigError(
            f"audit key file {str(path)!r} cannot be read: {exc.strerror}", key="audit"
        ) from exc
    check_private_file(path, st, "audit key file")
    if not data:
        raise ConfigError(f"audit key file {str(path)!r} is empty", key="audit")
    return data


def default_key(*, create: bool) -> bytes | None:
    """The default audit HMAC key; created (0600, outside the data folder) when asked.

    ``None`` when the file does not exist and ``create`` is false.
    """
    folder = default_key_dir()
    if _inside(folder, data_dir()):
        raise ConfigError(
            f"the default key folder {str(folder)!r} is inside the data folder "
            f"{str(data_dir())!r}; the audit key must never sit beside the trail it protects: "
            f"set {KEYS_DIR_ENV} elsewhere, or configure audit.hmac_key_file",
            key="audit",
        )
    path = folder / DEFAULT_KEY_FILE
    if not path.exists():
        if not create:
            return None
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it meanwhile
            return read_key_file(path)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        os.chmod(path, 0o600)
        _log.warning(
            "audit.key_file_created path=%s: the audit trail is keyed (HMAC-SHA256) with a "
            "new key there (mode 0600); back it up, and give it to 'xlib-pipeline audit "
            "verify --key-file' on other machines",
            path,
        )
    return read_key_file(path)


def refuse_unkeyed_trail(path: Path) -> None:
    """Refuse to key an existing trail that was written without a key (by name, with the
    two ways out), instead of the writer's generic 'configured for hmac-sha256' error."""
    from ._head import head_path, read_head

    try:
        head = read_head(head_path(path))
    except (ValueError, UnicodeDecodeError):
        return  # the writer reports a garbled head itself
    if head is not None and head.get("alg") == "sha256":
        raise ConfigError(
            f"audit trail {str(path)!r} was written without a key (a plain SHA-256 chain), "
            "and trails are keyed by default now: keep appending to it unkeyed with "
            "audit.keyed: false, or start a keyed trail at another audit.path",
            key="audit.keyed",
        )
