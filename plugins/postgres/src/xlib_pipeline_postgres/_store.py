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

import base64
import json
import re
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg_pool

from xlib_pipeline import ConfigError, PayloadRef, StoreError, data_dir
from xlib_pipeline.store import (
    HEARTBEAT_S,
    LOG,
    BlobStore,
    GroupCommitter,
    Lease,
    PruneReport,
    RunLeasedError,
    RunRecord,
    TaskRecord,
    me,
    remove_blobs,
)

from ._schema import (
    MIGRATION_LOCK,
    MIGRATIONS,
    MIGRATIONS_TABLE,
    SCHEMA_VERSION,
    SEALED_PREFIX,
)

_RUN_COLUMNS = (
    "run_id, pipeline, fingerprint, structure, status, started, finished, tenant, principal, "
    "params, config, source, executor, resumed_from, error"
)


class Native(str):
    """A statement in PostgreSQL's own dialect, queued on the writer: executed as it is
    (no rewriting of SQLite's ``?`` placeholders, bytes stay BYTEA parameters)."""

    __slots__ = ()


def redact_url(url: str) -> str:
    """``url`` without its password (for messages, ``store.path`` and the audit trail)."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def seal_text(value: Any) -> Any:
    """A value for a TEXT error column: sealed bytes become ``SEALED_PREFIX`` + base64."""
    if isinstance(value, bytes | bytearray | memoryview):
        return SEALED_PREFIX + base64.b64encode(bytes(value)).decode()
    return value


def unseal_text(value: Any) -> Any:
    """Inverse of :func:`seal_text`: sealed texts come back as bytes, clear text as str."""
    if isinstance(value, str) and value.startswith(SEALED_PREFIX):
        return base64.b64decode(value[len(SEALED_PREFIX) :])
    return value


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


class _Committer(GroupCommitter):
    """Group commit onto one dedicated connection, one transaction per batch."""

    def __init__(self, store: PostgresStore) -> None:
        super().__init__()
        self.faults = (psycopg.Error, OSError)
        self._store = store
        self._conn: psycopg.Connection[Any] | None = None

    def fault(self, exc: BaseException) -> StoreError:
        return self._store.fault(exc, "a write failed")

    def disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                self._store.pool.putconn(conn)
            except Exception:  # the pool is closing: the connection goes with it
                conn.close()

    def write(self, batch: list[tuple[str, tuple[Any, ...]]]) -> None:
        if self.write_hook is not None:
            self.write_hook(batch)
        conn = self._conn
        if conn is None or conn.closed:
            conn = self._conn = self._store.pool.getconn()
        k, n = 0, len(batch)
        try:
            while k < n:
                if batch[k][0] is self.CALL:
                    batch[k][1][0](conn)
                    k += 1
                    continue
                j = k
                while j < n and batch[j][0] is not self.CALL:
                    j += 1
                segment = batch[k:j]
                if all(sql is LOG for sql, _ in segment):
                    with conn.cursor() as cur:
                        _log_only(cur, segment)
                else:
                    # Pipeline mode: the statements go out without waiting for each
                    # result, so a transaction costs one round trip to the server, not one
                    # per statement (a stream's batch: run, leases, tasks, checkpoint).
                    with conn.pipeline(), conn.transaction(), conn.cursor() as cur:
                        _write_statements(cur, segment)
                k = j
        except BaseException:
            del batch[:k]  # committed segments stay; the rest is retried by flush()
            if conn.broken:  # the connection dropped: so may have the pool's idle ones
                self._conn = None
                self._store.discard_dead_connections()
            raise


_LOG_SQL = (
    "WITH ti AS (INSERT INTO tasks (run_id, task, status, attempts, started, finished, "
    "error_type, error, traceback, output, output_run, tenant) SELECT * FROM unnest("
    "%s::text[], %s::text[], %s::text[], %s::int[], %s::float8[], %s::float8[], %s::text[], "
    "%s::text[], %s::text[], %s::bytea[], %s::text[], %s::text[]) ON CONFLICT (run_id, task) "
    "DO UPDATE SET status = EXCLUDED.status, attempts = EXCLUDED.attempts, started = "
    "EXCLUDED.started, finished = EXCLUDED.finished, error_type = EXCLUDED.error_type, error = "
    "EXCLUDED.error, traceback = EXCLUDED.traceback, output = EXCLUDED.output, output_run = "
    "EXCLUDED.output_run, tenant = EXCLUDED.tenant RETURNING 1), "
    "ei AS (INSERT INTO events (run_id, task, ts, event, attempt, error_type, error) "
    "SELECT r, t, ts, ev, at, et, er FROM unnest(%s::text[], %s::text[], %s::float8[], "
    "%s::text[], %s::int[], %s::text[], %s::text[]) WITH ORDINALITY AS u(r, t, ts, ev, at, et, "
    "er, o) ORDER BY o RETURNING 1) SELECT (SELECT count(*) FROM ti), (SELECT count(*) FROM ei)"
)


def _log_only(cur: psycopg.Cursor[Any], items: list[tuple[str, tuple[Any, ...]]]) -> None:
    """A batch of log rows only (the common case): one statement, one round trip, atomic
    on its own (autocommit), so the commit costs one wait on the server."""
    tasks: dict[tuple[Any, Any], tuple[Any, ...]] = {}  # a task's last row wins
    events: list[tuple[Any, ...]] = []
    for _, row in items:
        if row[0] == 1:
            tasks[(row[1], row[2])] = (
                row[1], row[2], row[3], row[4], row[5], row[6], row[7], seal_text(row[8]),
                seal_text(row[9]), row[10], row[11], row[12],
            )  # fmt: skip
        else:
            events.append((row[1], row[2], row[13], row[3], row[4], row[7], seal_text(row[8])))
    tcols = [list(c) for c in zip(*tasks.values())] if tasks else [[] for _ in range(12)]
    ecols = [list(c) for c in zip(*events)] if events else [[] for _ in range(7)]
    cur.execute(_LOG_SQL, (*tcols, *ecols))


def _write_statements(cur: psycopg.Cursor[Any], items: list[tuple[str, tuple[Any, ...]]]) -> None:
    """Statements in order, in the caller's transaction; each run of log rows between them
    is one statement (:data:`_LOG_SQL`), so a stream batch's commit is a handful of
    statements sent in one pipeline."""
    logs: list[tuple[str, tuple[Any, ...]]] = []

    def drain() -> None:
        if logs:
            _log_only(cur, logs)
            logs.clear()

    for sql, params in items:
        if sql is LOG:
            logs.append((sql, params))
            continue
        drain()
        if isinstance(sql, Native):
            cur.execute(sql, params)
            continue
        # Statements from the core are written for SQLite's "?" placeholders.
        cur.execute(sql.replace("?", "%s"), tuple(seal_text(p) for p in params))
    drain()


class PostgresStore:
    """A run store in a PostgreSQL database (``store: {url: "postgresql://..."}``)."""

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
        self._committer = _Committer(self)
        self._beat_lock = threading.Lock()
        self._holders: set[str] = set()
        self._beat_thread: threading.Thread | None = None
        self._closed = threading.Event()
        self.add = self._committer.add
        self.commit = self._committer.commit

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
        """Commit what is queued, then close the connections."""
        self._closed.set()
        try:
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

    def run_started(self, row: Mapping[str, Any]) -> None:
        if self.url != self.path and isinstance(row.get("config"), str):
            row = {**row, "config": row["config"].replace(self.url, self.path)}  # no password
        cols = ", ".join(row)
        marks = ", ".join("%s" for _ in row)
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in row if c != "run_id")
        self.add(
            f"INSERT INTO runs ({cols}) VALUES ({marks}) ON CONFLICT (run_id) DO UPDATE SET "
            + updates,
            tuple(row.values()),
        )

    def event(
        self,
        run_id: str,
        task: str | None,
        event: str,
        *,
        attempt: int | None = None,
        error_type: str | None = None,
        error: Any = None,
        ts: float | None = None,
    ) -> None:
        self.add(
            LOG,
            (2, run_id, task, event, attempt, None, None, error_type, error, None, None, None,
             None, ts or time.time()),
        )  # fmt: skip

    def task_finished(self, row: tuple[Any, ...]) -> None:
        self.add(LOG, (1, *row, None))

    def blob_referenced(self, run_id: str, task: str, name: str) -> None:
        self.add(
            "INSERT INTO blob_refs (run_id, task, name) VALUES (%s, %s, %s) "
            "ON CONFLICT (run_id, task) DO UPDATE SET name = EXCLUDED.name",
            (run_id, task, name),
        )

    def run_finished(self, run_id: str, status: str, finished: float, error: Any) -> None:
        self.add(
            "UPDATE runs SET status = %s, finished = %s, error = %s WHERE run_id = %s",
            (status, finished, error, run_id),
        )
        self.event(run_id, None, "run." + status, ts=finished)
        self.release_leases(run_id)
        self.flush()

    # -- leases ------------------------------------------------------------------------------

    def acquire_leases(self, holder: str, run_ids: list[str]) -> list[Lease]:
        """Lease ``run_ids`` for run ``holder`` of this process, atomically, across hosts."""
        mine = me(holder)

        def take(conn: psycopg.Connection[Any]) -> list[Lease]:
            stale: list[Lease] = []
            with conn.transaction():
                for rid in sorted(set(run_ids)):
                    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (rid,))
                rows = conn.execute(
                    "SELECT run_id, holder, pid, host, proc_start, acquired, heartbeat "
                    "FROM leases WHERE run_id = ANY(%s)",
                    (list(run_ids),),
                ).fetchall()
                for row in rows:
                    other = _lease(row)
                    if other.holder != holder and other.live():
                        raise RunLeasedError(
                            f"run {other.run_id} is being executed right now by "
                            f"{other.describe()}; wait for it to end (or stop it) before "
                            "running or resuming it again",
                            path=self.path,
                        )
                    stale.append(other)
                now = time.time()
                for rid in run_ids:
                    conn.execute(
                        "INSERT INTO leases VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT "
                        "(run_id) DO UPDATE SET holder = EXCLUDED.holder, pid = EXCLUDED.pid, "
                        "host = EXCLUDED.host, proc_start = EXCLUDED.proc_start, acquired = "
                        "EXCLUDED.acquired, heartbeat = EXCLUDED.heartbeat",
                        (rid, holder, mine.pid, mine.host, mine.proc_start, now, now),
                    )
                for old in stale:
                    conn.execute(
                        "INSERT INTO events (run_id, task, ts, event, error) VALUES "
                        "(%s, NULL, %s, 'lease.taken_over', %s)",
                        (old.run_id, now, f"stale lease of {old.describe()} taken by {holder}"),
                    )
            return stale

        try:
            taken: list[Lease] = self._committer.exclusive(take)
        except psycopg.Error as exc:
            raise self.fault(exc, "cannot take the run's lease") from exc
        return taken

    def claim_new(self, holder: str) -> None:
        """Queue the lease of a run id that was just minted (no other driver can know it):
        committed with the run's first rows, no round trip."""
        mine = me(holder)
        self.add(
            "INSERT INTO leases VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (run_id) DO "
            "UPDATE SET holder = EXCLUDED.holder, pid = EXCLUDED.pid, host = EXCLUDED.host, "
            "proc_start = EXCLUDED.proc_start, acquired = EXCLUDED.acquired, heartbeat = "
            "EXCLUDED.heartbeat",
            (holder, holder, mine.pid, mine.host, mine.proc_start, mine.acquired, mine.acquired),
        )

    def heartbeat(self, holder: str) -> None:
        self.submit("UPDATE leases SET heartbeat = %s WHERE holder = %s", (time.time(), holder))

    def keep_alive(self, holder: str) -> None:
        """Refresh ``holder``'s leases every HEARTBEAT_S seconds until :meth:`let_go` (one
        daemon thread per store beats for every run it holds)."""
        with self._beat_lock:
            self._holders.add(holder)
            if self._beat_thread is None:
                self._beat_thread = threading.Thread(
                    target=self._beat, name="xlib-lease", daemon=True
                )
                self._beat_thread.start()

    def let_go(self, holder: str) -> None:
        """Stop refreshing ``holder``'s leases (their release is queued separately)."""
        with self._beat_lock:
            self._holders.discard(holder)

    def _beat(self) -> None:
        while not self._closed.wait(HEARTBEAT_S):
            with self._beat_lock:
                holders = sorted(self._holders)
                if not holders:
                    self._beat_thread = None
                    return
            try:
                self.submit(
                    "UPDATE leases SET heartbeat = %s WHERE holder = ANY(%s)",
                    (time.time(), holders),
                )
            except Exception:  # a store fault is reported by the run itself
                pass

    def release_leases(self, holder: str) -> None:
        self.let_go(holder)
        self._committer.add("DELETE FROM leases WHERE holder = %s", (holder,))

    def lease(self, run_id: str) -> Lease | None:
        with self._reading() as conn:
            row = conn.execute(
                "SELECT run_id, holder, pid, host, proc_start, acquired, heartbeat FROM leases "
                "WHERE run_id = %s",
                (run_id,),
            ).fetchone()
        return None if row is None else _lease(row)

    # -- reading -----------------------------------------------------------------------------

    @contextmanager
    def _reading(self) -> Iterator[psycopg.Connection[Any]]:
        try:
            with self.pool.connection() as conn:
                yield conn
        except psycopg.Error as exc:
            raise self.fault(exc, "cannot be read") from exc
        except psycopg_pool.PoolTimeout as exc:
            raise StoreError(
                f"run store {self.path!r} cannot be read: no connection within the pool's timeout",
                path=self.path,
            ) from exc

    def get_run(self, run_id: str) -> RunRecord:
        if not isinstance(run_id, str) or not run_id:
            raise StoreError(f"expected a run id or its prefix, got {run_id!r}", path=self.path)
        sql = f"SELECT {_RUN_COLUMNS} FROM runs WHERE "
        with self._reading() as conn:
            rows = conn.execute(sql + "run_id = %s", (run_id,)).fetchall()
            if not rows:
                rows = conn.execute(
                    sql + "left(run_id, %s) = %s LIMIT 2", (len(run_id), run_id)
                ).fetchall()
        if not rows:
            raise StoreError(
                f"run {run_id!r} is not in the run store {self.path!r}", path=self.path
            )
        if len(rows) > 1:
            raise StoreError(f"run id prefix {run_id!r} is ambiguous", path=self.path)
        r = rows[0]
        status = r[4]
        if status == "running":
            lease = self.lease(r[0])
            if lease is None or not lease.live():
                status = "interrupted"
        return RunRecord(
            run_id=r[0],
            pipeline=r[1],
            fingerprint=r[2],
            structure=json.loads(r[3]),
            status=status,
            started=r[5],
            finished=r[6],
            tenant=r[7],
            principal=r[8],
            params=json.loads(r[9] or "{}"),
            config=json.loads(r[10] or "{}"),
            source=r[11],
            executor=r[12],
            resumed_from=r[13],
            error=unseal_text(r[14]),
        )

    def list_runs(
        self, *, limit: int = 20, pipeline: str | None = None, status: str | None = None
    ) -> list[RunRecord]:
        sql = "SELECT run_id FROM runs"
        where: list[str] = []
        args: list[Any] = []
        if pipeline:
            where.append("pipeline = %s")
            args.append(pipeline)
        if status:
            where.append("status = %s")
            args.append("running" if status == "interrupted" else status)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started DESC NULLS LAST LIMIT %s"
        args.append(limit)
        with self._reading() as conn:
            ids = [r[0] for r in conn.execute(sql, args).fetchall()]
        runs = [self.get_run(i) for i in ids]
        return [r for r in runs if status is None or r.status == status]

    def get_tasks(self, run_id: str) -> dict[str, TaskRecord]:
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT task, status, attempts, started, finished, error_type, error, "
                "traceback, output, output_run, tenant FROM tasks WHERE run_id = %s",
                (run_id,),
            ).fetchall()
        return {
            r[0]: TaskRecord(
                task=r[0],
                status=r[1],
                attempts=r[2],
                started=r[3],
                finished=r[4],
                error_type=r[5],
                error=unseal_text(r[6]),
                traceback=unseal_text(r[7]),
                output=None if r[8] is None else bytes(r[8]),
                output_run=r[9],
                tenant=r[10],
            )
            for r in rows
        }

    def get_events(self, run_id: str) -> list[tuple[Any, ...]]:
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT task, ts, event, attempt, error_type, error FROM ("
                " SELECT task, ts, event, attempt, error_type, error, 0 AS k, id AS o "
                "  FROM events WHERE run_id = %s AND task IS NOT NULL"
                " UNION ALL SELECT task, COALESCE(finished, started, 0), status, attempts,"
                "  error_type, error, 1, 0 FROM tasks WHERE run_id = %s"
                " UNION ALL SELECT task, ts, event, attempt, error_type, error, 2, id "
                "  FROM events WHERE run_id = %s AND task IS NULL"
                ") AS merged ORDER BY k = 2, ts, k, o",
                (run_id, run_id, run_id),
            ).fetchall()
        return [(*r[:5], unseal_text(r[5])) for r in rows]

    def iter_outputs(self) -> Iterator[tuple[str, str, str | None, bytes]]:
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT COALESCE(output_run, run_id), task, tenant, output FROM tasks "
                "WHERE output IS NOT NULL AND (output_run IS NULL OR output_run = run_id)"
            ).fetchall()
        for run_id, task, tenant, output in rows:
            yield run_id, task, tenant, bytes(output)

    def iter_sealed_texts(self) -> Iterator[tuple[Any, PayloadRef, bytes]]:
        like = SEALED_PREFIX + "%"
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT 'tasks', json_build_array(t.run_id, t.task)::text, 'error', t.run_id, "
                "r.pipeline, t.task, t.tenant, t.error, 'error' FROM tasks t JOIN runs r USING "
                "(run_id) WHERE t.error LIKE %(p)s "
                "UNION ALL SELECT 'tasks', json_build_array(t.run_id, t.task)::text, "
                "'traceback', t.run_id, r.pipeline, t.task, t.tenant, t.traceback, 'traceback' "
                "FROM tasks t JOIN runs r USING (run_id) WHERE t.traceback LIKE %(p)s "
                "UNION ALL SELECT 'events', e.id::text, 'error', e.run_id, r.pipeline, e.task, "
                "COALESCE((SELECT t.tenant FROM tasks t WHERE t.run_id = e.run_id AND "
                "t.task = e.task), r.tenant), e.error, 'error' FROM events e JOIN runs r USING "
                "(run_id) WHERE e.error LIKE %(p)s "
                "UNION ALL SELECT 'runs', run_id, 'error', run_id, pipeline, '', tenant, error, "
                "'run_error' FROM runs WHERE error LIKE %(p)s",
                {"p": like},
            ).fetchall()
        for table, key, column, run_id, pipeline, task, tenant, text, kind in rows:
            ref = PayloadRef(
                run_id=run_id, pipeline=pipeline, task=task or "", tenant=tenant, kind=kind
            )
            yield (table, key, column), ref, unseal_text(text)

    def replace_sealed_text(self, where: tuple[str, str, str], blob: bytes) -> None:
        table, key, column = where
        if table not in ("tasks", "events", "runs") or column not in ("error", "traceback"):
            raise ValueError(f"not an error text: {where!r}")
        args: tuple[Any, ...]
        if table == "tasks":
            run_id, task = json.loads(key)
            sql = f"UPDATE tasks SET {column} = %s WHERE run_id = %s AND task = %s"
            args = (seal_text(blob), run_id, task)
        elif table == "events":
            sql, args = "UPDATE events SET error = %s WHERE id = %s", (seal_text(blob), int(key))
        else:
            sql, args = "UPDATE runs SET error = %s WHERE run_id = %s", (seal_text(blob), key)
        with self._reading() as conn:
            conn.execute(sql, args)

    def replace_output(self, run_id: str, task: str, blob: bytes) -> None:
        with self._reading() as conn:
            conn.execute(
                "UPDATE tasks SET output = %s WHERE task = %s AND (run_id = %s AND output_run "
                "IS NULL OR output_run = %s)",
                (blob, task, run_id, run_id),
            )

    def blob_names(self) -> list[str]:
        with self._reading() as conn:
            return [r[0] for r in conn.execute("SELECT DISTINCT name FROM blob_refs ORDER BY name")]

    # -- retention ---------------------------------------------------------------------------

    def prune(
        self,
        *,
        older_than: float | None = None,
        keep: int | None = None,
        pipeline: str | None = None,
        dry_run: bool = False,
        force: bool = False,
    ) -> PruneReport:
        """Delete whole runs (as the SQLite store's prune, see docs/run-store.md), then the
        blob files no kept run references. The database keeps its file space for reuse
        (autovacuum): ``reclaimed_bytes`` counts the blob files removed."""
        if older_than is None and keep is None:
            raise ConfigError("prune needs older_than (--older-than) or keep (--keep)", key="prune")
        if keep is not None and (isinstance(keep, bool) or keep < 0):
            raise ConfigError(f"keep must be a non-negative integer, got {keep!r}", key="keep")
        if older_than is not None and not older_than >= 0:
            raise ConfigError(
                f"older_than must be >= 0 seconds, got {older_than!r}", key="older_than"
            )
        self.flush()
        sql = "SELECT run_id, started, status FROM runs"
        args: list[Any] = []
        if pipeline is not None:
            sql += " WHERE pipeline = %s"
            args.append(pipeline)
        with self._reading() as conn:
            rows = conn.execute(sql + " ORDER BY started DESC NULLS LAST", args).fetchall()
            resumed = conn.execute(
                "SELECT run_id, resumed_from FROM runs WHERE resumed_from IS NOT NULL"
            ).fetchall()
        cutoff = None if older_than is None else time.time() - older_than
        chosen: list[str] = []
        for n, (rid, started, status) in enumerate(rows):
            old = cutoff is not None and (started or 0) < cutoff
            beyond = keep is not None and n >= keep
            if (cutoff is None or old) and (keep is None or beyond):
                if status == "running":
                    lease = self.lease(rid)
                    if lease is not None and lease.live():
                        continue
                chosen.append(rid)
        doomed = set(chosen)
        needed = {parent for child, parent in resumed if child not in doomed}
        refused = tuple(r for r in chosen if r in needed)
        if refused and not force:
            chosen = [r for r in chosen if r not in refused]
        else:
            refused = ()
        tables = ("tasks", "events", "leases", "blob_refs", "runs")
        with self._reading() as conn:
            count = 0
            for table in tables:
                row = conn.execute(
                    f"SELECT COUNT(*) FROM {table} WHERE run_id = ANY(%s)", (chosen,)
                ).fetchone()
                count += int(row[0]) if row else 0
        if dry_run or not chosen:
            return PruneReport(runs=tuple(chosen), rows=count, refused=refused, dry_run=dry_run)
        candidates: set[str] = set()
        referenced: set[str] = set()

        def delete(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                candidates.update(
                    r[0]
                    for r in conn.execute(
                        "SELECT name FROM blob_refs WHERE run_id = ANY(%s)", (chosen,)
                    ).fetchall()
                )
                for table in tables:
                    conn.execute(f"DELETE FROM {table} WHERE run_id = ANY(%s)", (chosen,))
                referenced.update(
                    r[0] for r in conn.execute("SELECT DISTINCT name FROM blob_refs").fetchall()
                )

        try:
            self._committer.exclusive(delete)
        except psycopg.Error as exc:
            raise self.fault(exc, "prune failed") from exc
        candidates.update(self.blobs.names())
        removed, freed = remove_blobs(self.blobs, candidates, referenced)
        return PruneReport(
            runs=tuple(chosen),
            rows=count,
            refused=refused,
            reclaimed_bytes=freed,
            blobs=tuple(removed),
        )


def _lease(row: Any) -> Lease:
    return Lease(
        run_id=row[0],
        holder=row[1],
        pid=row[2],
        host=row[3],
        proc_start=row[4],
        acquired=row[5],
        heartbeat=row[6],
    )
