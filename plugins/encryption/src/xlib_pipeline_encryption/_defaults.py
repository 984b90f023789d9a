"""The embedded default keyring: created on first use, never silently replaced."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xlib_pipeline import ENCRYPTED_MAGIC, ConfigError, data_dir

from ._keyfile import DEFAULT_KEY_FILE, KEYS_DIR_ENV, default_key_dir
from ._keyring import Keyring, generate_key_file
from ._plugin import _log


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def stored_key_ids(store: Any) -> list[str]:
    """Master key ids named by the encrypted outputs in ``store`` (sorted, unique)."""
    found: set[str] = set()
    if store is None:
        return []
    for _run, _task, _tenant, blob in store.iter_outputs():
        if blob and blob.startswith(ENCRYPTED_MAGIC) and len(blob) > 8:
            n = blob[7]
            try:
                found.add(bytes(blob[8 : 8 + n]).decode())
            except UnicodeDecodeError:
                continue
    blobs = getattr(store, "blobs", None)
    from ._stream import key_id_of_header

    for name in store.blob_names() if blobs is not None else ():
        assert blobs is not None
        try:
            kid = key_id_of_header(blobs.header(name))
        except Exception:  # a missing or damaged blob names no key
            continue
        if kid is not None:
            found.add(kid)
    return sorted(found)


def default_keyring(*, create: bool, store: Any = None) -> Keyring | None:
    """The embedded default keyring, created (0600, outside the data folder) when asked.

    Never replaces a lost key: when the key file is missing but ``store`` holds outputs
    encrypted under master keys, creating a new key would hide the loss, so this refuses
    with a :class:`ConfigError` naming the key ids and the file to restore.
    """
    folder = default_key_dir()
    if _inside(folder, data_dir()):
        raise ConfigError(
            f"the default key folder {str(folder)!r} is inside the data folder "
            f"{str(data_dir())!r}; keys must never sit beside the data they protect: set "
            f"{KEYS_DIR_ENV} elsewhere or configure encryption.keyring",
            key="encryption.keyring",
        )
    file = folder / DEFAULT_KEY_FILE
    if not file.exists():
        if not create:
            return None
        lost = stored_key_ids(store)
        if lost:
            raise ConfigError(
                f"the default key file {str(file)!r} is missing, but the run store "
                f"{str(store.path)!r} holds outputs encrypted under master key(s) "
                f"{', '.join(lost)}; restore that file from its backup (a new key would leave "
                "them unreadable), or point encryption.keyring at the keys",
                key="encryption.keyring",
            )
        try:
            key = generate_key_file(file)
        except ConfigError:  # another manager created it meanwhile
            pass
        else:
            _log.warning(
                "encryption.key_file_created path=%s key_id=%s: no encryption.keyring is "
                "configured, so a local master key was created there (mode 0600); back it "
                "up: losing it makes encrypted results unreadable",
                file,
                key.id,
            )
    return Keyring.from_file(file)
