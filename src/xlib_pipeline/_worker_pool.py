"""Worker processes of the ``processes`` executor: one process per slot, reused across
tasks, started with the resource limits of its tenant (see :mod:`._worker` for the child)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
from typing import Any

import attrs
import cloudpickle

from . import _worker
from ._records import ResourceLimits
from .exceptions import SerializationError


class WorkerProcess:
    """One fresh interpreter running ``_worker.py``, talking over two private pipes."""

    def __init__(self, limits: ResourceLimits, core_offset: int = 0) -> None:
        self.limits = limits
        p2c_r, p2c_w = os.pipe()
        c2p_r, c2p_w = os.pipe()
        spec = {
            "memory_bytes": limits.memory_bytes,
            "cpu_cores": limits.cpu_cores,
            "core_offset": core_offset,
            "parent_pid": os.getpid(),  # the worker dies with its driver (see _worker)
        }
        env = dict(os.environ)
        paths = [p for p in sys.path if p and os.path.isdir(p)]
        env["PYTHONPATH"] = os.pathsep.join(paths)
        self.proc = subprocess.Popen(
            [sys.executable, "-u", _worker.__file__, str(p2c_r), str(c2p_w), json.dumps(spec)],
            pass_fds=(p2c_r, c2p_w),
            env=env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C goes to the driver, which decides
        )
        os.close(p2c_r)
        os.close(c2p_w)
        self._w = p2c_w
        self._r = c2p_r
        self.known: set[str] = set()
        self.pid = self.proc.pid

    def send(
        self,
        key: str,
        fn_bytes: bytes,
        args: tuple[Any, ...],
        task: str,
        is_async: bool = False,
        scopes: tuple[Any, ...] = (),
    ) -> None:
        payload = (key, None if key in self.known else fn_bytes, args, task, is_async, scopes)
        try:
            data = cloudpickle.dumps(payload, protocol=5)
        except Exception as exc:
            raise SerializationError(
                f"task {task!r}: its arguments cannot be pickled for a worker process: "
                f"{type(exc).__name__}: {exc}",
                task=task,
                cause=exc,
            ) from exc
        _worker.write_frame(self._w, data)
        self.known.add(key)

    def receive(self, timeout: float | None) -> bytes | None:
        """Wait for the answer; ``None`` when ``timeout`` passed first."""
        if timeout is not None:
            ready, _, _ = select.select([self._r], [], [], max(timeout, 0.0))
            if not ready:
                return None
        frame = _worker.read_frame(self._r)
        if frame is None:
            raise EOFError("worker closed its pipe")
        return frame

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                self.proc.kill()
        self.proc.wait()
        self._close_fds()

    def stop(self) -> None:
        """Close the command pipe (the worker exits at EOF); kill if it lingers."""
        try:
            os.close(self._w)
        except OSError:
            pass
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.kill()
        self._close_fds()

    def _close_fds(self) -> None:
        for fd in (self._w, self._r):
            try:
                os.close(fd)
            except OSError:
                pass


@attrs.define
class WorkerPool:
    """Warm worker processes sharing one set of limits; at most ``size`` busy at once."""

    limits: ResourceLimits
    size: int
    #: First CPU (index into the allowed set) this pool's workers are pinned from, so
    #: pools limited to few cores spread over the machine instead of all taking core 0.
    core_start: int = 0
    #: The one tenant whose tasks this pool's processes run (``None``: tenant-less tasks).
    tenant: str | None = None
    _idle: list[WorkerProcess] = attrs.field(factory=list)
    _all: list[WorkerProcess] = attrs.field(factory=list)
    _busy: int = 0
    _cond: threading.Condition = attrs.field(factory=threading.Condition)
    _closed: bool = False
    _spawned: int = 0

    def acquire(self) -> WorkerProcess:
        with self._cond:
            while not self._idle and self._busy >= self.size:
                self._cond.wait()
            self._busy += 1
            while self._idle:
                w = self._idle.pop()
                if w.alive():
                    return w
                self._all.remove(w)  # died while idle (killed from outside)
                w.kill()
            offset = self.core_start + self._spawned
            self._spawned += 1
        try:
            w = WorkerProcess(self.limits, core_offset=offset)
        except BaseException:
            with self._cond:
                self._busy -= 1
                self._cond.notify()
            raise
        with self._cond:
            self._all.append(w)
        return w

    def release(self, worker: WorkerProcess, *, healthy: bool) -> None:
        if not healthy:
            worker.kill()
        with self._cond:
            self._busy -= 1
            if healthy and not self._closed:
                self._idle.append(worker)
            else:
                if worker in self._all:
                    self._all.remove(worker)
                if healthy:
                    worker.stop()
            self._cond.notify()

    def pids(self) -> list[int]:
        with self._cond:
            return [w.pid for w in self._all]

    def close(self) -> None:
        with self._cond:
            self._closed = True
            workers, self._idle, self._all = list(self._all), [], []
        for w in workers:
            w.stop()
