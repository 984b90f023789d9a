"""The evidence signing key: an Ed25519 pair, private half 0600 outside the data folder.

The same rule as the encryption plugin's master keys: keys never sit beside the data they
vouch for. The default file is ``$XLIB_PIPELINE_KEYS_DIR/evidence-signing.pem`` (else
``$XDG_CONFIG_HOME/xlib-pipeline/keys/...``, else ``~/.config/xlib-pipeline/keys/...``);
the public half is written beside it as ``<name>.pub.pem``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from xlib_pipeline import ConfigError, data_dir
from xlib_pipeline.files import check_private_file

if TYPE_CHECKING:  # pragma: no cover
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# cryptography is imported when a key is made or read: the CLI's --help shows the default
# key file without it.


_log = logging.getLogger("xlib_pipeline.evidence")
KEYS_DIR_ENV = "XLIB_PIPELINE_KEYS_DIR"
DEFAULT_KEY_FILE = "evidence-signing.pem"


def default_key_dir() -> Path:
    """``$XLIB_PIPELINE_KEYS_DIR``, else ``$XDG_CONFIG_HOME/xlib-pipeline/keys``, else
    ``~/.config/xlib-pipeline/keys`` (the encryption plugin's key folder)."""
    env = os.environ.get(KEYS_DIR_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".config"
    return base / "xlib-pipeline" / "keys"


def default_key_file() -> Path:
    """The signing key used when ``evidence.signing_key_file`` is not set."""
    return default_key_dir() / DEFAULT_KEY_FILE


def public_file_of(private: Path) -> Path:
    """Where the public half of ``private`` is written: ``<stem>.pub.pem`` beside it."""
    name = private.name.removesuffix(".pem")
    return private.with_name(name + ".pub.pem")


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def check_location(path: Path) -> None:
    """Refuse a signing key inside the data folder (ConfigError naming both)."""
    if _inside(path, data_dir()):
        raise ConfigError(
            f"evidence signing key {str(path)!r} is inside the data folder "
            f"{str(data_dir())!r}; a key must never sit beside what it vouches for: keep it "
            f"elsewhere (set {KEYS_DIR_ENV} or evidence.signing_key_file)",
            key="evidence.signing_key_file",
        )


def generate(path: str | os.PathLike[str], *, force: bool = False) -> tuple[Path, Path, str]:
    """Write a new Ed25519 key pair; return ``(private file, public file, key id)``.

    The private key is PKCS#8 PEM with mode 0600 from its first byte; an existing file is
    never overwritten unless ``force``.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ._dsse import key_id, public_pem

    file = Path(path).expanduser().absolute()
    check_location(file)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(file, flags, 0o600)
    except FileExistsError:
        raise ConfigError(
            f"signing key {str(file)!r} already exists; refusing to overwrite it (pass "
            "--force to replace it: packs signed by the old key then need its public key)",
            key="evidence.signing_key_file",
        ) from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(file, 0o600)
    pub = public_file_of(file)
    pub.write_bytes(public_pem(key.public_key()))
    return file, pub, key_id(key.public_key())


def create_default(path: Path) -> None:
    """Create the default signing key on first use (``evidence: true`` without a key file),
    saying where: like the encryption plugin's default master key."""
    try:
        _, pub, kid = generate(path)
    except ConfigError:  # another manager created it meanwhile
        return
    _log.warning(
        "evidence.signing_key_created path=%s key_id=%s: no evidence.signing_key_file is "
        "configured, so a signing key was created there (mode 0600); give auditors %s",
        path,
        kid,
        pub,
    )


def load_private(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Read a signing key; SecurityError when it is readable by others or not Ed25519."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    file = Path(path).expanduser()
    try:
        st = file.stat()
        data = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"evidence signing key {str(file)!r} does not exist; create it with "
            f"'xlib-pipeline evidence keygen {file}'",
            key="evidence.signing_key_file",
        ) from None
    check_private_file(file, st, "evidence signing key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"evidence signing key {str(file)!r} is not an unencrypted PEM private key ({exc})",
            key="evidence.signing_key_file",
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(
            f"evidence signing key {str(file)!r} holds a {type(key).__name__}; expected "
            "Ed25519 (create one with 'xlib-pipeline evidence keygen')",
            key="evidence.signing_key_file",
        )
    return key
