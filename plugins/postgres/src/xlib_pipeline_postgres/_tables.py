"""The result cache and stream checkpoints in PostgreSQL (schema migration 3).

:class:`PostgresCache` is the store's ``CacheTable``: reads and writes on pooled connections,
one statement each (an entry's output arrives encrypted by the core). Every driver on the
database shares the entries; a tenant's entries serve only that tenant (``tenant IS NOT
DISTINCT FROM``, and the tenant is in the key and the encryption AAD).

:class:`PostgresCheckpoints` is the store's ``CheckpointTable``: its writes are queued on the
store's writer after the batch run's rows, which the store held until then (``HeldRuns``),
as one unit committed in one transaction (:class:`~._store.Native` statements), so a crash or
a dropped connection leaves either the whole batch (run and checkpoint) or none of it, and
no other commit (another run's flush) takes the run's rows without the checkpoint. Reads
use the pool.
"""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
import psycopg_pool

from xlib_pipeline import StoreError
from xlib_pipeline.store import BatchRecord, CacheEntry, StreamRecord

from ._store import Native

if TYPE_CHECKING:
    from xlib_pipeline.streams import Checkpoint

    from ._store import PostgresStore

T = TypeVar("T")


def _j(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _u(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _b(value: Any) -> bytes | None:
    return None if value is None else bytes(value)


class _Table:
    def __init__(self, store: PostgresStore, tables: tuple[str, ...], what: str) -> None:
        self.store = store
        #: Where the table is, for messages: the store's URL without its password.
        self.path = store.path
        self._what = what
        self._tables = tables
        with self._conn() as conn:
            for table in tables:
                row = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
                if row is None or row[0] is None:
                    raise store.missing_table(_Undefined(table), table, what)

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        try:
            with self.store.pool.connection() as conn:
                yield conn
        except psycopg.Error as exc:
            table = next((t for t in self._tables if t in str(exc)), self._tables[0])
            raise self.store.missing_table(exc, table, self._what) from exc
        except psycopg_pool.PoolTimeout as exc:
            raise StoreError(
                f"run store {self.path!r} ({self._what}): no connection within the pool's "
                "timeout (store.pool.connect_timeout_s)",
                path=self.path,
            ) from exc

    def _write(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        """Queue ``statements`` on the store's writer behind what it holds; wait once."""
        self.store.add_unit([(Native(sql), params) for sql, params in statements])
        try:
            self.store.flush()
        except StoreError as exc:
            raise self._named(exc) from exc.__cause__

    def _named(self, exc: StoreError) -> StoreError:
        """``exc``, or the error naming the missing table when that is what failed."""
        cause = exc.__cause__
        if cause is not None and getattr(cause, "sqlstate", None) == "42P01":
            table = next((t for t in self._tables if t in str(cause)), self._tables[0])
            named: StoreError = self.store.missing_table(cause, table, self._what)
            named.__cause__ = cause
            return named
        return exc

    def close(self) -> None:
        """Nothing of its own to release: the store's pool and writer are the store's."""


class _Undefined(Exception):
    sqlstate = "42P01"


class PostgresCache(_Table):
    """The ``cache_entries`` table (see the module docstring)."""

    def __init__(self, store: PostgresStore) -> None:
        super().__init__(store, ("cache_entries",), "the result cache")
        self._queued = False  # put() queued entries on the writer since the last read

    def _settle(self) -> None:
        """Commit the entries :meth:`put` queued, before reading (a direct ``put`` is seen
        by the next ``get``)."""
        if self._queued:
            self._queued = False
            self.store.flush()

    def close(self) -> None:
        self._settle()

    def get(self, key: str, tenant: str | None, now: float) -> tuple[bytes, str | None] | None:
        self._settle()
        with self._conn() as conn:
            row = conn.execute(
                "SELECT output, run_id FROM cache_entries WHERE key = %s AND tenant IS NOT "
                "DISTINCT FROM %s AND (expires IS NULL OR expires > %s)",
                (key, tenant, now),
            ).fetchone()
        return None if row is None else (bytes(row[0]), row[1])

    def put(
        self,
        key: str,
        *,
        tenant: str | None,
        pipeline: str,
        task: str,
        ttl: float | None,
        run_id: str,
        output: bytes,
    ) -> None:
        # Queued on the store's group commit, not written on a connection of its own: it is
        # committed in the same transaction as the task's row (the scheduler commits right
        # after the task), or by the next commit, at the latest when the run ends.
        now = time.time()
        self.store.add(
            Native(
                "INSERT INTO cache_entries (key, tenant, pipeline, task, created, expires, "
                "run_id, output) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (key) DO "
                "UPDATE SET tenant = EXCLUDED.tenant, pipeline = EXCLUDED.pipeline, task = "
                "EXCLUDED.task, created = EXCLUDED.created, expires = EXCLUDED.expires, "
                "run_id = EXCLUDED.run_id, output = EXCLUDED.output"
            ),
            (key, tenant, pipeline, task, now, now + ttl if ttl else None, run_id, output),
        )
        self._queued = True

    @staticmethod
    def _where(
        pipeline: str | None, task: str | None, older_than: float | None
    ) -> tuple[str, list[Any]]:
        clauses = ["TRUE"]
        args: list[Any] = []
        if pipeline is not None:
            clauses.append("pipeline = %s")
            args.append(pipeline)
        if task is not None:
            clauses.append("task = %s")
            args.append(task)
        if older_than is not None:
            clauses.append("created < %s")
            args.append(time.time() - older_than)
        return " AND ".join(clauses), args

    def list(
        self,
        pipeline: str | None = None,
        task: str | None = None,
        older_than: float | None = None,
    ) -> builtins.list[CacheEntry]:
        self._settle()
        where, args = self._where(pipeline, task, older_than)
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT key, tenant, pipeline, task, created, expires, run_id, "
                f"octet_length(output) FROM cache_entries WHERE {where} ORDER BY created",
                args,
            ).fetchall()
        return [
            CacheEntry(
                key=r[0],
                tenant=r[1],
                pipeline=r[2],
                task=r[3],
                created=r[4],
                expires=r[5],
                run_id=r[6],
                size=r[7],
            )
            for r in rows
        ]

    def clear(
        self,
        pipeline: str | None = None,
        task: str | None = None,
        older_than: float | None = None,
    ) -> int:
        self._settle()
        where, args = self._where(pipeline, task, older_than)
        with self._conn() as conn:
            cur = conn.execute(f"DELETE FROM cache_entries WHERE {where}", args)
        return cur.rowcount


_COLS = (
    'name, pipeline, source, sink, status, seq, "offset", position, origin, records, outputs, '
    "late, dead, lag, window_state, tenant, lineage_run, started, updated, error"
)


class PostgresCheckpoints(_Table):
    """The ``streams`` and ``stream_batches`` tables (see the module docstring)."""

    def __init__(self, store: PostgresStore) -> None:
        super().__init__(store, ("streams", "stream_batches"), "stream checkpoints")

    def _read(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        with self._conn() as conn:
            return fn(conn)

    def load(self, name: str) -> StreamRecord | None:
        row = self._read(
            lambda c: c.execute(f"SELECT {_COLS} FROM streams WHERE name = %s", (name,)).fetchone()
        )
        return None if row is None else _record(row)

    def list_streams(self) -> builtins.list[StreamRecord]:
        rows = self._read(
            lambda c: c.execute(
                f"SELECT {_COLS} FROM streams ORDER BY updated DESC NULLS LAST"
            ).fetchall()
        )
        return [_record(r) for r in rows]

    def create(
        self,
        *,
        name: str,
        pipeline: str,
        source: str,
        sink: str,
        origin: Any,
        tenant: str | None,
        lineage_run: str | None,
    ) -> None:
        now = time.time()
        self._write(
            [
                ("DELETE FROM stream_batches WHERE stream = %s", (name,)),
                ("DELETE FROM streams WHERE name = %s", (name,)),
                (
                    f"INSERT INTO streams ({_COLS}) VALUES (%s, %s, %s, %s, 'running', 0, NULL, "
                    "%s, %s, 0, 0, 0, 0, NULL, NULL, %s, %s, %s, %s, NULL)",
                    (
                        name,
                        pipeline,
                        source,
                        sink,
                        _j(origin),
                        _j(origin),
                        tenant,
                        lineage_run,
                        now,
                        now,
                    ),
                ),
            ]
        )

    def reopen(self, name: str, *, source: str, sink: str) -> None:
        self._write(
            [
                (
                    "UPDATE streams SET status = 'running', source = %s, sink = %s, updated = %s,"
                    " error = NULL WHERE name = %s",
                    (source, sink, time.time(), name),
                )
            ]
        )

    def _unit(self, name: str, batch: dict[str, Any]) -> list[tuple[str, tuple[Any, ...]]]:
        """The statements that commit one batch: its runs' rows held by the store
        (``run_id``, and ``runs`` before it: a quarantined batch's runs), then its
        checkpoint's, as one unit (no other commit of the queue takes some of them)."""
        runs: tuple[str, ...] = tuple(batch.pop("runs", ()))
        if batch["run_id"] is not None:
            runs += (batch["run_id"],)
        unit = self.store.take_held(runs) if runs else []
        unit += [(Native(sql), params) for sql, params in self._statements(name, **batch)]
        return unit

    def commit(self, name: str, **batch: Any) -> None:
        self.store.add_unit(self._unit(name, batch))
        try:
            self.store.flush()
        except StoreError as exc:
            raise self._named(exc) from exc.__cause__

    def commit_later(
        self, name: str, *, then: Callable[[BaseException | None], None], **batch: Any
    ) -> None:
        """Queue the batch's commit behind its run's rows and return at once; the store's
        writer calls ``then(None)`` once they are committed in one transaction, or
        ``then(StoreError)``."""
        self.store.add_unit(self._unit(name, batch))

        def done(err: BaseException | None) -> None:
            named = err
            try:
                if isinstance(err, StoreError):
                    named = self._named(err)
            finally:
                then(named)  # always: the stream waits for it

        self.store.commit(done)

    def _statements(
        self,
        name: str,
        *,
        checkpoint: Checkpoint,
        run_id: str | None,
        start: Any,
        records: int,
        outputs: int,
        output: bytes | None,
        window_state: bytes | None,
        late: int = 0,
        dead: int = 0,
        lag: int | None = None,
    ) -> list[tuple[str, tuple[Any, ...]]]:
        now = time.time()
        pos = _j(checkpoint.position)
        return [
            (
                "INSERT INTO stream_batches (stream, seq, run_id, start_offset, end_offset, "
                "records, outputs, late, dead, position, output, committed) VALUES (%s, %s, "
                "%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (stream, seq) DO UPDATE "
                "SET run_id = EXCLUDED.run_id, start_offset = EXCLUDED.start_offset, "
                "end_offset = EXCLUDED.end_offset, records = EXCLUDED.records, outputs = "
                "EXCLUDED.outputs, late = EXCLUDED.late, dead = EXCLUDED.dead, position = "
                "EXCLUDED.position, output = EXCLUDED.output, committed = EXCLUDED.committed",
                (
                    name,
                    checkpoint.seq,
                    run_id,
                    _j(start),
                    _j(checkpoint.offset),
                    records,
                    outputs,
                    late,
                    dead,
                    pos,
                    output,
                    now,
                ),
            ),
            (
                'UPDATE streams SET seq = %s, "offset" = %s, position = %s, records = '
                "records + %s, outputs = outputs + %s, late = late + %s, dead = dead + %s, "
                "lag = %s, window_state = %s, updated = %s WHERE name = %s",
                (
                    checkpoint.seq,
                    _j(checkpoint.offset),
                    pos,
                    records,
                    outputs,
                    late,
                    dead,
                    lag,
                    window_state,
                    now,
                    name,
                ),
            ),
        ]

    def finish(self, name: str, status: str, error: str | None = None) -> None:
        self._write(
            [
                (
                    "UPDATE streams SET status = %s, error = %s, updated = %s WHERE name = %s",
                    (status, error, time.time(), name),
                )
            ]
        )

    def batches(self, name: str, *, limit: int = 20) -> builtins.list[BatchRecord]:
        rows = self._read(
            lambda c: c.execute(
                "SELECT seq, run_id, start_offset, end_offset, records, outputs, late, dead, "
                "position, output, committed FROM stream_batches WHERE stream = %s "
                "ORDER BY seq DESC LIMIT %s",
                (name, limit),
            ).fetchall()
        )
        return [
            BatchRecord(
                seq=r[0],
                run_id=r[1],
                start_offset=_u(r[2]),
                end_offset=_u(r[3]),
                records=r[4],
                outputs=r[5],
                late=r[6],
                dead=r[7],
                position=_u(r[8]),
                output=_b(r[9]),
                committed=r[10],
            )
            for r in rows
        ]


def _record(r: Any) -> StreamRecord:
    return StreamRecord(
        name=r[0],
        pipeline=r[1],
        source=r[2],
        sink=r[3],
        status=r[4],
        seq=r[5],
        offset=_u(r[6]),
        position=_u(r[7]),
        origin=_u(r[8]),
        records=r[9],
        outputs=r[10],
        late=r[11],
        dead=r[12],
        lag=r[13],
        window_state=_b(r[14]),
        tenant=r[15],
        lineage_run=r[16],
        started=r[17],
        updated=r[18],
        error=r[19],
    )
