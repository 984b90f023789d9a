"""The PostgreSQL store's reads (runs, tasks, events, outputs, sealed texts) and its
retention (``prune``)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import psycopg
import psycopg_pool

from xlib_pipeline import ConfigError, PayloadRef, StoreError
from xlib_pipeline.store import (
    FOLDED_ORDER,
    BlobStore,
    PruneReport,
    RunRecord,
    TaskRecord,
    remove_blobs,
)

from ._schema import SEALED_PREFIX
from ._writer import seal_text, unseal_text

#: For key rotation: a stream's sealed window state and its batches' copies of their output.
_STREAM_PAYLOADS = (
    "SELECT 'streams', name, 'window_state', COALESCE(lineage_run, name), pipeline, name, "
    "tenant, window_state, 'window_state' FROM streams WHERE window_state IS NOT NULL "
    "UNION ALL SELECT 'stream_batches', json_build_array(b.stream, b.seq)::text, 'output', "
    "COALESCE(s.lineage_run, s.name), s.pipeline, s.name, s.tenant, b.output, "
    "'stream_output' FROM stream_batches b JOIN streams s ON s.name = b.stream "
    "WHERE b.output IS NOT NULL"
)

if TYPE_CHECKING:  # pragma: no cover
    from xlib_pipeline.store import Lease

    from ._writer import Committer

_RUN_COLUMNS = (
    "run_id, pipeline, fingerprint, structure, status, started, finished, tenant, principal, "
    "params, config, source, executor, resumed_from, error"
)


class StoreReads:
    """Reads and retention of :class:`~._store.PostgresStore` (a mixin: the store provides
    the pool, the blob store, the writer and the fault messages)."""

    pool: psycopg_pool.ConnectionPool[Any]
    path: str
    blobs: BlobStore
    _committer: Committer

    if TYPE_CHECKING:  # pragma: no cover

        def fault(self, exc: BaseException, what: str) -> StoreError: ...
        def flush(self) -> None: ...
        def lease(self, run_id: str) -> Lease | None: ...

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
                " UNION ALL SELECT task, ran, 'running', ran_attempt, NULL, NULL, 0, %s::bigint"
                "  FROM tasks WHERE run_id = %s AND ran IS NOT NULL"
                " UNION ALL SELECT task, COALESCE(finished, started, 0), status, attempts,"
                "  error_type, error, 1, 0 FROM tasks WHERE run_id = %s"
                " UNION ALL SELECT task, ts, event, attempt, error_type, error, 2, id "
                "  FROM events WHERE run_id = %s AND task IS NULL"
                ') AS merged ORDER BY k = 2, ts, k, task COLLATE "C", o',
                (run_id, FOLDED_ORDER, run_id, run_id, run_id),
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
            streams = conn.execute(_STREAM_PAYLOADS).fetchall()
        for table, key, column, run_id, pipeline, task, tenant, text, kind in rows:
            ref = PayloadRef(
                run_id=run_id, pipeline=pipeline, task=task or "", tenant=tenant, kind=kind
            )
            yield (table, key, column), ref, unseal_text(text)
        # A stream's window state and its batches' copies of their output (BYTEA).
        for table, key, column, run_id, pipeline, name, tenant, blob, kind in streams:
            ref = PayloadRef(
                run_id=run_id, pipeline=pipeline, task=f"stream:{name}", tenant=tenant, kind=kind
            )
            yield (table, key, column), ref, bytes(blob)

    def replace_sealed_text(self, where: tuple[str, str, str], blob: bytes) -> None:
        table, key, column = where
        args: tuple[Any, ...]
        if (table, column) == ("streams", "window_state"):
            sql, args = "UPDATE streams SET window_state = %s WHERE name = %s", (blob, key)
        elif (table, column) == ("stream_batches", "output"):
            stream, seq = json.loads(key)
            sql = "UPDATE stream_batches SET output = %s WHERE stream = %s AND seq = %s"
            args = (blob, stream, seq)
        elif table not in ("tasks", "events", "runs") or column not in ("error", "traceback"):
            raise ValueError(f"not a sealed text or stream payload: {where!r}")
        elif table == "tasks":
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
