"""xlib-pipeline-encryption: AES-256-GCM envelope encryption of results at rest.

Each stored task output is sealed with a per-tenant data key (per tenant and run with
``encryption.per_run_keys``); each data key is wrapped by a master key from a keyring
(env var or key file) or from any :class:`KeyManagementService`. The associated data binds a
ciphertext to its run, task and tenant. See docs/plugins/encryption.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xlib_pipeline import lazy_exports

if TYPE_CHECKING:  # pragma: no cover
    from ._envelope import VERSION, Envelope, key_id_of, parse_header
    from ._keyfile import default_key_dir
    from ._keyring import (
        KeyManagementService,
        Keyring,
        MasterKey,
        add_key,
        generate_key_file,
        new_master_key,
    )
    from ._plugin import EncryptionPlugin, encrypt_data
    from ._rotate import RotationReport, rotate_store
    from ._shred import ShredReport, shred_tenant

_LAZY = {
    "VERSION": "._envelope",
    "Envelope": "._envelope",
    "key_id_of": "._envelope",
    "parse_header": "._envelope",
    "KeyManagementService": "._keyring",
    "Keyring": "._keyring",
    "MasterKey": "._keyring",
    "add_key": "._keyring",
    "generate_key_file": "._keyring",
    "new_master_key": "._keyring",
    "EncryptionPlugin": "._plugin",
    "default_key_dir": "._keyfile",
    "encrypt_data": "._plugin",
    "RotationReport": "._rotate",
    "rotate_store": "._rotate",
    "ShredReport": "._shred",
    "shred_tenant": "._shred",
}

__version__ = "0.1.0"

__all__ = [
    "VERSION",
    "EncryptionPlugin",
    "Envelope",
    "KeyManagementService",
    "Keyring",
    "MasterKey",
    "RotationReport",
    "ShredReport",
    "__version__",
    "add_key",
    "default_key_dir",
    "encrypt_data",
    "generate_key_file",
    "key_id_of",
    "new_master_key",
    "parse_header",
    "rotate_store",
    "shred_tenant",
]


# Entry points load this package on every PipelineManager(): its submodules (and their
# dependencies) are imported when a name is first used, not before.
if not TYPE_CHECKING:  # mypy sees the names above, and flags a misspelt one
    __getattr__, __dir__ = lazy_exports(__name__, _LAZY)
