"""The PostgreSQL store's writer: the core's windowless group commit onto one dedicated
connection, one transaction per batch (log rows as one ``unnest`` statement, mixed batches in
pipeline mode), and how sealed error texts are kept in TEXT columns."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

import psycopg

from xlib_pipeline import StoreError
from xlib_pipeline.store import LOG, GroupCommitter, split_log

from ._schema import SEALED_PREFIX

if TYPE_CHECKING:  # pragma: no cover
    from ._store import PostgresStore


class Native(str):
    """A statement in PostgreSQL's own dialect, queued on the writer: executed as it is
    (no rewriting of SQLite's ``?`` placeholders, bytes stay BYTEA parameters)."""

    __slots__ = ()


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


class Committer(GroupCommitter):
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
    "error_type, error, traceback, output, output_run, tenant, ran, ran_attempt) SELECT * FROM "
    "unnest(%b::text[], %b::text[], %b::text[], %b::int[], %b::float8[], %b::float8[], "
    "%b::text[], %b::text[], %b::text[], %b::bytea[], %b::text[], %b::text[], %b::float8[], "
    "%b::int[]) ON CONFLICT (run_id, task) "
    "DO UPDATE SET status = EXCLUDED.status, attempts = EXCLUDED.attempts, started = "
    "EXCLUDED.started, finished = EXCLUDED.finished, error_type = EXCLUDED.error_type, error = "
    "EXCLUDED.error, traceback = EXCLUDED.traceback, output = EXCLUDED.output, output_run = "
    "EXCLUDED.output_run, tenant = EXCLUDED.tenant, ran = EXCLUDED.ran, ran_attempt = "
    "EXCLUDED.ran_attempt RETURNING 1), "
    "ei AS (INSERT INTO events (run_id, task, ts, event, attempt, error_type, error) "
    "SELECT r, t, ts, ev, at, et, er FROM unnest(%b::text[], %b::text[], %b::float8[], "
    "%b::text[], %b::int[], %b::text[], %b::text[]) WITH ORDINALITY AS u(r, t, ts, ev, at, et, "
    "er, o) ORDER BY o RETURNING 1) SELECT (SELECT count(*) FROM ti), (SELECT count(*) FROM ei)"
)


def _log_only(cur: psycopg.Cursor[Any], items: list[tuple[str, tuple[Any, ...]]]) -> None:
    """A batch of log rows only (the common case): one statement, one round trip, atomic
    on its own (autocommit), so the commit costs one wait on the server. A task's
    ``running`` event in the same batch as its terminal row is folded into that row (the
    core's :func:`~xlib_pipeline.store.split_log`; ``get_events`` puts it back)."""
    rows, evs = split_log([row for _, row in items])
    tasks: dict[tuple[Any, Any], tuple[Any, ...]] = {}  # a task's last row wins
    for r in rows:
        tasks[(r[0], r[1])] = (*r[:7], seal_text(r[7]), seal_text(r[8]), *r[9:])
    events = [(*e[:6], seal_text(e[6])) for e in evs]
    tcols = [list(c) for c in zip(*tasks.values())] if tasks else [[] for _ in range(14)]
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
