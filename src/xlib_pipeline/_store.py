"""The run store: one SQLite file (WAL mode), nothing to start.

It records each run (id, pipeline, structure fingerprint, parameters, status, times), every
task state transition and failed attempt, and each finished task's output (pickled, then
passed through the ``encrypt`` hook; read back through ``decrypt``).

Writes go through one writer thread that commits in small batches (``batch_ms``,
``batch_size``) and always at the end of a run. Each batch is one transaction, written in
the order tasks finished, so after a crash at any instant the file opens cleanly and every
task recorded as finished has its output and all its upstreams recorded too. In WAL mode
with ``synchronous=NORMAL`` a committed batch survives the process being killed; a power
failure may lose the last batches (use ``synchronous: "full"`` to make every commit durable).
"""

from __future__ import annotations

import json
import os
import pickle
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs

from ._records import PayloadRef
from .exceptions import StoreError

APPLICATION_ID = 0x584C5053  # "XLPS"
SCHEMA_VERSION = 1

_SCHEMA = """
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
"""


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
    allowed = {"path", "batch_ms", "batch_size", "synchronous", "record_outputs"}
    unknown = set(value) - allowed
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)}; expected some of {sorted(allowed)}")
    if "path" not in value:
        from ._config import data_dir

        value = {**value, "path": str(data_dir() / DEFAULT_STORE_FILE)}
    if not isinstance(value["path"], str | Path):
        raise ValueError(f"'path' must be a file path, got {value['path']!r}")
    sync = value.get("synchronous", "normal")
    if sync not in ("normal", "full"):
        raise ValueError(f"'synchronous' must be 'normal' or 'full', got {sync!r}")
    from ._config import boolean, number

    batch_ms = number(minimum=0, maximum=60_000, what="'batch_ms'")(value.get("batch_ms", 50))
    batch_size = number(minimum=1, maximum=1_000_000, integer=True, what="'batch_size'")(
        value.get("batch_size", 500)
    )
    try:
        record = boolean(value.get("record_outputs", True))
    except ValueError as exc:
        raise ValueError(f"'record_outputs': {exc}") from None
    return {
        "path": str(value["path"]),
        "batch_ms": batch_ms,
        "batch_size": batch_size,
        "synchronous": sync,
        "record_outputs": record,
    }


def _connect(path: Path, *, create: bool, synchronous: str = "normal") -> sqlite3.Connection:
    """Open ``path`` as an xlib-pipeline store; refuse foreign or corrupt files by name."""
    exists = path.exists()
    if not exists and not create:
        raise StoreError(f"run store {str(path)!r} does not exist", path=str(path))
    if exists and path.is_dir():
        raise StoreError(f"run store {str(path)!r} is a directory, expected a file", path=str(path))
    if not exists:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"run store {str(path)!r}: cannot create its folder: {exc.strerror or exc}",
                path=str(path),
            ) from exc
    try:
        conn = sqlite3.connect(str(path), timeout=30, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 30000")
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
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
        if app_id == 0:
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"run store {str(path)!r} has schema version {version}, newer than this "
                f"xlib-pipeline understands ({SCHEMA_VERSION})",
                path=str(path),
            )
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        conn.executescript(_SCHEMA)
        conn.commit()
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StoreError(
            _access_problem(path)
            or f"run store {str(path)!r} is damaged ({exc}); it was left untouched",
            path=str(path),
        ) from exc
    return conn


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


_FLUSH = object()
_STOP = object()


class RunStore:
    """A handle on one store file. Thread-safe; writes are batched by a writer thread."""

    def __init__(
        self,
        path: str | Path,
        *,
        batch_ms: float = 50,
        batch_size: int = 500,
        synchronous: str = "normal",
        create: bool = True,
    ) -> None:
        from ._config import number

        batch_ms = number(minimum=0, maximum=60_000, what="batch_ms")(batch_ms)
        batch_size = number(minimum=1, maximum=1_000_000, integer=True, what="batch_size")(
            batch_size
        )
        self.path = Path(path)
        self.batch_s = batch_ms / 1000.0
        self.batch_size = batch_size
        self._sync = synchronous
        self._conn = _connect(self.path, create=create, synchronous=synchronous)
        self._read_lock = threading.Lock()
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()
        self._wake = threading.Event()
        self._queued = 0
        self._error: BaseException | None = None

    # -- writing --------------------------------------------------------------------------

    def _ensure_writer(self) -> None:
        if self._writer is None:
            with self._writer_lock:
                if self._writer is None:
                    conn = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False)
                    conn.execute("PRAGMA busy_timeout = 30000")
                    conn.execute(f"PRAGMA synchronous = {self._sync.upper()}")
                    t = threading.Thread(
                        target=self._write_loop, args=(conn,), name="xlib-store", daemon=True
                    )
                    t.start()
                    self._writer = t

    def submit(self, sql: str, params: tuple[Any, ...]) -> None:
        """Queue one statement for the next batch."""
        if self._writer is None:
            self._ensure_writer()
        self._q.put((sql, params))
        self._queued += 1  # approximate (no lock): only decides an early wake-up
        if self._queued >= self.batch_size:
            self._queued = 0
            self._wake.set()

    def flush(self) -> None:
        """Block until everything queued so far is committed."""
        if self._writer is None:
            return
        done = threading.Event()
        self._q.put((_FLUSH, done))
        self._wake.set()
        done.wait()
        if self._error is not None:
            err, self._error = self._error, None
            raise StoreError(
                f"run store {str(self.path)!r}: a write failed: {err}", path=str(self.path)
            ) from err

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        q = self._q
        wake = self._wake
        while True:
            first = q.get()
            # Sleep through the batch window instead of waking for every record: each
            # wake-up would take the GIL from the scheduler's lanes. flush() and close()
            # set ``wake`` to cut the window short.
            if first is not _STOP and first[0] is not _FLUSH:
                wake.wait(self.batch_s)
            wake.clear()
            batch: list[tuple[str, tuple[Any, ...]]] = []
            waiters: list[threading.Event] = []
            stop = False
            item = first
            while True:
                if item is _STOP:
                    stop = True
                elif item[0] is _FLUSH:
                    waiters.append(item[1])
                else:
                    batch.append(item)
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    break
            if batch:
                # One transaction per batch; rows grouped per statement (executemany is
                # several times cheaper than execute per row). Within a statement the order
                # is kept, and the batch commits atomically, so grouping changes nothing
                # a reader can observe.
                groups: dict[str, list[tuple[Any, ...]]] = {}
                for sql, params in batch:
                    rows = groups.get(sql)
                    if rows is None:
                        groups[sql] = [params]
                    else:
                        rows.append(params)
                try:
                    with conn:
                        for sql, rows in groups.items():
                            conn.executemany(sql, rows)
                except Exception as exc:  # keep going; report at the next flush
                    self._error = exc
            for w in waiters:
                w.set()
            if stop:
                conn.close()
                return

    def close(self) -> None:
        """Commit what is queued and close the file."""
        if self._writer is not None:
            self.flush()
            self._q.put(_STOP)
            self._wake.set()
            self._writer.join()
            self._writer = None
        with self._read_lock:
            self._conn.close()

    # -- recording (called by the scheduler's store observer) -----------------------------

    def run_started(self, row: Mapping[str, Any]) -> None:
        """Record a new run (``row`` has the runs table's columns)."""
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        self.submit(f"INSERT OR REPLACE INTO runs ({cols}) VALUES ({marks})", tuple(row.values()))

    def event(
        self,
        run_id: str,
        task: str | None,
        event: str,
        *,
        attempt: int | None = None,
        error_type: str | None = None,
        error: str | None = None,
        ts: float | None = None,
    ) -> None:
        """Record one state transition."""
        self.submit(
            "INSERT INTO events (run_id, task, ts, event, attempt, error_type, error) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (run_id, task, ts or time.time(), event, attempt, error_type, error),
        )

    def task_finished(self, row: tuple[Any, ...]) -> None:
        """Record a task's terminal state; ``row`` follows the tasks table's columns."""
        self.submit(
            "INSERT OR REPLACE INTO tasks (run_id, task, status, attempts, started, finished, "
            "error_type, error, traceback, output, output_run, tenant) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            row,
        )

    def run_finished(self, run_id: str, status: str, finished: float, error: str | None) -> None:
        """Record how a run ended and commit everything."""
        self.submit(
            "UPDATE runs SET status=?, finished=?, error=? WHERE run_id=?",
            (status, finished, error, run_id),
        )
        self.event(run_id, None, "run." + status, ts=finished)
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
        return RunRecord(
            run_id=r[0],
            pipeline=r[1],
            fingerprint=r[2],
            structure=json.loads(r[3]),
            status=r[4],
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
            args.append(status)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started DESC LIMIT ?"
        args.append(limit)
        with self._reading() as c:
            ids = [r[0] for r in c.execute(sql, args).fetchall()]
        return [self.get_run(i) for i in ids]

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
        the tasks table (written once, in the same batch order), merged in here by time.
        """
        with self._reading() as c:
            return c.execute(
                "SELECT task, ts, event, attempt, error_type, error FROM ("
                " SELECT task, ts, event, attempt, error_type, error, 0 AS k, id AS o "
                "  FROM events WHERE run_id = ? AND task IS NOT NULL"
                " UNION ALL SELECT task, COALESCE(finished, started, 0), status, attempts,"
                "  error_type, error, 1, 0 FROM tasks WHERE run_id = ?"
                " UNION ALL SELECT task, ts, event, attempt, error_type, error, 2, id "
                "  FROM events WHERE run_id = ? AND task IS NULL"
                ") ORDER BY k = 2, ts, k, o",
                (run_id, run_id, run_id),
            ).fetchall()

    def iter_outputs(self) -> Iterator[tuple[str, str, str | None, bytes]]:
        """(run_id, task, tenant, blob) of every stored output (for key rotation)."""
        with self._reading() as c:
            rows = c.execute(
                "SELECT COALESCE(output_run, run_id), task, tenant, output FROM tasks "
                "WHERE output IS NOT NULL AND (output_run IS NULL OR output_run = run_id)"
            ).fetchall()
        yield from rows

    def replace_output(self, run_id: str, task: str, blob: bytes) -> None:
        """Overwrite the stored output of ``run_id``/``task`` (and rows that reuse it)."""
        with self._read_lock, self._conn:
            self._conn.execute(
                "UPDATE tasks SET output=? WHERE task=? AND (run_id=? AND output_run IS NULL "
                "OR output_run=?)",
                (blob, task, run_id, run_id),
            )


# --- serialization of outputs ----------------------------------------------------------------


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
