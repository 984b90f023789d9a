"""Memory limits over a task's whole process tree (a worker and everything it spawns).

``RLIMIT_AS``, set in each worker, is per process: a task that starts six children of
150 MB each stays under a 200 MB limit in every one of them. The :class:`TreeWatchdog`
closes that gap: while a limited task runs, it sums the resident memory (RSS) of the
worker and all its descendants every ``interval`` seconds and, past the limit, kills the
whole tree; the executor then reports :class:`~xlib_pipeline.ResourceLimitExceeded`.

RSS counts pages shared between processes once per process, so the sum errs on the side
of the limit. A process that leaves the tree (double fork and ``setsid``) escapes it; a
cgroup v2 ``memory.max`` (see docs/security.md) is the kernel's way to close that too.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import attrs


@attrs.define(eq=False)
class Watch:
    """One watched task: its worker's PID, the RSS it may reach, what was seen."""

    pid: int
    allowed: int
    limit: int
    baseline: int
    #: The tree's RSS when the watchdog killed it (``None``: not killed).
    killed_at: int | None = None
    peak: int = 0


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_PROC_CHILDREN = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` from ``/proc/PID/task/*/children`` (Linux 3.5+)."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue
    return out


def tree(pid: int) -> list[int]:
    """PIDs of ``pid`` and its descendants, root first.

    On Linux this reads ``/proc/PID/task/*/children`` along the tree only (a few small
    files); elsewhere psutil walks every process of the machine, which costs milliseconds.
    """
    if _PROC_CHILDREN:
        pids, i = [pid], 0
        while i < len(pids) and len(pids) < 4096:
            pids.extend(_children(pids[i]))
            i += 1
        return pids
    import psutil

    try:
        root = psutil.Process(pid)
        return [pid, *(c.pid for c in root.children(recursive=True))]
    except psutil.Error:
        return []


def rss(pid: int) -> int:
    """Resident memory of one process in bytes (0 when it is gone)."""
    if _PROC_CHILDREN:
        try:
            with open(f"/proc/{pid}/statm") as f:
                return int(f.read().split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            return 0
    import psutil

    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0


def tree_rss(pids: list[int]) -> int:
    """The summed RSS of ``pids`` in bytes (processes that exited count zero)."""
    return sum(rss(p) for p in pids)


def kill_tree(pids: list[int]) -> None:
    """SIGKILL the root's process group, then every process of the tree, children first."""
    if not pids:
        return
    try:
        os.killpg(pids[0], signal.SIGKILL)
    except OSError:
        pass
    for p in reversed(pids):
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass


class TreeWatchdog:
    """One daemon thread polling the process trees of running memory-limited tasks.

    Per task it costs one RSS read of the worker (the baseline); trees are walked only by
    the watchdog thread, every ``interval``, so a task shorter than that is never walked.
    On Linux a walk reads ``/proc`` along the tree only (tens of microseconds).
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self._watches: dict[int, Watch] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None

    @staticmethod
    def available() -> bool:
        """Whether process trees can be walked: ``/proc`` children lists, or psutil
        (without either, only the per-process limit applies)."""
        if _PROC_CHILDREN:
            return True
        try:
            import psutil  # noqa: F401
        except ImportError:  # pragma: no cover - psutil is a dependency
            return False
        return True

    def watch(self, pid: int, limit: int) -> Watch:
        """Start watching worker ``pid``: its tree may grow ``limit`` bytes past the worker's
        size now (an idle worker has no children)."""
        baseline = rss(pid)
        w = Watch(pid=pid, allowed=baseline + limit, limit=limit, baseline=baseline)
        with self._lock:
            self._watches[id(w)] = w
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="xlib-memory-watchdog", daemon=True
                )
                self._thread.start()
            self._wake.notify()
        return w

    def unwatch(self, w: Watch) -> None:
        """Stop watching (the task answered, failed or its worker died)."""
        with self._lock:
            self._watches.pop(id(w), None)

    def check(self, w: Watch) -> None:
        """Measure ``w``'s tree once; kill it when past its limit."""
        procs = tree(w.pid)
        rss = tree_rss(procs)
        w.peak = max(w.peak, rss)
        if rss <= w.allowed:
            return
        # Kill under the lock, and only a tree still watched: once unwatch() returned, the
        # worker may serve another task, and nothing here may touch it.
        with self._lock:
            if id(w) in self._watches and w.killed_at is None:
                w.killed_at = rss
                kill_tree(procs)

    def _loop(self) -> None:
        # A daemon thread that sleeps on the condition while nothing is watched: it costs
        # nothing between limited tasks, and a closed executor's watchdog simply idles.
        # It sleeps ``interval`` before each round, so short tasks are never walked.
        while True:
            with self._lock:
                while not self._watches:
                    self._wake.wait()
            time.sleep(self.interval)
            with self._lock:
                watches = list(self._watches.values())
            for w in watches:
                try:
                    self.check(w)
                except Exception:  # pragma: no cover - psutil race; next round retries
                    pass
