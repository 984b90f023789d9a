"""Group commit onto one SQLite connection, with no waiting window.

Callers add statements, then ask for a commit. Whoever commits writes everything pending in
one transaction, runs the callbacks registered with that batch, and goes on while more
arrived meanwhile: only what arrives while a commit is in flight is batched into the next
one. So at low load a record costs one commit, and under load batches form by themselves
(PostgreSQL's group commit with ``commit_delay = 0``). No thread ever sleeps through a window
while a record waits.

Who writes (flat combining, with a writer thread for callers that must not wait):

- :meth:`GroupCommitter.flush` (a caller that waits for the commit anyway: a run driven
  inline, a stream's batch, the end of a run) writes the batch itself when no commit is in
  flight: no thread hand-off, which cost two GIL hand-offs per commit.
- :meth:`GroupCommitter.commit` with a callback (the scheduler's lanes, which go on with other
  ready work meanwhile) wakes the writer thread: a lane waiting in SQLite for the GIL to come
  back would hold up its ready work, and the writer's batches are larger (same-run A/B on the
  10,000-task DAG: lanes committing themselves made 4x more, smaller commits and cost more).

A failed commit drops nothing: the batch goes back to the front of the queue, the batch's
callbacks learn the error, and later commits fail fast with the same error until
:meth:`Committer.flush` (called at the end of a run) retries.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._faults import describe_fault
from .exceptions import StoreError

Then = Callable[[BaseException | None], None]
Statement = tuple[str, tuple[Any, ...]]


class GroupCommitter:
    """Windowless group commit: the queue, the combiner, the writer thread, the failure rules.

    A backend subclasses it and implements :meth:`write` (one batch, in order, raising one
    of :attr:`faults` when it could not be written: what was written stays, the rest is
    retried), :meth:`fault` (the :class:`StoreError` to report) and :meth:`disconnect`.
    Items whose statement is :data:`CALL` carry ``(fn,)``: ``write`` runs ``fn(connection)``
    in order (see :meth:`exclusive`). One combiner writes at a time (the writer thread or
    a flushing caller), so the connection is never used by two threads at once.
    """

    #: The statement of an item that runs a function on the writer's connection.
    CALL = "CALL"
    #: What :meth:`write` raises when storage fails (anything else is a bug and propagates).
    faults: tuple[type[BaseException], ...] = (OSError,)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        # Appended without the lock (deque.append is atomic): the combiner drains it under
        # the lock after taking the callbacks, so a statement queued before its ``then`` was
        # registered is always in the batch that ``then`` waits for.
        self._pending: deque[Statement] = deque()
        self._then: list[Then] = []
        self._busy = False  # a combiner (the writer or a flushing caller) is writing
        self._wake = False  # the writer thread has work to take
        self._writer: threading.Thread | None = None
        self._closing = False
        #: The last failure, until a commit succeeds; commits fail fast meanwhile.
        self.error: StoreError | None = None
        #: Tests only: called before every write with the statements about to be written.
        self.write_hook: Callable[[list[Statement]], None] | None = None

    def add(self, sql: str, params: tuple[Any, ...]) -> None:
        """Queue one statement for the next commit (no lock taken)."""
        self._pending.append((sql, params))

    def commit(self, then: Then | None = None) -> None:
        """Have what is queued committed as soon as no commit is in flight; ``then(error)``
        after.

        Never waits: ``then`` runs on the writer thread, or on the thread whose commit is in
        flight (here, at once, while the store is failing).
        """
        with self._lock:
            err = self.error
            if err is None:
                if then is not None:
                    self._then.append(then)
                if not self._busy:
                    self._busy = self._wake = True
                    if self._writer is None:
                        self._start()
                    else:
                        self._cond.notify()
        if err is not None and then is not None:
            then(err)

    def flush(self) -> None:
        """Block until everything queued so far is committed; raise StoreError if it fails.

        When no commit is in flight, this thread writes the batch itself.
        """
        with self._lock:
            self.error = None  # retry now
            inline = not self._busy
            if inline:
                self._busy = True
            else:
                box: list[BaseException | None] = []
                done = threading.Event()

                def then(err: BaseException | None) -> None:
                    box.append(err)
                    done.set()

                self._then.append(then)
        if inline:
            err = self._combine()
            if err is not None:
                raise err
            return
        done.wait()
        if box[0] is not None:
            raise box[0]

    def _start(self) -> None:
        t = threading.Thread(target=self._loop, name="xlib-store-writer", daemon=True)
        self._writer = t
        t.start()

    def _loop(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._wake:
                    if self._closing:
                        self._writer = None
                        return
                    cond.wait()
                self._wake = False
            try:
                self._combine()
            except BaseException:  # pragma: no cover - a bug: what was taken is requeued
                pass

    def _combine(self) -> StoreError | None:
        """Write batches until nothing is pending (this thread holds ``_busy``); the error of
        the last batch written, if it failed."""
        lock = self._lock
        batch: list[Statement] = []
        then: list[Then] = []
        k = 0  # callbacks of ``then`` already run
        err: StoreError | None = None
        try:
            while True:
                with lock:
                    if not self._then and (not self._pending or self.error is not None):
                        # Nothing to do, or failing: the statements wait for flush().
                        self._busy = False
                        return err
                    then, self._then = self._then, []
                    k = 0
                    if self.error is None:
                        q = self._pending
                        popleft = q.popleft
                        batch = [popleft() for _ in range(len(q))]
                    # else failing: the statements stay for flush() to retry, answer at once.
                err = self.error
                if batch:
                    try:
                        self.write(batch)
                    except self.faults as exc:
                        err = self.fault(exc)
                        err.__cause__ = exc
                        with lock:
                            self._requeue(batch)  # never dropped: retried by flush()
                            self.error = err
                    batch = []
                for fn in then:
                    k += 1
                    try:
                        fn(err)
                    except Exception:  # pragma: no cover - a callback bug must not stop us
                        pass
        except BaseException:
            # Ctrl-C (or a bug) while combining: nothing is lost, the next commit goes on.
            with lock:
                self._requeue(batch)
                self._then[:0] = then[k:]
                self._busy = False
            raise

    def _requeue(self, batch: list[Statement]) -> None:
        """Put ``batch`` back at the front of the queue, in order (under the lock)."""
        self._pending.extendleft(reversed(batch))

    def write(self, batch: list[Statement]) -> None:
        """Write ``batch`` (in order); on failure drop its written prefix and raise."""
        raise NotImplementedError

    def fault(self, exc: BaseException) -> StoreError:
        """The StoreError reported for a failed write."""
        return StoreError(f"run store: a write failed: {exc}")

    def disconnect(self) -> None:
        """Close the writer's connection (the writer thread has stopped)."""

    def exclusive(self, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(connection)`` as the combiner, after everything queued so far."""
        box: list[Any] = []
        done = threading.Event()

        def run(conn: Any) -> None:
            try:
                box.append((True, fn(conn)))
            except BaseException as exc:
                box.append((False, exc))
            done.set()

        self.flush()
        with self._lock:
            self._pending.append((_CALL, (run,)))
        self.flush()
        done.wait()
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def read_if_idle(self, fn: Callable[[Any], Any], default: Any = None) -> Any:
        """``fn(connection)`` on the writer's connection when no commit is in flight, else
        ``default`` at once (never waits).

        A read on a connection of its own pays for every commit in between: SQLite resets a
        connection's page cache when another connection has written. The writer's own
        connection keeps its cache warm (a result-cache hit reads here, right after the
        previous task's commit). Commits asked for while the read holds the connection are
        handed to the writer when it ends.
        """
        with self._lock:
            if self._busy or self.error is not None:
                return default
            self._busy = True
        try:
            return fn(self.connection())
        finally:
            with self._lock:
                if self._then or self._pending:
                    self._wake = True  # keep _busy: the writer takes over what came meanwhile
                    if self._writer is None:
                        self._start()
                    else:
                        self._cond.notify()
                else:
                    self._busy = False

    def connection(self) -> Any:
        """The writer's connection, for :meth:`read_if_idle` (the caller holds ``_busy``)."""
        raise NotImplementedError

    def close(self) -> None:
        """Commit what is queued, stop the writer and close the connection."""
        try:
            self.flush()
        finally:
            with self._lock:
                self._closing = True
                self._cond.notify()
                writer = self._writer
            if writer is not None:
                writer.join(timeout=30)
            self.disconnect()


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
        # Log rows (a task's terminal row, a state transition) go in one multi-row INSERT
        # per table; a batch of log rows alone is one statement (its own transaction).
        # Every SQLite call releases the GIL, and taking it back while the scheduler's lanes
        # run can cost a switch interval (5 ms), so the number of calls per commit bounds the
        # cost. Other statements (a run's row, leases, a stream's checkpoint, cache entries)
        # go in the same transaction as the log rows around them, in order; only a CALL item
        # (a function given the connection) runs between transactions.
        k = 0
        n = len(batch)
        try:
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


def _write_mixed(conn: sqlite3.Connection, items: list[Statement]) -> None:
    """Statements and log rows in order, in one transaction (log rows between two
    statements as one multi-row INSERT per table)."""
    conn.execute("BEGIN IMMEDIATE")
    rows: list[tuple[Any, ...]] = []
    for sql, params in items:
        if sql is LOG:
            rows.append(params)
            continue
        if rows:
            _insert_rows(conn, rows)
            rows = []
        conn.execute(sql, params)
    if rows:
        _insert_rows(conn, rows)
    conn.execute("COMMIT")


_CALL = GroupCommitter.CALL  # a pending item that runs a function on the writer's connection


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
_NULL_ROW = (None,) * len(LOG_COLUMNS)

_MAX_ROWS = 1024  # x 14 columns: under SQLite's default limit of 32766 parameters


def _insert_log(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Insert log rows in one transaction: a multi-row INSERT into ``tasks`` and one into
    ``events`` (at most 1024 rows each), padded to a power of two rows so that a handful of
    prepared statements serve every batch size. Direct inserts, not through a view with an
    INSTEAD OF trigger: SQLite runs a trigger program per row (8 % of the store's cost per
    task on the 10,000-task DAG, same-run A/B)."""
    tasks, events = split_log(rows)
    if not tasks and not events:
        return
    if (not tasks or not events) and len(tasks) <= _MAX_ROWS and len(events) <= _MAX_ROWS:
        # One table, one statement: its own transaction.
        if tasks:
            _insert(conn, _TASKS, tasks)
        else:
            _insert(conn, _EVENTS, events)
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        _insert_split(conn, tasks, events)
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
    events: list[tuple[Any, ...] | None] = []
    open_: dict[tuple[Any, Any], int] = {}  # (run, task) -> its last event, a 'running' one
    folded = False
    for row in rows:
        if row[0] == 1:
            j = open_.pop((row[1], row[2]), None) if open_ else None
            if j is None:
                tasks.append((*row[1:13], None, None))
            else:
                ev = events[j]
                assert ev is not None
                events[j] = None
                folded = True
                tasks.append((*row[1:13], ev[2], ev[4]))
            continue
        task = row[2]
        if task is not None and fold:
            if row[3] == "running" and row[7] is None and row[8] is None:
                open_[(row[1], task)] = len(events)
            elif open_:
                open_.pop((row[1], task), None)
        events.append((row[1], task, row[13], row[3], row[4], row[7], row[8]))
    if folded:
        return tasks, [e for e in events if e is not None]
    return tasks, events  # type: ignore[return-value]  # no None left


#: The ``ORDER BY`` key of a folded ``running`` event read back from its task row: after
#: every event row of the task with the same time (it was the task's last event).
FOLDED_ORDER = (1 << 62) - 1


def _insert_rows(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Log rows inside the caller's transaction."""
    _insert_split(conn, *split_log(rows))


def _insert_split(
    conn: sqlite3.Connection, tasks: list[tuple[Any, ...]], events: list[tuple[Any, ...]]
) -> None:
    for k in range(0, len(tasks), _MAX_ROWS):
        _insert(conn, _TASKS, tasks[k : k + _MAX_ROWS])
    for k in range(0, len(events), _MAX_ROWS):
        _insert(conn, _EVENTS, events[k : k + _MAX_ROWS])


class _Table:
    """A multi-row ``INSERT ... SELECT`` over ``VALUES`` that skips all-NULL padding rows."""

    def __init__(self, insert: str, columns: tuple[str, ...]) -> None:
        self.width = len(columns)
        self.head = f"{insert} ({', '.join(columns)}) SELECT * FROM (VALUES "
        self.one = "(" + ", ".join("?" * self.width) + ")"
        self.tail = ") WHERE column1 IS NOT NULL"
        self.sql: dict[int, str] = {}


_TASKS = _Table(
    "INSERT OR REPLACE INTO tasks",
    ("run_id", "task", "status", "attempts", "started", "finished", "error_type", "error",
     "traceback", "output", "output_run", "tenant", "ran", "ran_attempt"),
)  # fmt: skip
_EVENTS = _Table(
    "INSERT INTO events", ("run_id", "task", "ts", "event", "attempt", "error_type", "error")
)


def _insert(conn: sqlite3.Connection, table: _Table, rows: list[tuple[Any, ...]]) -> None:
    size = 1
    while size < len(rows):
        size <<= 1
    sql = table.sql.get(size)
    if sql is None:
        sql = table.sql[size] = table.head + ", ".join([table.one] * size) + table.tail
    flat = [v for row in rows for v in row]
    if size > len(rows):
        flat.extend((None,) * (table.width * (size - len(rows))))  # run_id NULL: skipped
    conn.execute(sql, flat)


class Checkpointer:
    """Checkpoints the WAL from a daemon thread once it passes ``WAL_CHECKPOINT_BYTES``."""

    WAL_CHECKPOINT_BYTES = 8 << 20

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
            except (OSError, StoreError):
                pass  # retried at the next tick; close() truncates the WAL

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
