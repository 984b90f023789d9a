"""Run leases: one run, one executor at a time.

A running run holds a lease row in the store: the owner's pid, host, the process's start
time (so a reused pid is not mistaken for the owner) and a heartbeat. A lease is *live*
while its owner process exists (same host: the pid with the same start time) or, seen from
another host, while its heartbeat is recent. A second run or resume of a leased run id is
refused while the lease is live; a stale lease is taken over, and the takeover is recorded.
"""

from __future__ import annotations

import functools
import os
import socket
import sqlite3
import threading
import time
from typing import Any

import attrs

from ._commit import CLAIM_NEW, RELEASE, Committer
from ._faults import describe_fault
from .exceptions import RunLeasedError as RunLeasedError

#: Seconds between heartbeats, and after which a lease of another host counts as stale.
HEARTBEAT_S = 10.0
STALE_S = 60.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    run_id TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    proc_start TEXT,
    acquired REAL NOT NULL,
    heartbeat REAL NOT NULL
);
"""


def proc_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot), ``None`` when unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    # Field 22; the command name (field 2) may hold spaces, so split after its ')'.
    rest = data[data.rfind(b")") + 2 :].split()
    return rest[19].decode() if len(rest) > 19 else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@attrs.frozen(kw_only=True)
class Lease:
    """A lease row."""

    run_id: str
    holder: str
    pid: int
    host: str
    proc_start: str | None
    acquired: float
    heartbeat: float

    def live(self, now: float | None = None) -> bool:
        """Whether the owner still runs (pid and start time here, heartbeat elsewhere)."""
        if self.host == socket.gethostname():
            if not _pid_alive(self.pid):
                return False
            if self.proc_start is not None:
                current = proc_start(self.pid)
                if current is not None:
                    return current == self.proc_start
            return True
        return (now or time.time()) - self.heartbeat < STALE_S

    def describe(self) -> str:
        """``pid 123 on host h (run R), heartbeat 3 s ago``."""
        ago = max(0.0, time.time() - self.heartbeat)
        return (
            f"pid {self.pid} on host {self.host!r} (run {self.holder}), heartbeat {ago:.0f} s ago"
        )


def me(holder: str) -> Lease:
    """A lease for this process, held by run ``holder``."""
    now = time.time()
    pid = os.getpid()
    host, start = _identity(pid)
    return Lease(
        run_id="",
        holder=holder,
        pid=pid,
        host=host,
        proc_start=start,
        acquired=now,
        heartbeat=now,
    )


@functools.cache
def _identity(pid: int) -> tuple[str, str | None]:
    """Host name and start time of process ``pid``, read once per process (a stream claims
    a lease per batch; a forked child has another pid, so it reads its own)."""
    return socket.gethostname(), proc_start(pid)


def from_row(row: Any) -> Lease:
    """A Lease from a ``SELECT *`` row of the leases table."""
    return Lease(
        run_id=row[0],
        holder=row[1],
        pid=row[2],
        host=row[3],
        proc_start=row[4],
        acquired=row[5],
        heartbeat=row[6],
    )


class LeaseMixin:
    """The lease methods of :class:`~._store.RunStore`."""

    path: Any
    busy_timeout_ms: int
    _committer: Committer

    def submit(self, sql: str, params: tuple[Any, ...]) -> None:  # pragma: no cover
        raise NotImplementedError

    def _reading(self) -> Any:  # pragma: no cover
        raise NotImplementedError

    def acquire_leases(self, holder: str, run_ids: list[str]) -> list[Lease]:
        """Lease ``run_ids`` for run ``holder`` of this process, atomically.

        Raises :class:`RunLeasedError` when one is held by a live owner; returns the stale
        leases that were taken over (recorded as ``lease.taken_over`` events).
        """
        mine = me(holder)

        def take(conn: sqlite3.Connection) -> list[Lease]:
            conn.execute("BEGIN IMMEDIATE")
            try:
                marks = ", ".join("?" for _ in run_ids)
                rows = conn.execute(
                    f"SELECT * FROM leases WHERE run_id IN ({marks})", run_ids
                ).fetchall()
                stale: list[Lease] = []
                for row in rows:
                    other = from_row(row)
                    if other.holder != holder and other.live():
                        raise RunLeasedError(
                            f"run {other.run_id} is being executed right now by "
                            f"{other.describe()}; wait for it to end (or stop it) before "
                            "running or resuming it again",
                            path=str(self.path),
                        )
                    stale.append(other)
                now = time.time()
                for rid in run_ids:
                    conn.execute(
                        "INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (rid, holder, mine.pid, mine.host, mine.proc_start, now, now),
                    )
                for old in stale:
                    conn.execute(
                        "INSERT INTO events (run_id, task, ts, event, error) VALUES (?, NULL, ?, "
                        "'lease.taken_over', ?)",
                        (old.run_id, now, f"stale lease of {old.describe()} taken by {holder}"),
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return stale

        try:
            taken: list[Lease] = self._committer.exclusive(take)
        except sqlite3.Error as exc:
            raise describe_fault(self.path, exc, self.busy_timeout_ms) from exc
        return taken

    def claim_new(self, holder: str) -> None:
        """Queue the lease of a run id that was just minted (no other process can know it,
        so there is nothing to check): committed with the run's first rows, no round trip."""
        mine = me(holder)
        self._committer.add(
            CLAIM_NEW,
            (holder, holder, mine.pid, mine.host, mine.proc_start, mine.acquired, mine.acquired),
        )

    def heartbeat(self, holder: str) -> None:
        """Refresh the heartbeat of every lease held by run ``holder``."""
        self.submit("UPDATE leases SET heartbeat=? WHERE holder=?", (time.time(), holder))

    def keep_alive(self, holder: str) -> None:
        """Refresh ``holder``'s leases every HEARTBEAT_S seconds until :meth:`let_go`.

        One daemon thread per store beats for every run it holds (a run costs a set
        insertion, not a thread of its own).
        """
        beats = self.__dict__.get("_beats")
        if beats is None:
            beats = self.__dict__.setdefault("_beats", _Heartbeats(self))
        beats.add(holder)

    def let_go(self, holder: str) -> None:
        """Stop refreshing ``holder``'s leases (their release is queued separately)."""
        beats = self.__dict__.get("_beats")
        if beats is not None:
            beats.discard(holder)

    def stop_heartbeats(self, timeout: float = 5.0) -> None:
        """Closing: end the heartbeat thread and join it (bounded); nothing beats after."""
        beats = self.__dict__.get("_beats")
        if beats is not None:
            beats.stop(timeout)

    def release_leases(self, holder: str) -> None:
        """Queue the release of every lease held by run ``holder`` (committed with the rest)."""
        self.let_go(holder)
        self._committer.add(RELEASE, (holder,))

    def lease(self, run_id: str) -> Lease | None:
        """The lease on ``run_id``, if any."""
        with self._reading() as c:
            row = c.execute("SELECT * FROM leases WHERE run_id=?", (run_id,)).fetchone()
        return None if row is None else from_row(row)


class _Heartbeats:
    """The heartbeat thread of one store: refreshes the leases of every run it holds.

    It waits on a condition, not in a sleep, so the store's close wakes it and joins it: it
    never beats into a closed store nor outlives it. While the store is open it ends at the
    first wake-up that finds no run holding a lease (the next run starts it again); it is
    not woken when the last run lets go, so back-to-back runs share one thread instead of
    starting one each.
    """

    def __init__(self, store: LeaseMixin) -> None:
        self._store = store
        self._holders: set[str] = set()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._running = False
        self._closed = False

    def add(self, holder: str) -> None:
        with self._lock:
            if self._closed:
                return  # the store is closed: nothing may beat into it
            self._holders.add(holder)
            if not self._running:
                self._running = True
                self._thread = threading.Thread(target=self._loop, name="xlib-lease", daemon=True)
                self._thread.start()

    def discard(self, holder: str) -> None:
        with self._lock:
            self._holders.discard(holder)

    def stop(self, timeout: float) -> None:
        """End the thread (a beat in flight finishes first) and wait up to ``timeout`` s."""
        with self._lock:
            self._closed = True
            self._holders.clear()
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _is_closed(self) -> bool:
        return self._closed

    def _loop(self) -> None:
        cond = self._cond
        with cond:
            while not cond.wait_for(self._is_closed, HEARTBEAT_S) and self._holders:
                holders = sorted(self._holders)
                cond.release()  # the store's submit never waits (it queues and commits)
                try:
                    marks = ", ".join("?" for _ in holders)
                    self._store.submit(
                        f"UPDATE leases SET heartbeat=? WHERE holder IN ({marks})",
                        (time.time(), *holders),
                    )
                except Exception:  # pragma: no cover - a store fault is reported by the run
                    pass
                finally:
                    cond.acquire()
            self._running = False
