"""The run store: one SQLite file (WAL mode), nothing to start.

It records each run (id, pipeline, structure fingerprint, parameters, status, times), every
task state transition and failed attempt, and each finished task's output (pickled, then
passed through the ``encrypt`` hook; read back through ``decrypt``).

Writes use group commit without a window (:mod:`._group_commit`); no successor of a task
starts before its outcome and output are committed, so after a crash at any instant only the
tasks in flight re-run (docs/run-store.md, "Crash guarantees"). ``synchronous=NORMAL``
survives a killed process; ``"full"`` also a power failure.

Files are created 0600 and their folder 0700: the store holds outputs and error texts.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs

from . import _lease
from ._blobs import BlobStore, blobs_section
from ._commit import FINISH_RUN, FOLDED_ORDER, Checkpointer, Committer
from ._held import HeldRun, HeldRuns, SqliteRecording
from ._records import PayloadRef
from ._sealed_streams import STREAM_PAYLOADS, sealed_stream_payloads
from ._store_file import DEFAULT_STORE_FILE as DEFAULT_STORE_FILE
from ._store_file import _connect
from ._store_file import default_blob_url as default_blob_url
from ._store_file import dump_output as dump_output
from ._store_file import load_output as load_output
from ._store_file import payload_ref as payload_ref
from ._store_file import store_section as store_section
from ._tables import CacheTable, CheckpointTable
from .exceptions import RunLeasedError as RunLeasedError
from .exceptions import StoreError


@attrs.frozen(kw_only=True)
class RunRecord:
    """A run as the store holds it."""

    run_id: str
    pipeline: str
    fingerprint: str
    structure: Mapping[str, Any]
    status: str
    started: float | None
    finished: float | None
    tenant: str | None
    principal: str | None
    params: Mapping[str, Any]
    config: Mapping[str, Any]
    source: str | None
    executor: str | None
    resumed_from: str | None
    error: str | None


@attrs.frozen(kw_only=True)
class TaskRecord:
    """A task of a run as the store holds it (output still serialized and encrypted)."""

    task: str
    status: str
    attempts: int
    started: float | None
    finished: float | None
    error_type: str | None
    error: str | None
    traceback: str | None
    output: bytes | None
    output_run: str | None
    tenant: str | None

    @property
    def duration(self) -> float | None:
        """Seconds from start to finish."""
        if self.started is None or self.finished is None:
            return None
        return self.finished - self.started


class _HeldRun(HeldRun, SqliteRecording):
    """A stream batch's run on the embedded store, held until its checkpoint."""


class RunStore(SqliteRecording, HeldRuns, _lease.LeaseMixin):
    """A handle on one store file. Thread-safe; writes go through a group committer.

    Records are committed as soon as no commit is in flight (see :mod:`._group_commit`): no
    window, no writer thread. ``commit(then)`` is the scheduler's barrier: ``then`` runs
    once everything recorded so far is committed (or with the error when it could not be).
    """

    held_run = _HeldRun

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "normal",
        busy_timeout_ms: int = 30000,
        create: bool = True,
        blobs: Mapping[str, Any] | None = None,
    ) -> None:
        from ._config import number

        busy_timeout_ms = number(
            minimum=0, maximum=86_400_000, integer=True, what="busy_timeout_ms"
        )(busy_timeout_ms)
        self.path = Path(path)
        self._sync = synchronous
        self.busy_timeout_ms = busy_timeout_ms
        self._conn = _connect(
            self.path, create=create, synchronous=synchronous, busy_ms=busy_timeout_ms
        )
        self._read_lock = threading.Lock()
        section = blobs_section(dict(blobs) if blobs is not None else None)
        #: Where outputs past ``store.blobs.threshold`` go (a folder beside the file by default).
        self.blobs = BlobStore(
            section["url"] or default_blob_url(self.path),
            threshold=section["threshold"],
            chunk_size=section["chunk_size"],
        )
        self._checkpointer: Checkpointer | None = None
        self._committer = Committer(self.path, self._writer_connection, busy_timeout_ms)
        self.add = self._committer.add  # type: ignore[method-assign]
        self.commit = self._committer.commit
        #: ``commit_soon(then)``: a stream's checkpoint commits. With ``synchronous: normal``
        #: a commit is CPU work (no fsync), so the stream's thread writes it itself when no
        #: commit is in flight (``commit_here``); with ``full`` the writer thread does, and
        #: its fsync overlaps the stream's next batch.
        self.commits_here = synchronous != "full"
        self.commit_soon = (
            self._committer.commit_here if self.commits_here else self._committer.commit
        )
        self.hold_runs(self._committer)  # stream batches' runs, until their checkpoint
        #: ``fn(connection)`` on the writer's warm connection, unless a commit is in flight.
        self.read_if_idle = self._committer.read_if_idle

    def _writer_connection(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            str(self.path),
            timeout=self.busy_timeout_ms / 1000,
            check_same_thread=False,
            isolation_level=None,  # transactions are explicit (see _commit)
            cached_statements=512,  # the log's multi-row INSERTs: sizes x shapes (_commit)
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        conn.execute(f"PRAGMA synchronous = {self._sync.upper()}")
        # Checkpoints (copying the WAL back into the file, with an fsync) run on a
        # background thread, off the commit path: see Checkpointer.
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        if self._checkpointer is None:
            self._checkpointer = Checkpointer(self)
        return conn

    # -- writing --------------------------------------------------------------------------

    @property
    def write_hook(self) -> Callable[[list[Any]], None] | None:
        """Tests only: a callable run before every write (raise OSError to inject a fault)."""
        return self._committer.write_hook

    @write_hook.setter
    def write_hook(self, hook: Callable[[list[Any]], None] | None) -> None:
        self._committer.write_hook = hook

    def submit(self, sql: str, params: tuple[Any, ...]) -> None:
        """Queue one statement and commit it as soon as no commit is in flight."""
        self._committer.add(sql, params)
        self._committer.commit()

    def flush(self) -> None:
        """Block until everything queued so far is committed (StoreError when it cannot be)."""
        self._committer.flush()

    def close(self) -> None:
        """Stop the lease heartbeat, commit what is queued, checkpoint the WAL and close the
        file."""
        try:
            self.stop_heartbeats()  # first: its last beat, if one is in flight, is committed
            self.release_held()  # runs whose checkpoint never came: recorded as they are
            self._committer.close()
        finally:
            cp, self._checkpointer = self._checkpointer, None
            if cp is not None:
                cp.stop()
            with self._read_lock:
                try:
                    self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error:
                    pass  # busy (another process): its next checkpoint does it
                self._conn.close()

    def open_cache(self) -> CacheTable:
        """The result cache's table in this file (see :mod:`._tables`); entries are written
        by this store's group commit, with the task's own row."""
        from ._cache import CacheStore

        return CacheStore(self.path, writer=self)

    def open_checkpoints(self) -> CheckpointTable:
        """Stream checkpoints in this file, committed by this store's writer with the batch
        run's rows in one transaction (see :mod:`._tables`)."""
        from .streams._checkpoint import CheckpointStore

        return CheckpointStore(self.path, synchronous=self._sync, writer=self)

    def prune(self, **options: Any) -> Any:
        """Delete whole old runs and reclaim the space: see :func:`._prune.prune_runs`."""
        from ._prune import prune_runs

        return prune_runs(self, **options)

    def checkpoint(self) -> None:
        """Copy the WAL back into the database file (PASSIVE: never blocks writers; the
        background checkpointer then restarts the WAL on the writer's connection)."""
        with self._reading() as c:
            c.execute("PRAGMA wal_checkpoint(PASSIVE)")

    # -- recording (called by the scheduler's store observer) -----------------------------

    def blob_names(self) -> list[str]:
        """Every blob name a stored output references (for key rotation)."""
        with self._reading() as c:
            return [r[0] for r in c.execute("SELECT DISTINCT name FROM blob_refs ORDER BY name")]

    def run_finished(self, run_id: str, status: str, finished: float, error: str | None) -> None:
        """Record how a run ended, release its leases and commit everything (or raise)."""
        self.release_held((run_id,))  # a held run refused before it ran: recorded now
        self.add(FINISH_RUN, (status, finished, error, run_id))
        self.add(
            "INSERT INTO events (run_id, task, ts, event, attempt, error_type, error) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (run_id, None, finished, "run." + status, None, None, None),
        )
        self.release_leases(run_id)
        self.flush()

    # -- reading ----------------------------------------------------------------------------

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._read_lock:
            try:
                yield self._conn
            except sqlite3.DatabaseError as exc:
                raise StoreError(
                    f"run store {str(self.path)!r} cannot be read: {exc}", path=str(self.path)
                ) from exc

    def get_run(self, run_id: str) -> RunRecord:
        """The run ``run_id`` (a unique prefix is enough); StoreError when unknown."""
        if not isinstance(run_id, str) or not run_id:
            raise StoreError(
                f"expected a run id or its prefix, got {run_id!r}", path=str(self.path)
            )
        with self._reading() as c:
            cols = (
                "SELECT run_id, pipeline, fingerprint, structure, status, started, finished, "
                "tenant, principal, params, config, source, executor, resumed_from, error "
                "FROM runs WHERE "
            )
            rows = c.execute(cols + "run_id = ?", (run_id,)).fetchall()
            if not rows:  # a prefix: compared literally ('%' and '_' are not wildcards)
                rows = c.execute(
                    cols + "substr(run_id, 1, ?) = ? LIMIT 2", (len(run_id), run_id)
                ).fetchall()
        if not rows:
            raise StoreError(
                f"run {run_id!r} is not in the run store {str(self.path)!r}", path=str(self.path)
            )
        if len(rows) > 1:
            raise StoreError(f"run id prefix {run_id!r} is ambiguous", path=str(self.path))
        r = rows[0]
        status = r[4]
        if status == "running":
            # Its owner may be gone (kill -9, power loss): then it shows as interrupted.
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
            error=r[14],
        )

    def list_runs(
        self, *, limit: int = 20, pipeline: str | None = None, status: str | None = None
    ) -> list[RunRecord]:
        """The newest runs first, optionally filtered."""
        sql = "SELECT run_id FROM runs"
        where: list[str] = []
        args: list[Any] = []
        if pipeline:
            where.append("pipeline = ?")
            args.append(pipeline)
        if status:
            where.append("status = ?")
            args.append("running" if status == "interrupted" else status)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started DESC LIMIT ?"
        args.append(limit)
        with self._reading() as c:
            ids = [r[0] for r in c.execute(sql, args).fetchall()]
        runs = [self.get_run(i) for i in ids]
        return [r for r in runs if status is None or r.status == status]

    def pipelines(self) -> list[str]:
        """The names of the pipelines with at least one run in the store."""
        with self._reading() as c:
            return [r[0] for r in c.execute("SELECT DISTINCT pipeline FROM runs ORDER BY 1")]

    def get_tasks(self, run_id: str) -> dict[str, TaskRecord]:
        """Every recorded task of a run by name."""
        with self._reading() as c:
            rows = c.execute(
                "SELECT task, status, attempts, started, finished, error_type, error, traceback, "
                "output, output_run, tenant FROM tasks WHERE run_id = ?",
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
                error=r[6],
                traceback=r[7],
                output=r[8],
                output_run=r[9],
                tenant=r[10],
            )
            for r in rows
        }

    def get_events(self, run_id: str) -> list[tuple[Any, ...]]:
        """Every state transition of a run: (task, ts, event, attempt, error_type, error).

        Starts and failed attempts are event rows; a task's terminal transition is its row in
        the tasks table (written once, in the same batch order), merged in here by time. A
        ``running`` event committed with the task's terminal row is folded into that row
        (``ran``, ``ran_attempt``) and put back here, after the task's other events of the
        same time; events of one time are ordered by task name, then as written.
        """
        with self._reading() as c:
            return c.execute(
                "SELECT task, ts, event, attempt, error_type, error FROM ("
                " SELECT task, ts, event, attempt, error_type, error, 0 AS k, id AS o "
                "  FROM events WHERE run_id = ? AND task IS NOT NULL"
                " UNION ALL SELECT task, ran, 'running', ran_attempt, NULL, NULL, 0, ?"
                "  FROM tasks WHERE run_id = ? AND ran IS NOT NULL"
                " UNION ALL SELECT task, COALESCE(finished, started, 0), status, attempts,"
                "  error_type, error, 1, 0 FROM tasks WHERE run_id = ?"
                " UNION ALL SELECT task, ts, event, attempt, error_type, error, 2, id "
                "  FROM events WHERE run_id = ? AND task IS NULL"
                ") ORDER BY k = 2, ts, k, task, o",
                (run_id, FOLDED_ORDER, run_id, run_id, run_id),
            ).fetchall()

    def iter_outputs(self) -> Iterator[tuple[str, str, str | None, bytes]]:
        """(run_id, task, tenant, blob) of every stored output (for key rotation)."""
        with self._reading() as c:
            rows = c.execute(
                "SELECT COALESCE(output_run, run_id), task, tenant, output FROM tasks "
                "WHERE output IS NOT NULL AND (output_run IS NULL OR output_run = run_id)"
            ).fetchall()
        yield from rows

    def iter_sealed_texts(self) -> Iterator[tuple[tuple[str, int, str], PayloadRef, bytes]]:
        """Every error text stored encrypted, and every stream payload (window state, a
        batch's copy of its output), for key rotation: (where, ref, blob)."""
        with self._reading() as c:
            rows = c.execute(
                "SELECT 'tasks', t.rowid, 'error', t.run_id, r.pipeline, t.task, t.tenant, "
                "t.error, 'error' FROM tasks t JOIN runs r USING (run_id) "
                "WHERE typeof(t.error) = 'blob' "
                "UNION ALL SELECT 'tasks', t.rowid, 'traceback', t.run_id, r.pipeline, t.task, "
                "t.tenant, t.traceback, 'traceback' FROM tasks t JOIN runs r USING (run_id) "
                "WHERE typeof(t.traceback) = 'blob' "
                "UNION ALL SELECT 'events', e.rowid, 'error', e.run_id, r.pipeline, e.task, "
                "COALESCE((SELECT t.tenant FROM tasks t WHERE t.run_id = e.run_id AND "
                "t.task = e.task), r.tenant), e.error, 'error' FROM events e "
                "JOIN runs r USING (run_id) WHERE typeof(e.error) = 'blob' "
                "UNION ALL SELECT 'runs', rowid, 'error', run_id, pipeline, '', tenant, error, "
                "'run_error' FROM runs WHERE typeof(error) = 'blob'"
            ).fetchall()
            streams = sealed_stream_payloads(c)
        for table, rowid, column, run_id, pipeline, task, tenant, blob, kind in rows:
            ref = PayloadRef(
                run_id=run_id, pipeline=pipeline, task=task or "", tenant=tenant, kind=kind
            )
            yield (table, rowid, column), ref, bytes(blob)
        yield from streams

    def replace_sealed_text(self, where: tuple[str, int, str], blob: bytes) -> None:
        """Overwrite one encrypted text or stream payload named by :meth:`iter_sealed_texts`."""
        table, rowid, column = where
        text = table in ("tasks", "events", "runs") and column in ("error", "traceback")
        if not text and (table, column) not in STREAM_PAYLOADS:
            raise ValueError(f"not a sealed text or stream payload: {where!r}")
        with self._read_lock, self._conn:
            self._conn.execute(f"UPDATE {table} SET {column}=? WHERE rowid=?", (blob, rowid))

    def redact_tenant_texts(self, tenant: str, marker: str) -> int:
        """Overwrite with ``marker`` every error text and traceback stored in clear (not
        sealed by an ``encrypt`` hook) of ``tenant``'s tasks, their failed attempts and the
        runs made for it; return how many were overwritten (crypto-shredding: sealed texts
        are shredded by the encryption plugin, clear ones are erased here)."""
        clear = "typeof({0}) = 'text'"
        with self._read_lock, self._conn:
            c = self._conn
            n = c.execute(
                f"UPDATE tasks SET error = CASE WHEN {clear.format('error')} THEN ? ELSE error "
                f"END, traceback = CASE WHEN {clear.format('traceback')} THEN NULL ELSE "
                f"traceback END WHERE tenant = ? AND ({clear.format('error')} OR "
                f"{clear.format('traceback')})",
                (marker, tenant),
            ).rowcount
            n += c.execute(
                f"UPDATE events SET error = ? WHERE {clear.format('error')} AND EXISTS (SELECT 1 "
                "FROM tasks t WHERE t.run_id = events.run_id AND t.task = events.task AND "
                "t.tenant = ?)",
                (marker, tenant),
            ).rowcount
            n += c.execute(
                f"UPDATE runs SET error = ? WHERE tenant = ? AND {clear.format('error')}",
                (marker, tenant),
            ).rowcount
        return int(n)

    def replace_output(self, run_id: str, task: str, blob: bytes) -> None:
        """Overwrite the stored output of ``run_id``/``task`` (and rows that reuse it)."""
        with self._read_lock, self._conn:
            self._conn.execute(
                "UPDATE tasks SET output=? WHERE task=? AND (run_id=? AND output_run IS NULL "
                "OR output_run=?)",
                (blob, task, run_id, run_id),
            )


# --- serialization of outputs ----------------------------------------------------------------
