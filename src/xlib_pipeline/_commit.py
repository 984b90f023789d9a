"""The SQLite run store's writer: :class:`Committer` (the windowless group commit of
:mod:`._group_commit` onto one SQLite connection), the log table's multi-row inserts, and
the WAL checkpointer."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from itertools import chain, compress, repeat
from operator import is_, itemgetter
from pathlib import Path
from typing import Any

from ._faults import describe_fault
from ._group_commit import GroupCommitter, Statement
from ._merge import merged
from .exceptions import StoreError


class Committer(GroupCommitter):
    """Group commit of statements onto the SQLite connection made by ``connect``."""

    faults = (sqlite3.Error, OSError)

    def __init__(self, path: Path, connect: Callable[[], sqlite3.Connection], busy_ms: int) -> None:
        super().__init__()
        self.path = path
        self._connect = connect
        self._busy_ms = busy_ms
        self._conn: sqlite3.Connection | None = None

    def fault(self, exc: BaseException) -> StoreError:
        return describe_fault(self.path, exc, self._busy_ms)

    def disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def connection(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is None:
            conn = self._conn = self._connect()
        return conn

    def write(self, batch: list[Statement]) -> None:
        if self.write_hook is not None:
            self.write_hook(batch)
        conn = self.connection()
        # Log rows (a task's terminal row, a state transition) go in multi-row INSERTs (a
        # few per table, see _statements); a batch of log rows alone is one transaction.
        # Every SQLite call releases the GIL, and taking it back while the scheduler's lanes
        # run can cost a switch interval (5 ms), so the number of calls per commit bounds the
        # cost. Other statements (a run's row, leases, a stream's checkpoint, cache entries)
        # go in the same transaction as the log rows around them, in order; only a CALL item
        # (a function given the connection) runs between transactions.
        k = 0
        n = len(batch)
        try:
            heads = list(map(_head, batch))
            if heads.count(LOG) == n:  # the usual batch: log rows alone
                _insert_log(conn, list(map(_params, batch)))
                k = n
            while k < n:
                if batch[k][0] is _CALL:
                    batch[k][1][0](conn)
                    k += 1
                    continue
                j = k
                plain = False
                while j < n and batch[j][0] is not _CALL:
                    plain = plain or batch[j][0] is not LOG
                    j += 1
                if not plain:
                    _insert_log(conn, [params for _, params in batch[k:j]])
                else:
                    _write_mixed(conn, batch[k:j])
                k = j
        except BaseException:
            if conn.in_transaction:
                try:
                    conn.rollback()
                except sqlite3.Error:  # pragma: no cover - connection unusable
                    self._conn = None
            # What was written already stays (a prefix, in order): drop it from the retry.
            del batch[:k]
            raise


#: The lease of a run id minted just now (``claim_new``: no row of it can exist) and the
#: release of a run's leases: statements of their own (compared by identity).
CLAIM_NEW = "INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?, ?, ?, ?) -- a new run"
RELEASE = "DELETE FROM leases WHERE holder=?"


#: A run's final state (``RunStore.run_finished``, a stream batch's run): compared by identity.
FINISH_RUN = "UPDATE runs SET status=?, finished=?, error=? WHERE run_id=?"
#: The runs row's INSERT of each column list (``RunStore.run_started``): the statement (one
#: object per column list) -> the positions of ``status``, ``finished`` and ``error``.
RUN_INSERTS: dict[str, tuple[int, int, int]] = {}


def run_insert(columns: tuple[str, ...]) -> str:
    """The INSERT of a runs row with ``columns`` (``run_id`` first), one object per list."""
    sql = _RUN_SQL.get(columns)
    if sql is None:
        names, marks = ", ".join(columns), ", ".join("?" * len(columns))
        sql = f"INSERT OR REPLACE INTO runs ({names}) VALUES ({marks})"
        if columns[0] == "run_id" and {"status", "finished", "error"} <= set(columns):
            at = columns.index
            RUN_INSERTS[sql] = (at("status"), at("finished"), at("error"))
        _RUN_SQL[columns] = sql
    return sql


_RUN_SQL: dict[tuple[str, ...], str] = {}


def _finished_at_insert(
    items: list[Statement],
) -> tuple[set[int], dict[int, tuple[Any, ...]]] | None:
    """A run's row inserted and then finished in ``items`` (one transaction: a stream
    batch's run): the INSERT takes the final status, finished time and error, and the UPDATE
    is not written (readers see the same row after the commit, one statement fewer). Any
    other statement naming the runs table between them keeps both as they are."""
    inserted: dict[Any, int] | None = None
    skip: set[int] | None = None
    final: dict[int, tuple[Any, ...]] = {}
    for i, (sql, params) in enumerate(items):
        if sql is LOG:
            continue
        if sql in RUN_INSERTS:
            if inserted is None:
                inserted = {}
            inserted[params[0]] = i
        elif sql is FINISH_RUN:
            j = inserted.pop(params[3], None) if inserted else None
            if j is None:
                continue
            status, finished, error = RUN_INSERTS[items[j][0]]
            row = list(final.get(j, items[j][1]))
            row[status], row[finished], row[error] = params[0], params[1], params[2]
            final[j] = tuple(row)
            if skip is None:
                skip = set()
            skip.add(i)
        elif inserted and "runs" in sql:
            inserted = None  # another statement on runs: keep the order as it is
    return None if skip is None else (skip, final)


def _fresh(items: list[Statement]) -> set[int] | None:
    """The positions in ``items`` of a new run's lease and of its release, when both are in
    ``items`` (one transaction): the row would be inserted and deleted before any reader
    could see it (a stream batch's run), so neither is written. A lease that replaced
    another row (``acquire_leases``) is never one of them."""
    claims: dict[Any, int] | None = None
    skip: set[int] | None = None
    for i, (sql, params) in enumerate(items):
        if sql is CLAIM_NEW:
            if claims is None:
                claims = {}
            claims[params[0]] = i
        elif sql is RELEASE and claims:
            j = claims.pop(params[0], None)
            if j is not None:
                if skip is None:
                    skip = set()
                skip.update((i, j))
    return skip


def _write_mixed(conn: sqlite3.Connection, items: list[Statement]) -> None:
    """Statements and log rows in order, in one transaction (log rows between two
    statements as one multi-row INSERT per table); a new run's lease and its release in
    the same transaction are elided (:func:`_fresh`), and so is the UPDATE of a run's
    final state that follows its INSERT (:func:`_finished_at_insert`)."""
    skip = _fresh(items)
    final: dict[int, tuple[Any, ...]] | None = None
    folded = _finished_at_insert(items)
    if folded is not None:
        skip = folded[0] if skip is None else skip | folded[0]
        final = folded[1]
    # No statement here writes (or reads) the log's tables: the log rows all go in after
    # the statements, as one multi-row INSERT per table (the tables end up the same; a
    # stream's batches committed together were a few INSERTs each, split by their runs
    # and checkpoint rows).
    together = not any(sql is not LOG and ("tasks" in sql or "events" in sql) for sql, _ in items)
    plan = merged(items, skip, final, RUN_INSERTS) if together else None
    conn.execute("BEGIN IMMEDIATE")
    if plan is not None:  # stream batches' runs rows and checkpoints merged (_merge)
        for sql, params in plan:
            conn.execute(sql, params)
        logs = [params for sql, params in items if sql is LOG]
        if logs:
            _insert_rows(conn, logs)
        conn.execute("COMMIT")
        return
    rows: list[tuple[Any, ...]] = []
    for i, (sql, params) in enumerate(items):
        if sql is LOG:
            rows.append(params)
            continue
        if skip is not None and i in skip:
            continue
        if final is not None and i in final:
            params = final[i]
        if rows and not together:
            _insert_rows(conn, rows)
            rows = []
        conn.execute(sql, params)
    if rows:
        _insert_rows(conn, rows)
    conn.execute("COMMIT")


_CALL = GroupCommitter.CALL  # a pending item that runs a function on the writer's connection
_head = itemgetter(0)
_params = itemgetter(1)


#: The statement of a log row: ``add(LOG, row)`` with the LOG_COLUMNS values.
LOG = "LOG"
LOG_COLUMNS = (
    "kind",  # 1: a task's terminal row (tasks table); 2: a state transition (events table)
    "run_id",
    "task",
    "status",
    "attempts",
    "started",
    "finished",
    "error_type",
    "error",
    "traceback",
    "output",
    "output_run",
    "tenant",
    "ts",
)

_MAX_ROWS = 1024  # rows per statement (x 14 columns: under SQLite's limit of 32766 parameters)
#: Up to this many rows go in one statement of exactly their number, whatever their shapes
#: (a few stream batches committed together; the writer's connection caches 512 statements).
_SMALL = 32


def _insert_log(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Insert log rows in one transaction (see :func:`_statements`); a batch that is one
    statement is its own transaction."""
    tasks, events = split_log(rows)
    todo = _statements(_TASKS, tasks) + _statements(_EVENTS, events)
    if len(todo) == 1:
        conn.execute(*todo[0])
        return
    if not todo:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for sql, flat in todo:
            conn.execute(sql, flat)
    except BaseException:
        conn.rollback()
        raise
    conn.execute("COMMIT")


def split_log(
    rows: list[tuple[Any, ...]], *, fold: bool = True
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Log rows (:data:`LOG_COLUMNS`) as the rows of the ``tasks`` table (its 12 columns,
    then ``ran`` and ``ran_attempt``) and of the ``events`` table (``run_id, task, ts,
    event, attempt, error_type, error``), in order.

    With ``fold``, a task's ``running`` event is folded into its terminal row when both are
    in ``rows`` and no other event of the task comes between them: the row then carries the
    event's time and attempt (``ran``, ``ran_attempt``) and no event row is written for it.
    A task row with ``ran`` NULL has no implied event (cached, reused, never started, or its
    ``running`` event is an events row of an earlier commit). Readers put the event back
    (``get_events``), so the event list is the same; one insert per task fewer: the
    ``running`` event's row cost ~8 µs of SQLite CPU per task.
    """
    tasks: list[tuple[Any, ...]] = []
    # Event rows, in order; a ``running`` event that may fold stays its log row (14 values,
    # made an event row at the end only if it did not fold); a folded one becomes None.
    events: list[tuple[Any, ...] | None] = []
    open_: dict[tuple[Any, Any], int] = {}  # (run, task) -> its last event, a 'running' one
    raw = folded = 0  # running events kept as log rows; of them, folded
    for row in rows:
        if row[0] == 1:
            j = open_.pop((row[1], row[2]), None) if open_ else None
            if j is None:
                tasks.append(row[1:13] + _NO_RUN)
            else:
                ev = events[j]
                assert ev is not None
                events[j] = None
                folded += 1
                tasks.append(row[1:13] + (ev[13], ev[4]))  # noqa: RUF005 (faster than *)
            continue
        task = row[2]
        if task is not None and fold:
            if row[3] == "running" and row[7] is None and row[8] is None:
                open_[(row[1], task)] = len(events)
                events.append(row)
                raw += 1
                continue
            if open_:
                open_.pop((row[1], task), None)
        events.append((row[1], task, row[13], row[3], row[4], row[7], row[8]))
    if raw != folded:  # some running events did not fold: made event rows
        return tasks, [_event(e) for e in events if e is not None]
    if folded:
        return tasks, [e for e in events if e is not None]
    return tasks, events  # type: ignore[return-value]  # no None left


_NO_RUN = (None, None)  # a task row's ``ran`` and ``ran_attempt`` when no event folded


def _event(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """An events row: as it is, or made from a log row (14 values)."""
    if len(row) == 7:
        return row
    return (row[1], row[2], row[13], row[3], row[4], row[7], row[8])


#: The ``ORDER BY`` key of a folded ``running`` event read back from its task row: after
#: every event row of the task with the same time (it was the task's last event).
FOLDED_ORDER = (1 << 62) - 1


def _insert_rows(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Log rows inside the caller's transaction."""
    tasks, events = split_log(rows)
    for sql, flat in _statements(_TASKS, tasks) + _statements(_EVENTS, events):
        conn.execute(sql, flat)


class _Table:
    """Multi-row ``INSERT ... VALUES`` statements into one table, by NULL columns and size.

    A ``None`` parameter costs ~0.4 µs to bind in Python's ``sqlite3`` (before 3.12 it goes
    through the adaptation protocol, an ``AttributeError`` raised and cleared per value; an
    ``int`` costs 0.1), so a row's NULL columns are ``NULL`` in the statement's text, not
    parameters: rows with the same NULL columns share a statement. A statement holds a power
    of two rows (a batch of 97 rows is three: 64, 32, 1), so a handful of prepared
    statements per shape serve every batch size with no padding rows to bind. A batch of at
    most ``_SMALL`` rows is one statement of its size, whatever its rows' shapes (NULL in
    the text where every row is NULL).
    """

    def __init__(self, insert: str, columns: tuple[str, ...]) -> None:
        self.head = f"{insert} ({', '.join(columns)}) VALUES "
        self.nones = (None,) * len(columns)
        #: (NULL columns, rows) -> the statement; the NULL columns' complement.
        self.sql: dict[tuple[tuple[bool, ...], int], str] = {}
        self.keep: dict[tuple[bool, ...], tuple[bool, ...]] = {}

    def keep_of(self, nulls: tuple[bool, ...]) -> tuple[bool, ...]:
        """The columns that are parameters (for :func:`itertools.compress`)."""
        keep = self.keep.get(nulls)
        if keep is None:
            if len(self.keep) >= 64:
                self.keep.clear()
            keep = self.keep[nulls] = tuple([not null for null in nulls])
        return keep

    def parts(
        self, out: list[tuple[str, list[Any]]], nulls: tuple[bool, ...], n: int, flat: list[Any]
    ) -> None:
        """Append ``n`` rows with the NULL columns ``nulls`` (``flat``: their parameters) to
        ``out`` as power-of-two statements."""
        width = len(flat) // n
        i = 0
        while n:
            size = min(1 << (n.bit_length() - 1), _MAX_ROWS)
            part = flat if size == n and not i else flat[i : i + size * width]
            out.append((self.statement(nulls, size), part))
            i += size * width
            n -= size

    def statement(self, nulls: tuple[bool, ...], size: int) -> str:
        sql = self.sql.get((nulls, size))
        if sql is None:
            if len(self.sql) >= 512:  # many row shapes (not the usual two or three)
                self.sql.clear()
            one = "(" + ", ".join(["NULL" if null else "?" for null in nulls]) + ")"
            sql = self.sql[(nulls, size)] = self.head + ", ".join([one] * size)
        return sql


_TASKS = _Table(
    "INSERT OR REPLACE INTO tasks",
    ("run_id", "task", "status", "attempts", "started", "finished", "error_type", "error",
     "traceback", "output", "output_run", "tenant", "ran", "ran_attempt"),
)  # fmt: skip
_EVENTS = _Table(
    "INSERT INTO events", ("run_id", "task", "ts", "event", "attempt", "error_type", "error")
)


def _statements(table: _Table, rows: list[tuple[Any, ...]]) -> list[tuple[str, list[Any]]]:
    """``rows`` as (statement, parameters) to run in order: each run of consecutive rows with
    the same NULL columns in power-of-two statements of at most :data:`_MAX_ROWS` rows."""
    out: list[tuple[str, list[Any]]] = []
    n = len(rows)
    if not n:
        return out
    nones = table.nones
    shape = tuple(map(is_, nones, rows[0]))
    flat = list(chain.from_iterable(map(compress, rows, repeat(table.keep_of(shape), n))))
    if None not in flat and sum(map(tuple.count, rows, repeat(None, n))) == shape.count(True) * n:
        # No row has None where the first row has a value, and each has as many None as
        # it: every row has the first row's NULL columns (the usual batch: one shape).
        if n <= _SMALL:
            out.append((table.statement(shape, n), flat))
        else:
            table.parts(out, shape, n, flat)
        return out
    if n <= _SMALL:
        # A few rows of several shapes (a stream batch's run: its input's row, then its
        # tasks'): one statement, NULL in its text where every row is NULL, the other
        # NULLs bound (0.4 µs each; a statement more cost ~20 µs of the writer's CPU).
        common = tuple(map(all, zip(*[map(is_, nones, row) for row in rows])))
        keep = repeat(table.keep_of(common), n)
        out.append(
            (table.statement(common, n), list(chain.from_iterable(map(compress, rows, keep))))
        )
        return out
    start = 0
    for k in range(1, n + 1):
        if k < n:
            nulls = tuple(map(is_, nones, rows[k]))
            if nulls == shape:
                continue
        keep = repeat(table.keep_of(shape), k - start)
        table.parts(
            out, shape, k - start, list(chain.from_iterable(map(compress, rows[start:k], keep)))
        )
        start = k
        if k < n:
            shape = nulls
    return out


class Checkpointer:
    """Keeps the WAL bounded, from a daemon thread, off the commit path.

    Once the WAL file passes ``WAL_CHECKPOINT_BYTES``: a PASSIVE checkpoint copies what it
    can without ever blocking the writer, then a TRUNCATE checkpoint copies the frames
    committed meanwhile and starts the WAL over from size zero. The TRUNCATE runs on the
    writer's connection between two of its commits (:meth:`_truncate`), waits at most
    ``RESTART_WAIT_MS`` for readers (else it is retried at the next tick) and holds the
    next commit only while it copies that short tail and syncs. PASSIVE alone never catches
    up under back-to-back commits: the WAL never restarted, and grew by ~7 MB per
    10,000-task run for as long as the store was open."""

    WAL_CHECKPOINT_BYTES = 8 << 20
    RESTART_WAIT_MS = 50

    def __init__(self, store: Any) -> None:
        self._stop = threading.Event()
        wal = str(store.path) + "-wal"
        self._thread = threading.Thread(
            target=self._loop, args=(store, wal), name="xlib-store-checkpoint", daemon=True
        )
        self._thread.start()

    def _loop(self, store: Any, wal: str) -> None:
        while not self._stop.wait(0.25):
            try:
                if os.stat(wal).st_size >= self.WAL_CHECKPOINT_BYTES:
                    store.checkpoint()
                    store._committer.exclusive(self._truncate)
            except (OSError, sqlite3.Error, StoreError):
                pass  # retried at the next tick; close() truncates the WAL

    def _truncate(self, conn: sqlite3.Connection) -> None:
        """TRUNCATE on the writer's own connection, between two of its commits: from a
        connection of its own, the next commit found the write lock taken and SQLite's
        busy handler slept 1, 2, 5, 10 ms ... before asking again (a stream batch's
        BEGIN waited 9-21 ms, every ~150 batches of 10 records); here the commits queued
        meanwhile wait only for the copy of the short tail."""
        busy = conn.execute("PRAGMA busy_timeout").fetchone()[0]
        conn.execute(f"PRAGMA busy_timeout = {self.RESTART_WAIT_MS}")  # for readers only
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(busy)}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
