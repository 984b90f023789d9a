"""The run store in PostgreSQL: the embedded store's semantics on a shared server.

Writes go through the core's windowless group commit (:class:`GroupCommitter`) on one
dedicated connection: each batch is one transaction, committed as soon as no commit is in
flight, so the scheduler's barrier (no successor before its upstream's outcome and output are
committed) and ``flush`` at the end of a run hold exactly as with SQLite. Reads take a
connection from the pool. Leases are rows like SQLite's, taken under a transaction-level
advisory lock per run id, so two drivers on two hosts never both run one run.

``store.synchronous``: ``"normal"`` commits with ``synchronous_commit = off`` (a commit
survives the driver's death at once and the server's crash after its WAL writer's next flush,
well under a second: the last commits before a server crash may be lost, never corrupted,
like SQLite's ``NORMAL``); ``"full"`` waits for the server's WAL flush on every commit.
``store.busy_timeout_ms`` is the ``lock_timeout`` of every statement.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping
from typing import Any

import psycopg
import psycopg_pool

from xlib_pipeline import ConfigError, StoreError, data_dir
from xlib_pipeline.store import BlobStore, HeldRuns

from ._leases import StoreLeases
from ._recording import HeldRun, Recording
from ._schema import MIGRATION_LOCK, MIGRATIONS, MIGRATIONS_TABLE, SCHEMA_VERSION
from ._writer import Committer, Native, seal_text, unseal_text

__all__ = ["Native", "PostgresStore", "redact_url", "seal_text", "unseal_text"]


def redact_url(url: str) -> str:
    """``url`` without its password (for messages, ``store.path`` and the audit trail)."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def _pool_options(value: Mapping[str, Any]) -> tuple[int, int, float]:
    known = {"min_size", "max_size", "connect_timeout_s"}
    unknown = set(value) - known
    if unknown:
        raise ConfigError(
            f"store.pool: unknown key(s) {sorted(unknown)}; expected some of {sorted(known)}",
            key="store.pool",
        )
    lo, hi = value.get("min_size", 1), value.get("max_size", 4)
    timeout = value.get("connect_timeout_s", 30)
    for name, v in (("min_size", lo), ("max_size", hi)):
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1000:
            raise ConfigError(
                f"store.pool.{name} must be an integer from 1 to 1000, got {v!r}",
                key=f"store.pool.{name}",
            )
    if hi < lo:
        raise ConfigError(
            f"store.pool.max_size ({hi}) is less than min_size ({lo})", key="store.pool"
        )
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ConfigError(
            f"store.pool.connect_timeout_s must be a positive number, got {timeout!r}",
            key="store.pool.connect_timeout_s",
        )
    return lo, hi, float(timeout)


class PostgresStore(Recording, HeldRuns, StoreLeases):
    """A run store in a PostgreSQL database (``store: {url: "postgresql://..."}``)."""

    held_run = HeldRun

    def __init__(self, section: Mapping[str, Any]) -> None:
        self.url = str(section["url"])
        #: Where the store is, for messages: the URL without its password.
        self.path = redact_url(self.url)
        self.busy_timeout_ms = int(section.get("busy_timeout_ms", 30000))
        self._sync = str(section.get("synchronous", "normal"))
        lo, hi, timeout = _pool_options(section.get("pool") or {})
        self.pool = psycopg_pool.ConnectionPool(
            self.url,
            min_size=lo,
            max_size=hi,
            timeout=timeout,
            kwargs={"autocommit": True},
            configure=self._configure,
            open=False,
            name="xlib-pipeline-store",
        )
        try:
            self.pool.open(wait=True, timeout=timeout)
        except psycopg_pool.PoolTimeout as exc:
            self.pool.close()
            raise StoreError(
                f"run store {self.path!r}: cannot connect within {timeout:g} s "
                f"(store.pool.connect_timeout_s): is the server up, and the URL right?",
                path=self.path,
            ) from exc
        except psycopg.Error as exc:
            self.pool.close()
            raise self.fault(exc, "cannot connect") from exc
        try:
            self.migrate()
        except BaseException:
            self.pool.close()
            raise
        blobs = section.get("blobs") or {}
        self.blobs = BlobStore(
            blobs.get("url") or str(data_dir() / "blobs"),
            threshold=blobs.get("threshold", 1 << 20),
            chunk_size=blobs.get("chunk_size", 1 << 20),
        )
        self._committer = Committer(self)
        self._beat_lock = threading.Lock()
        self._holders: set[str] = set()
        self._beat_thread: threading.Thread | None = None
        self._closed = threading.Event()
        self.add = self._committer.add  # type: ignore[method-assign]
        self.commit = self._committer.commit
        self.hold_runs(self._committer)  # stream batches' runs, until their checkpoint

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        sync = "on" if self._sync == "full" else "off"
        conn.execute(f"SET synchronous_commit = {sync}")
        conn.execute(f"SET lock_timeout = {int(self.busy_timeout_ms)}")
        conn.execute("SET client_encoding = 'UTF8'")  # text as str, whatever the database's

    def fault(self, exc: BaseException, what: str) -> StoreError:
        """A StoreError naming the server (no password) and the SQLSTATE of ``exc``."""
        state = getattr(exc, "sqlstate", None) or type(exc).__name__
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        extra = ""
        if state == "55P03":  # lock_not_available
            extra = (
                f"; another driver held a lock longer than store.busy_timeout_ms "
                f"({self.busy_timeout_ms} ms)"
            )
        err = StoreError(
            f"run store {self.path!r}: {what}: {text} (SQLSTATE {state}){extra}; nothing was "
            "dropped: `xlib-pipeline resume RUN_ID` finishes the run once the fault is removed",
            path=self.path,
        )
        err.errno_name = state  # type: ignore[attr-defined]
        return err

    # -- schema ------------------------------------------------------------------------------

    def migrate(self) -> int:
        """Apply the migrations this database lacks (under an advisory lock); its version."""
        try:
            with self.pool.connection() as conn, conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                conn.execute(MIGRATIONS_TABLE)
                row = conn.execute(
                    "SELECT COALESCE(MAX(version), 0) FROM xlib_schema_migrations"
                ).fetchone()
                version = int(row[0]) if row else 0
                if version > SCHEMA_VERSION:
                    raise StoreError(
                        f"run store {self.path!r} has schema version {version}, newer than "
                        f"this xlib-pipeline-postgres understands ({SCHEMA_VERSION}): upgrade "
                        "the plugin",
                        path=self.path,
                    )
                for step in range(version, SCHEMA_VERSION):
                    description, sql = MIGRATIONS[step]
                    conn.execute(sql)
                    conn.execute(
                        "INSERT INTO xlib_schema_migrations VALUES (%s, %s, %s)",
                        (step + 1, description, time.time()),
                    )
        except psycopg.Error as exc:
            raise self.fault(exc, "cannot create or migrate its schema") from exc
        return SCHEMA_VERSION

    def schema_version(self) -> int:
        """The schema version the database is at."""
        with self._reading() as conn:
            row = conn.execute("SELECT MAX(version) FROM xlib_schema_migrations").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    # -- writing -----------------------------------------------------------------------------

    @property
    def write_hook(self) -> Any:
        """Tests only: a callable run before every write (raise OSError to inject a fault)."""
        return self._committer.write_hook

    @write_hook.setter
    def write_hook(self, hook: Any) -> None:
        self._committer.write_hook = hook

    def submit(self, sql: str, params: tuple[Any, ...]) -> None:
        """Queue one statement and commit it as soon as no commit is in flight."""
        self._committer.add(sql, params)
        self._committer.commit()

    def flush(self) -> None:
        """Block until everything queued so far is committed (StoreError when it cannot be)."""
        self._committer.flush()

    def close(self) -> None:
        """Stop the lease heartbeat, commit what is queued, then close the connections."""
        try:
            self.stop_heartbeats()  # first: its last beat, if one is in flight, is committed
            self.release_held()  # runs whose checkpoint never came: recorded as they are
            self._committer.close()
        finally:
            self.pool.close()

    def checkpoint(self) -> None:
        """Nothing to do: the server checkpoints its WAL itself."""

    def open_cache(self) -> Any:
        """The result cache's table in this database (shared by every driver on it)."""
        from ._tables import PostgresCache

        return PostgresCache(self)

    def open_checkpoints(self) -> Any:
        """Stream checkpoints in this database, committed by this store's writer with the
        batch run's rows in one PostgreSQL transaction."""
        from ._tables import PostgresCheckpoints

        return PostgresCheckpoints(self)

    def discard_dead_connections(self) -> None:
        """After a dropped connection: test the pool's idle connections and replace the dead
        ones, so the retry (``flush``) does not pick up another connection the server or the
        network already closed."""
        try:
            self.pool.check()
        except Exception:  # the server is still away: the retry reports it
            pass

    def missing_table(self, exc: BaseException, table: str, what: str) -> StoreError:
        """The StoreError for ``exc``: a clear one when ``table`` does not exist (its
        migration was not applied, or the table was dropped), else :meth:`fault`."""
        if getattr(exc, "sqlstate", None) != "42P01":  # undefined_table
            return self.fault(exc, what)
        from ._schema import MIGRATIONS, TABLE_MIGRATION

        step = TABLE_MIGRATION[table]
        try:
            at: Any = self.schema_version()
        except StoreError:
            at = "unknown"
        return StoreError(
            f"run store {self.path!r} has no table {table!r} ({what}): schema migration "
            f"{step} ({MIGRATIONS[step - 1][0]}) is not applied there (the database records "
            f"schema version {at}). Opening the store with this xlib-pipeline-postgres "
            "migrates it; if the version says it was applied, the table was dropped: "
            "delete the rows of xlib_schema_migrations from version "
            f"{step} on and open the store again. Nothing else was changed",
            path=self.path,
        )

    def run_finished(self, run_id: str, status: str, finished: float, error: Any) -> None:
        self.release_held((run_id,))  # a held run refused before it ran: recorded now
        self.add(
            "UPDATE runs SET status = %s, finished = %s, error = %s WHERE run_id = %s",
            (status, finished, error, run_id),
        )
        self.event(run_id, None, "run." + status, ts=finished)
        self.release_leases(run_id)
        self.flush()
