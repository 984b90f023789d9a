"""Stream checkpoints in the run store: one transaction per batch.

Two tables beside the run store's own: ``streams`` (one row per stream: where it is, its
counters, its window state) and ``stream_batches`` (one row per committed batch: its run,
source offsets, output and sink position). A batch's row and the stream row's update are
written in **one** SQLite transaction on a connection of this module's own, so after a
crash at any instant the store holds either the whole checkpoint of a batch or none of it.

This is the SQLite store's :class:`~xlib_pipeline._tables.CheckpointTable`
(``RunStore.open_checkpoints()``); a server store provides its own.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._group_commit import Then
from .._merge import ADVANCE, BATCH_INSERT
from .._tables import BatchRecord, StreamRecord
from ..exceptions import StoreError
from ._protocol import Checkpoint

__all__ = ["BatchRecord", "CheckpointStore", "StreamRecord"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    name TEXT PRIMARY KEY,
    pipeline TEXT NOT NULL,
    source TEXT,
    sink TEXT,
    status TEXT NOT NULL,
    seq INTEGER NOT NULL DEFAULT 0,
    offset TEXT,
    position TEXT,
    origin TEXT,
    records INTEGER NOT NULL DEFAULT 0,
    outputs INTEGER NOT NULL DEFAULT 0,
    late INTEGER NOT NULL DEFAULT 0,
    dead INTEGER NOT NULL DEFAULT 0,
    lag INTEGER,
    window_state BLOB,
    tenant TEXT,
    lineage_run TEXT,
    started REAL,
    updated REAL,
    error TEXT
);
CREATE TABLE IF NOT EXISTS stream_batches (
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    run_id TEXT,
    start_offset TEXT,
    end_offset TEXT,
    records INTEGER NOT NULL,
    outputs INTEGER NOT NULL,
    late INTEGER NOT NULL DEFAULT 0,
    dead INTEGER NOT NULL DEFAULT 0,
    position TEXT,
    output BLOB,
    committed REAL NOT NULL,
    PRIMARY KEY (stream, seq)
);
"""


_ENCODE = json.JSONEncoder(sort_keys=True).encode


def _j(value: Any) -> str:
    """``json.dumps(value, sort_keys=True)``; an int (a byte offset, a sink position) or
    ``None`` without building an encoder (three per batch)."""
    if type(value) is int:
        return int.__repr__(value)
    if value is None:
        return "null"
    return _ENCODE(value)


def _u(text: str | None) -> Any:
    return None if text is None else json.loads(text)


_COLS = (
    "name, pipeline, source, sink, status, seq, offset, position, origin, records, outputs, "
    "late, dead, lag, window_state, tenant, lineage_run, started, updated, error"
)


class CheckpointStore:
    """Checkpoint tables of one run store file (its own connection; thread-safe)."""

    path: Path

    def __init__(
        self, path: str | Path, *, synchronous: str = "normal", writer: Any = None
    ) -> None:
        self.path = Path(path)
        #: The run store whose group committer writes batch checkpoints (after the batch
        #: run's own rows, in order, with one wait); ``None``: this connection does.
        self._writer = writer
        try:
            self._conn = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False)
            self._conn.execute("PRAGMA busy_timeout = 30000")
            self._conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            if writer is not None:
                # The run store's checkpointer keeps the WAL bounded, off the commit path;
                # this connection's commits (a stream's start and end) must not copy the
                # WAL back themselves: that took 20-45 ms at a stream's end once the WAL
                # held 1000 pages (SQLite's default auto-checkpoint).
                self._conn.execute("PRAGMA wal_autocheckpoint = 0")
            self._conn.executescript(_SCHEMA)
            self._conn.commit()
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"run store {str(self.path)!r}: cannot keep stream checkpoints: {exc}",
                path=str(self.path),
            ) from exc
        self._lock = threading.Lock()
        #: How a queued commit is asked for: the store's ``commit_soon`` (see RunStore), or
        #: its writer's ``commit``.
        self._ask: Callable[[Then], None] | None = (
            None if writer is None else getattr(writer, "commit_soon", None) or writer.commit
        )
        #: Whether a commit asked for is written on the asking thread (see RunStore).
        self.commits_here = bool(getattr(writer, "commits_here", False))

    def _tx(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        with self._lock:
            try:
                with self._conn:
                    for sql, params in statements:
                        self._conn.execute(sql, params)
            except sqlite3.DatabaseError as exc:
                raise StoreError(
                    f"run store {str(self.path)!r}: a checkpoint write failed: {exc}",
                    path=str(self.path),
                ) from exc

    def _unit(self, name: str, batch: dict[str, Any]) -> list[tuple[str, tuple[Any, ...]]]:
        """The statements that commit one batch, after its runs' rows held by the run store
        (``run_id``, and ``runs`` before it: a quarantined batch's runs), as one unit."""
        runs: tuple[str, ...] = tuple(batch.pop("runs", ()))
        statements = self._statements(name, **batch)
        if batch["run_id"] is not None:
            runs += (batch["run_id"],)
        take = getattr(self._writer, "take_held", None)
        held = take(runs) if take is not None and runs else []
        if not held:
            return statements
        held += statements
        return held

    def _queue(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        add_unit = getattr(self._writer, "add_unit", None)
        if add_unit is not None:
            add_unit(statements)
            return
        for sql, params in statements:
            self._writer.add(sql, params)

    def _through_writer(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        """Queue ``statements`` (the batch run's held rows, then the checkpoint) as one unit
        and wait once for the commit: one transaction for them, no second writer."""
        self._queue(statements)
        self._writer.flush()

    def load(self, name: str) -> StreamRecord | None:
        """The stream ``name``, or ``None`` when it never ran on this store."""
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_COLS} FROM streams WHERE name = ?", (name,)
            ).fetchone()
        return None if row is None else _record(row)

    def list_streams(self) -> list[StreamRecord]:
        """Every stream, most recently updated first."""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_COLS} FROM streams ORDER BY updated DESC"
            ).fetchall()
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
        """Start stream ``name`` afresh at the sink's ``origin`` (drops its old batches)."""
        now = time.time()
        self._tx(
            [
                ("DELETE FROM stream_batches WHERE stream = ?", (name,)),
                (
                    f"INSERT OR REPLACE INTO streams ({_COLS}) VALUES "
                    "(?, ?, ?, ?, 'running', 0, NULL, ?, ?, 0, 0, 0, 0, NULL, NULL, ?, ?, ?, ?, "
                    "NULL)",
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
        """Mark stream ``name`` running again (a restart that continues)."""
        self._tx(
            [
                (
                    "UPDATE streams SET status='running', source=?, sink=?, updated=?, "
                    "error=NULL WHERE name=?",
                    (source, sink, time.time(), name),
                )
            ]
        )

    def commit(self, name: str, **batch: Any) -> None:
        """Commit one batch: its row and the stream's new offsets, position, counters and
        window state, in one transaction (see :meth:`_statements` for the arguments)."""
        if self._writer is None:
            batch.pop("runs", None)
            self._tx(self._statements(name, **batch))
            return
        self._through_writer(self._unit(name, batch))

    def commit_later(self, name: str, *, then: Then, **batch: Any) -> None:
        """Queue :meth:`commit` of one batch behind the batch run's rows and return at once:
        the store's writer commits them as soon as no commit is in flight, in one
        transaction, then calls ``then(None)``, or ``then(StoreError)`` when it could not
        (from the writer's thread, or from this one)."""
        if self._writer is None:
            batch.pop("runs", None)
            statements = self._statements(name, **batch)
            try:
                self._tx(statements)
            except StoreError as exc:
                then(exc)
                return
            then(None)
            return
        self._queue(self._unit(name, batch))
        assert self._ask is not None
        self._ask(then)

    def queue(self, name: str, **batch: Any) -> None:
        """Queue one batch's commit (its run's held rows, then its checkpoint, one unit)
        without asking for it: :meth:`wake` asks for the commit of every batch queued so
        far, which the store's writer then writes in one transaction (a commit in flight
        meanwhile, or another run's, may write them sooner: whole units)."""
        self._queue(self._unit(name, batch))

    def wake(self, then: Then) -> None:
        """Ask for the commit of everything :meth:`queue` queued; ``then(error)`` after (on
        this thread when the store commits here: see RunStore.commit_soon)."""
        assert self._ask is not None
        self._ask(then)

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
        """The statements that commit one batch."""
        now = time.time()
        pos = _j(checkpoint.position)
        return [
            (
                BATCH_INSERT,
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
                ADVANCE,
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
        """Record how a stream stopped (``completed``, ``stopped``, ``failed``)."""
        self._tx(
            [
                (
                    "UPDATE streams SET status=?, error=?, updated=? WHERE name=?",
                    (status, error, time.time(), name),
                )
            ]
        )

    def batches(self, name: str, *, limit: int = 20) -> list[BatchRecord]:
        """The newest committed batches of ``name``, newest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, run_id, start_offset, end_offset, records, outputs, late, dead, "
                "position, output, committed FROM stream_batches WHERE stream = ? "
                "ORDER BY seq DESC LIMIT ?",
                (name, limit),
            ).fetchall()
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
                output=r[9],
                committed=r[10],
            )
            for r in rows
        ]

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()


def _record(r: tuple[Any, ...]) -> StreamRecord:
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
        window_state=r[14],
        tenant=r[15],
        lineage_run=r[16],
        started=r[17],
        updated=r[18],
        error=r[19],
    )
