"""Where blob files live: a local folder, or any fsspec URL (object storage).

Both back ends offer the same small interface to :class:`~._blobs.BlobStore`: create a
temporary file, commit it under its name (first writer wins), open, remove, list.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .exceptions import ConfigError, StoreError

_NAME = re.compile(r"([A-Za-z0-9_.-]{1,128})/([0-9a-f]{64})")


class _LocalFS:
    """Blob files in a local folder (0700; files 0600), written with fsync."""

    def __init__(self, root: str) -> None:
        self.root = Path(root).expanduser()
        self.where = str(self.root)

    def path(self, name: str) -> str:
        return str(self.root / name)

    def create(self, name: str) -> Any:
        path = self.root / name
        try:
            for folder in (self.root, path.parent):
                if not folder.exists():
                    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise _fault(str(path), "cannot be created", exc) from exc
        return open(fd, "wb", buffering=0)

    def commit(self, fh: Any, tmp: str, name: str) -> bool:
        """Make ``tmp`` durable as ``name``; False when ``name`` existed (deduplicated)."""
        os.fsync(fh.fileno())
        fh.close()
        final = self.root / name
        if final.exists():
            os.unlink(self.root / tmp)
            os.utime(final)  # refreshed: a prune's grace period starts again
            return False
        os.replace(self.root / tmp, final)
        dfd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return True

    def discard(self, tmp: str) -> None:
        try:
            os.unlink(self.root / tmp)
        except OSError:
            pass

    def open(self, name: str) -> tuple[Any, int]:
        fh = open(self.root / name, "rb")  # noqa: SIM115 - closed by the reader
        return fh, os.fstat(fh.fileno()).st_size

    def exists(self, name: str) -> bool:
        return (self.root / name).exists()

    def remove(self, name: str) -> None:
        try:
            os.unlink(self.root / name)
        except FileNotFoundError:
            pass

    def mtime(self, name: str) -> float:
        return os.stat(self.root / name).st_mtime

    def names(self) -> Iterator[str]:
        if not self.root.is_dir():
            return
        for scope in sorted(self.root.iterdir()):
            if scope.is_dir():
                for f in sorted(scope.iterdir()):
                    name = f"{scope.name}/{f.name}"
                    if _NAME.fullmatch(name):
                        yield name


class _FsspecFS:
    """Blob files under any fsspec URL (``s3://``, ``gs://``, ``abfs://``, ``memory://`` ...)."""

    def __init__(self, url: str) -> None:
        try:
            import fsspec  # type: ignore[import-untyped]
        except ImportError:
            raise ConfigError(
                f"store.blobs.url {url!r} needs fsspec: pip install 'xlib-pipeline[fsspec]' "
                "(and the driver of its scheme, such as s3fs or gcsfs)",
                key="store.blobs.url",
            ) from None
        try:
            self.fs, root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as exc:
            raise ConfigError(
                f"store.blobs.url {url!r}: its file system cannot be used: {exc}",
                key="store.blobs.url",
            ) from exc
        self.root = root.rstrip("/")
        self.where = url

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def create(self, name: str) -> Any:
        try:
            self.fs.makedirs(self.path(name).rsplit("/", 1)[0], exist_ok=True)
            return self.fs.open(self.path(name), "wb")
        except OSError as exc:
            raise _fault(self.path(name), "cannot be created", exc) from exc

    def commit(self, fh: Any, tmp: str, name: str) -> bool:
        fh.close()
        if self.fs.exists(self.path(name)):
            self.fs.rm(self.path(tmp))
            return False
        self.fs.mv(self.path(tmp), self.path(name))
        return True

    def discard(self, tmp: str) -> None:
        try:
            self.fs.rm(self.path(tmp))
        except (OSError, FileNotFoundError):
            pass

    def open(self, name: str) -> tuple[Any, int]:
        return self.fs.open(self.path(name), "rb"), int(self.fs.size(self.path(name)))

    def exists(self, name: str) -> bool:
        return bool(self.fs.exists(self.path(name)))

    def remove(self, name: str) -> None:
        try:
            self.fs.rm(self.path(name))
        except FileNotFoundError:
            pass

    def mtime(self, name: str) -> float:
        try:
            modified = self.fs.modified(self.path(name))
            return float(modified.timestamp())
        except (NotImplementedError, OSError, AttributeError):
            return 0.0

    def names(self) -> Iterator[str]:
        try:
            found = self.fs.find(self.root)
        except FileNotFoundError:
            return
        for path in sorted(found):
            name = str(path).rstrip("/").split("/")
            joined = "/".join(name[-2:])
            if _NAME.fullmatch(joined):
                yield joined


def _fault(path: str, what: str, exc: OSError) -> StoreError:
    code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return StoreError(f"blob {path!r} {what}: {exc.strerror or exc} (errno {code})", path=path)
