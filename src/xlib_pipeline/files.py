"""Private files and folders: the one check every key file and secret store goes through.

Key files (the audit HMAC key, the encryption keyring, signing keys) must be readable by
their owner alone, and the folders holding run stores, trails and keys are created 0700.
Plugins use these instead of writing the check again, so the rule and its message are the
same everywhere::

    from xlib_pipeline.files import check_private_file, private_folder

    st = path.stat()
    check_private_file(path, st, "audit key file")   # SecurityError when group/others may read
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .exceptions import SecurityError

__all__ = ["check_private_file", "private_folder"]


def check_private_file(path: str | os.PathLike[str], st: os.stat_result, what: str) -> None:
    """Refuse ``path`` (whose ``os.stat`` is ``st``) when its group or other users have any
    permission on it: a :class:`SecurityError` naming ``what``, the file, its mode and the
    ``chmod`` that fixes it. POSIX only: elsewhere file modes say nothing of who may read."""
    if os.name == "posix" and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecurityError(
            f"{what} {str(path)!r} is readable by other users (mode "
            f"{stat.filemode(st.st_mode)}); run 'chmod 600 {path}'"
        )


def private_folder(folder: str | os.PathLike[str]) -> None:
    """Create ``folder`` and its missing parents with mode 0700 (kept as it is when it
    exists: the user may have chosen a shared folder on purpose)."""
    path = Path(folder)
    if not path.exists():
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
