"""What a failed SQLite run-store operation becomes: a :class:`StoreError` that names the
file, says what went wrong in words (locked, disk full, read-only, corrupt) and that nothing
was dropped."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from .exceptions import StoreError


def describe_fault(path: Path, exc: BaseException, busy_ms: int) -> StoreError:
    """A StoreError naming the file and the errno (or SQLite result code) of ``exc``."""
    if isinstance(exc, OSError) and exc.errno is not None:
        code = errno.errorcode.get(exc.errno, str(exc.errno))
        what = f"{exc.strerror or exc} (errno {code})"
    else:
        code = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
        what = f"{exc} ({code})"
        if code.startswith(("SQLITE_IOERR", "SQLITE_FULL")):
            what += _likely_errno(path)
        if code.startswith("SQLITE_BUSY") or code.startswith("SQLITE_LOCKED"):
            what += (
                f"; another process held a write transaction on it for longer than "
                f"store.busy_timeout_ms ({busy_ms} ms)"
            )
    err = StoreError(
        f"run store {str(path)!r}: a write failed: {what}; nothing was dropped: the run "
        "stopped scheduling, and `xlib-pipeline resume RUN_ID` finishes it once the fault "
        "is removed",
        path=str(path),
    )
    err.errno_name = code  # type: ignore[attr-defined]
    return err


def _likely_errno(path: Path) -> str:
    """SQLite does not pass the OS errno on: name the likely one from what can be seen."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    except (ImportError, OSError, ValueError):  # pragma: no cover - not POSIX
        soft = -1
    sizes = []
    for suffix in ("", "-wal", "-journal"):
        try:
            sizes.append(os.stat(str(path) + suffix).st_size)
        except OSError:
            pass
    if soft != -1 and sizes and max(sizes) + 65536 >= soft:
        return (
            "; errno EFBIG: the file reached this process's file-size limit "
            f"(RLIMIT_FSIZE {soft:,} bytes)"
        )
    try:
        st = os.statvfs(path.parent)
        if st.f_bavail * st.f_frsize < 1 << 20:
            return "; errno ENOSPC: no space left on the device"
    except OSError:
        pass
    return "; errno EIO or another I/O error from the operating system"
