"""xlib-pipeline-encryption: AES-256-GCM envelope encryption of results at rest.

Each stored task output is sealed with a per-tenant data key (per tenant and run with
``encryption.per_run_keys``); each data key is wrapped by a master key from a keyring
(env var or key file) or from any :class:`KeyManagementService`. The associated data binds a
ciphertext to its run, task and tenant. See docs/plugins/encryption.md.
"""

from __future__ import annotations

from ._envelope import VERSION, Envelope, key_id_of, parse_header
from ._keyring import (
    KeyManagementService,
    Keyring,
    MasterKey,
    add_key,
    generate_key_file,
    new_master_key,
)
from ._plugin import EncryptionPlugin, default_key_dir, encrypt_data
from ._rotate import RotationReport, rotate_store
from ._shred import ShredReport, shred_tenant

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
