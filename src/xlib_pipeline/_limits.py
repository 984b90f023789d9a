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
from typing import Any

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


def tree(pid: int) -> list[Any]:
    """``psutil.Process`` objects of ``pid`` and its descendants (gone ones left out)."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def tree_rss(procs: list[Any]) -> int:
    """The summed RSS of ``procs`` in bytes (processes that exited count zero)."""
    import psutil

    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def kill_tree(procs: list[Any]) -> None:
    """SIGKILL every process of a tree, children first, then the root's process group."""
    import psutil

    for p in reversed(procs):
        try:
            p.kill()
        except psutil.Error:
            pass
    if procs:
        try:
            os.killpg(procs[0].pid, signal.SIGKILL)
        except OSError:
            pass


class TreeWatchdog:
    """One daemon thread polling the process trees of running memory-limited tasks.

    Per task it costs one RSS read of the worker (the baseline); trees are walked only by
    the watchdog thread, every ``interval``, so a task shorter than that is never walked.
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self._watches: dict[int, Watch] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._procs: dict[int, Any] = {}  # pid -> psutil.Process, reused across tasks

    def _rss(self, pid: int) -> int:
        """The RSS of process ``pid`` alone (0 when it is gone)."""
        import psutil

        proc = self._procs.get(pid)
        try:
            if proc is None:
                if len(self._procs) > 256:
                    self._procs.clear()
                proc = self._procs[pid] = psutil.Process(pid)
            return int(proc.memory_info().rss)
        except psutil.Error:
            self._procs.pop(pid, None)
            return 0

    @staticmethod
    def available() -> bool:
        """Whether psutil is importable (without it only the per-process limit applies)."""
        try:
            import psutil  # noqa: F401
        except ImportError:  # pragma: no cover - psutil is a dependency
            return False
        return True

    def watch(self, pid: int, limit: int) -> Watch:
        """Start watching worker ``pid``: its tree may grow ``limit`` bytes past the worker's
        size now (an idle worker has no children)."""
        baseline = self._rss(pid)
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
