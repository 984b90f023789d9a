"""The store file: the ``store`` config section, the SQLite schema, opening and checking
the file, and how outputs are serialized into it (split out of :mod:`._store`)."""

from __future__ import annotations

import os
import pickle
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import _lease
from ._blobs import blobs_section
from ._records import PayloadRef
from .exceptions import StoreError
from .files import private_folder

APPLICATION_ID = 0x584C5053  # "XLPS"
#: Versions of the schema; ``_SCHEMA`` creates the newest, MIGRATIONS step older files up.
#: 1: runs, tasks, events, leases. 2: blob_refs (outputs in the blob store). 3: tasks.ran
#: and tasks.ran_attempt: a task's ``running`` event folded into its row (time, attempt;
#: NULL when the row implies no event), see :func:`._commit.split_log`.
SCHEMA_VERSION = 3
MIGRATIONS: dict[int, str] = {
    2: "",  # blob_refs is created by _SCHEMA (CREATE ... IF NOT EXISTS)
    3: "ALTER TABLE tasks ADD COLUMN ran REAL; ALTER TABLE tasks ADD COLUMN ran_attempt INTEGER;",
}

_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    pipeline TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    structure TEXT NOT NULL,
    tenant TEXT,
    principal TEXT,
    params TEXT,
    config TEXT,
    source TEXT,
    executor TEXT,
    status TEXT NOT NULL,
    started REAL,
    finished REAL,
    resumed_from TEXT,
    error TEXT
);
CREATE TABLE IF NOT EXISTS tasks (
    run_id TEXT NOT NULL,
    task TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    started REAL,
    finished REAL,
    error_type TEXT,
    error TEXT,
    traceback TEXT,
    output BLOB,
    output_run TEXT,
    tenant TEXT,
    ran REAL,
    ran_attempt INTEGER,
    PRIMARY KEY (run_id, task)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    task TEXT,
    ts REAL NOT NULL,
    event TEXT NOT NULL,
    attempt INTEGER,
    error_type TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS events_run ON events(run_id, task);
CREATE INDEX IF NOT EXISTS runs_started ON runs(started);
CREATE TABLE IF NOT EXISTS blob_refs (
    run_id TEXT NOT NULL,
    task TEXT NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (run_id, task)
);
CREATE INDEX IF NOT EXISTS blob_refs_name ON blob_refs(name);
"""
    + _lease.SCHEMA
)


_REMOVED = {
    "batch_ms": "commits no longer wait for a window: a record is committed as soon as no "
    "commit is in flight",
    "batch_size": "a batch is whatever arrives while a commit is in flight",
}


#: The embedded default store's file name, in ``data_dir()``.
DEFAULT_STORE_FILE = "runs.sqlite"


def store_section(value: Any) -> dict[str, Any] | None:
    """Validate the ``store`` config section.

    ``true`` (or a mapping without ``path``) means the embedded default file,
    ``data_dir()/runs.sqlite``; ``false`` means no store, even where a plugin needs one
    (encryption at rest), which then warns.
    """
    if value is False:
        return None
    if value is True:
        value = {}
    if not isinstance(value, Mapping):
        raise ValueError(
            f"expected true, false or a mapping like {{'path': 'runs.sqlite'}}, got {value!r}"
        )
    for key, why in _REMOVED.items():
        if key in value:
            raise ValueError(f"'store.{key}' was removed ({why}); drop it from the config")
    allowed = {"path", "url", "synchronous", "record_outputs", "busy_timeout_ms", "blobs", "pool"}
    unknown = set(value) - allowed
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)}; expected some of {sorted(allowed)}")
    blobs = blobs_section(value.get("blobs"))
    url = value.get("url")
    if url is not None:
        return _url_section(value, blobs)
    if "pool" in value:
        raise ValueError("'pool' applies to a server store ('url': 'postgresql://...')")
    if "path" not in value:
        from ._config import data_dir

        value = {**value, "path": str(data_dir() / DEFAULT_STORE_FILE)}
    if not isinstance(value["path"], str | Path):
        raise ValueError(f"'path' must be a file path, got {value['path']!r}")
    sync = value.get("synchronous", "normal")
    if sync not in ("normal", "full"):
        raise ValueError(f"'synchronous' must be 'normal' or 'full', got {sync!r}")
    busy = value.get("busy_timeout_ms", 30000)
    if isinstance(busy, bool) or not isinstance(busy, int) or not 0 <= busy <= 86_400_000:
        raise ValueError(
            f"'busy_timeout_ms' must be an integer from 0 to 86400000 (one day), got {busy!r}"
        )
    from ._config import boolean

    try:
        record = boolean(value.get("record_outputs", True))
    except ValueError as exc:
        raise ValueError(f"'record_outputs': {exc}") from None
    return {
        "path": str(value["path"]),
        "synchronous": sync,
        "record_outputs": record,
        "busy_timeout_ms": busy,
        "blobs": blobs,
    }


def _url_section(value: Mapping[str, Any], blobs: dict[str, Any]) -> dict[str, Any]:
    """A store named by URL: ``sqlite:///path`` is the embedded file; other schemes are
    served by a plugin's ``open_run_store`` hook (``postgresql://``: xlib-pipeline-postgres)."""
    url = value["url"]
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(f"'url' must be a URL like 'postgresql://host/db', got {url!r}")
    if "path" in value:
        raise ValueError("give 'path' (an SQLite file) or 'url' (a server), not both")
    if url.startswith("sqlite://"):
        rest = {k: v for k, v in value.items() if k not in ("url", "pool")}
        section = store_section({**rest, "path": url[len("sqlite://") :] or DEFAULT_STORE_FILE})
        assert section is not None
        return section
    from ._config import boolean

    try:
        record = boolean(value.get("record_outputs", True))
    except ValueError as exc:
        raise ValueError(f"'record_outputs': {exc}") from None
    sync = value.get("synchronous", "normal")
    if sync not in ("normal", "full"):
        raise ValueError(f"'synchronous' must be 'normal' or 'full', got {sync!r}")
    busy = value.get("busy_timeout_ms", 30000)
    if isinstance(busy, bool) or not isinstance(busy, int) or not 0 <= busy <= 86_400_000:
        raise ValueError(
            f"'busy_timeout_ms' must be an integer from 0 to 86400000 (one day), got {busy!r}"
        )
    pool = value.get("pool", {})
    if not isinstance(pool, Mapping):
        raise ValueError("'pool' must be a mapping like {'min_size': 1, 'max_size': 4}")
    return {
        "url": url,
        "synchronous": sync,
        "record_outputs": record,
        "busy_timeout_ms": busy,
        "blobs": blobs,
        "pool": dict(pool),
    }


def default_blob_url(path: str | Path) -> str:
    """The default blob folder of the store file ``path``: ``runs.blobs`` beside
    ``runs.sqlite``."""
    p = Path(path)
    return str(p.with_name(p.stem + ".blobs"))


def _connect(
    path: Path, *, create: bool, synchronous: str = "normal", busy_ms: int = 30000
) -> sqlite3.Connection:
    """Open ``path`` as an xlib-pipeline store; refuse foreign or corrupt files by name."""
    exists = path.exists()
    if not exists and not create:
        raise StoreError(f"run store {str(path)!r} does not exist", path=str(path))
    if exists and path.is_dir():
        raise StoreError(f"run store {str(path)!r} is a directory, expected a file", path=str(path))
    if not exists:
        try:
            private_folder(path.parent)
            # SQLite gives its -wal and -shm files the database file's mode: 0600 for all three.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        except OSError as exc:
            import errno

            why = (
                "its folder is not writable"
                if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
                else "cannot create it or its folder"
            )
            raise StoreError(
                f"run store {str(path)!r}: {why}: {exc.strerror or exc}", path=str(path)
            ) from exc
    try:
        conn = sqlite3.connect(str(path), timeout=busy_ms / 1000, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(busy_ms)}")
        app_id, tables = _identity(conn, "BEGIN")
        conn.commit()
        if app_id == 0 and not tables:
            # A new file: another process may be creating the store in it right now. Look
            # again under the write lock, and mark it ours in that same transaction.
            app_id, tables = _identity(conn, "BEGIN IMMEDIATE")
            if app_id == 0 and not tables:
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # prune gives pages back
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                app_id = APPLICATION_ID
            conn.commit()
    except sqlite3.DatabaseError as exc:
        raise StoreError(
            _access_problem(path)
            or f"run store {str(path)!r} is not a valid SQLite database ({exc}); "
            "it was left untouched",
            path=str(path),
        ) from exc
    if app_id not in (0, APPLICATION_ID) or (app_id == 0 and tables):
        conn.close()
        raise StoreError(
            f"{str(path)!r} is a SQLite database of another application "
            f"(application_id={app_id:#x}, tables {sorted(tables)[:5]}); it was left untouched",
            path=str(path),
        )
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"run store {str(path)!r} has schema version {version}, newer than this "
                f"xlib-pipeline understands ({SCHEMA_VERSION})",
                path=str(path),
            )
        _wal(conn, busy_ms)
        conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        # Under the write lock from the start: a statement that takes it while reading
        # would get "database is locked" at once from another process creating the store
        # (SQLite's deadlock rule skips the busy timeout there).
        conn.executescript("BEGIN IMMEDIATE;\n" + _SCHEMA + "\nCOMMIT;")
        for step in range(version + 1, SCHEMA_VERSION + 1):
            if MIGRATIONS.get(step):
                conn.executescript(MIGRATIONS[step])
            conn.execute(f"PRAGMA user_version = {step}")
        conn.commit()
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StoreError(
            _access_problem(path)
            or f"run store {str(path)!r} is damaged ({exc}); it was left untouched",
            path=str(path),
        ) from exc
    return conn


def _wal(conn: sqlite3.Connection, busy_ms: int) -> None:
    """Switch to WAL. The switch needs the file to itself, and SQLite answers "database is
    locked" at once (no busy timeout) while another process opens or creates the store: try
    again until the busy timeout."""
    deadline = time.monotonic() + busy_ms / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.002)


def _identity(conn: sqlite3.Connection, begin: str) -> tuple[int, set[str]]:
    """The file's application id and table names, read in one transaction (left open):
    read apart, another process creating the store in between looks like a foreign file."""
    conn.execute(begin)
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    return int(app_id), tables


def _access_problem(path: Path) -> str | None:
    """Why ``path`` cannot be opened for writing, when the cause is access, not content."""
    folder = path.parent
    if path.exists() and not os.access(path, os.R_OK):
        return f"run store {str(path)!r} is not readable by this user; it was left untouched"
    if path.exists() and not os.access(path, os.W_OK):
        return (
            f"run store {str(path)!r} is read-only (file mode or a read-only file system); "
            "it was left untouched"
        )
    if not os.access(folder, os.W_OK):
        return (
            f"run store {str(path)!r}: its folder {str(folder)!r} is not writable (read-only "
            "file system or no permission); SQLite needs to create the journal files "
            f"{path.name}-wal and {path.name}-shm beside it"
        )
    return None


def dump_output(value: Any) -> bytes | None:
    """Pickle an output for the store; ``None`` when it cannot be pickled (it will re-run)."""
    try:
        return pickle.dumps(value, protocol=5)
    except Exception:
        try:
            import cloudpickle

            return bytes(cloudpickle.dumps(value, protocol=5))
        except Exception:
            return None


def load_output(blob: bytes) -> Any:
    """Inverse of :func:`dump_output` (the store is trusted local state; see docs)."""
    return pickle.loads(blob)


def payload_ref(run_id: str, pipeline: str, task: str, tenant: str | None) -> PayloadRef:
    """The reference that binds a stored output to its run, task and tenant."""
    return PayloadRef(run_id=run_id, pipeline=pipeline, task=task, tenant=tenant, kind="output")
