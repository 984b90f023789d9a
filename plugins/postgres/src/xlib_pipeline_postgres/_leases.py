"""The PostgreSQL store's leases: rows like SQLite's, taken under a transaction-level
advisory lock per run id (two drivers on two hosts never both run one run), kept alive by
one heartbeat thread per store."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg

from xlib_pipeline.store import HEARTBEAT_S, Lease, RunLeasedError, me

from ._reads import StoreReads


class StoreLeases(StoreReads):
    """Leases of :class:`~._store.PostgresStore` (a mixin over its reads: the store provides
    the writer and the heartbeat state)."""

    _beat_lock: threading.Lock
    _holders: set[str]
    _beat_thread: threading.Thread | None
    _closed: threading.Event
    #: Queue a statement on the writer (the store binds its committer's ``add``).
    add: Callable[[str, tuple[Any, ...]], None]

    if TYPE_CHECKING:  # pragma: no cover

        def submit(self, sql: str, params: tuple[Any, ...]) -> None: ...

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
            if self._closed.is_set():
                return  # the store is closed: nothing may beat into it
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

    def stop_heartbeats(self, timeout: float = 5.0) -> None:
        """Closing: wake the heartbeat thread and join it (bounded). A beat in flight ends
        first; none starts after (the thread checks ``_closed`` under the lock)."""
        with self._beat_lock:
            self._closed.set()
            self._holders.clear()
            thread = self._beat_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _beat(self) -> None:
        # Ends at the first wake-up that finds no run holding a lease (the next run starts
        # it again), or at once when the store closes.
        while not self._closed.wait(HEARTBEAT_S):
            with self._beat_lock:
                holders = sorted(self._holders)
                if not holders or self._closed.is_set():
                    self._beat_thread = None
                    return
            try:
                self.submit(
                    "UPDATE leases SET heartbeat = %s WHERE holder = ANY(%s)",
                    (time.time(), holders),
                )
            except Exception:  # a store fault is reported by the run itself
                pass
        with self._beat_lock:
            self._beat_thread = None

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
