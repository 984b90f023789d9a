"""Run leases: one run, one executor at a time.

A running run holds a lease row in the store: the owner's pid, host, the process's start
time (so a reused pid is not mistaken for the owner) and a heartbeat. A lease is *live*
while its owner process exists (same host: the pid with the same start time) or, seen from
another host, while its heartbeat is recent. A second run or resume of a leased run id is
refused while the lease is live; a stale lease is taken over, and the takeover is recorded.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import attrs

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
            f"pid {self.pid} on host {self.host!r} (run {self.holder}), "
            f"heartbeat {ago:.0f} s ago"
        )


def me(holder: str) -> Lease:
    """A lease for this process, held by run ``holder``."""
    now = time.time()
    pid = os.getpid()
    return Lease(
        run_id="",
        holder=holder,
        pid=pid,
        host=socket.gethostname(),
        proc_start=proc_start(pid),
        acquired=now,
        heartbeat=now,
    )


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
