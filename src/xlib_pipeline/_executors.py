"""Built-in executors: local (inline and threads) and worker processes.

An executor decides *where* a task's function body runs; the scheduler decides *when*.
``call`` blocks the scheduler lane that dispatched the task until the body finished.
"""

from __future__ import annotations

import contextvars
import pickle
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._async import call_body
from ._records import Isolation, ResourceLimits, RunContext
from ._scopes import current_task_scopes
from ._task import Task
from .exceptions import (
    LazyResultError,
    RemoteError,
    ResourceLimitExceeded,
    SerializationError,
    TaskTimeoutError,
    WorkerLostError,
)

if TYPE_CHECKING:  # pragma: no cover
    # Worker processes only: a run on the local executor never imports cloudpickle,
    # subprocess or the limits watchdog (the cold first run pays for what it uses).
    from ._limits import TreeWatchdog, Watch
    from ._worker_pool import WorkerPool


def call_with_timeout(
    task: Task, fn: Callable[..., Any], args: tuple[Any, ...], timeout: float
) -> Any:
    """Run ``fn(*args)`` on a helper thread; raise :class:`TaskTimeoutError` past ``timeout``.

    A thread cannot be killed: after a timeout it is abandoned (daemon) and its result
    discarded. Use the process executor when a runaway task must really be stopped.
    """
    box: list[Any] = []
    is_async = fn is task.fn and task.is_async

    def target() -> None:
        try:
            box.append((True, call_body(task.name, fn, args, is_async=is_async, timeout=timeout)))
        except BaseException as exc:
            box.append((False, exc))

    # The helper thread sees the lane's context (task scopes, a tracing span).
    ctx = contextvars.copy_context()
    t = threading.Thread(target=ctx.run, args=(target,), name=f"xlib-task-{task.name}", daemon=True)
    t.start()
    # A coroutine body cancels itself at ``timeout`` (CancelledError inside it): give it
    # the moment it needs to unwind and report the timeout itself.
    t.join(timeout + 1.0 if is_async else timeout)
    if not box:
        raise TaskTimeoutError(f"task {task.name!r} timed out after {timeout:g}s", task=task.name)
    ok, value = box[0]
    if ok:
        return value
    raise value


class LocalExecutor:
    """Runs the function in the scheduler lane's own thread (``inline`` and ``threads``)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def call(
        self,
        task: Task,
        args: tuple[Any, ...],
        *,
        run: RunContext,
        isolation: Isolation | None,
        timeout: float | None,
    ) -> Any:
        if timeout is not None:
            return call_with_timeout(task, task.fn, args, timeout)
        return call_body(task.name, task.fn, args, is_async=task.is_async)

    def lanes(self) -> int | None:
        return 1 if self.name == "inline" else None

    def close(self) -> None:
        pass


# --- worker processes ---------------------------------------------------------------------


class ProcessExecutor:
    """Runs each task in a warm worker process (fresh interpreters, tasks sent by value).

    Functions, arguments and results must be picklable by cloudpickle; closures and code
    defined in ``__main__`` are. Pools are keyed by the tuple ``(tenant, Isolation.pool,
    limits)``: a worker process serves exactly one tenant for its whole life, whatever a
    plugin names its pool, and one set of limits. A task past its ``timeout`` has its
    worker killed.
    """

    name = "processes"

    def __init__(self, manager: Any) -> None:
        from ._limits import TreeWatchdog

        self._max = manager.config.core.max_workers
        self._pools: dict[tuple[Any, ...], WorkerPool] = {}
        self._watchdog: TreeWatchdog | None = TreeWatchdog() if TreeWatchdog.available() else None
        self._next_core = 0
        self._lock = threading.Lock()
        self._fn_cache: weakref.WeakKeyDictionary[Any, tuple[str, bytes]] = (
            weakref.WeakKeyDictionary()
        )

    def lanes(self) -> int | None:
        return None

    def pool(self, isolation: Isolation | None) -> WorkerPool:
        """The pool serving ``isolation`` (created on first use)."""
        key = pool_key(isolation)
        limits = isolation.limits if isolation else ResourceLimits()
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                from ._worker_pool import WorkerPool

                size = limits.cpu_cores or self._max
                pool = WorkerPool(
                    limits=limits,
                    size=max(1, size),
                    core_start=self._next_core,
                    tenant=isolation.tenant if isolation else None,
                )
                if limits.cpu_cores:
                    self._next_core += limits.cpu_cores
                self._pools[key] = pool
            return pool

    def _pickled(self, task: Task) -> tuple[str, bytes]:
        fn = task.fn
        try:
            cached = self._fn_cache.get(fn)
        except TypeError:
            cached = None
        if cached is not None:
            return cached
        import cloudpickle

        try:
            data = cloudpickle.dumps(fn, protocol=5)
        except Exception as exc:
            raise SerializationError(
                f"task {task.name!r}: its function cannot be pickled for a worker process: "
                f"{type(exc).__name__}: {exc}",
                task=task.name,
                cause=exc,
            ) from exc
        import hashlib

        entry = (hashlib.sha256(data).hexdigest()[:24], data)
        try:
            self._fn_cache[fn] = entry
        except TypeError:
            pass
        return entry

    def call(
        self,
        task: Task,
        args: tuple[Any, ...],
        *,
        run: RunContext,
        isolation: Isolation | None,
        timeout: float | None,
    ) -> Any:
        key, fn_bytes = self._pickled(task)
        pool = self.pool(isolation)
        limits = pool.limits
        if limits.wall_seconds is not None:
            timeout = limits.wall_seconds if timeout is None else min(timeout, limits.wall_seconds)
        worker = pool.acquire()
        healthy = False
        tenant = isolation.tenant if isolation else None
        watch = None
        if limits.memory_bytes is not None and self._watchdog is not None:
            watch = self._watchdog.watch(worker.pid, limits.memory_bytes)
        try:
            worker.send(key, fn_bytes, args, task.name, task.is_async, current_task_scopes())
            try:
                frame = worker.receive(timeout)
            except (EOFError, OSError):
                frame = b""
            if watch is not None:
                self._watchdog.unwatch(watch)  # type: ignore[union-attr]
                if watch.killed_at is not None:
                    raise _tree_limit_error(task, tenant, limits, watch)
            if frame is None:
                raise TaskTimeoutError(
                    f"task {task.name!r} timed out after {timeout:g}s; its worker process "
                    f"(pid {worker.pid}) was killed",
                    task=task.name,
                )
            if frame == b"":
                worker.proc.wait()
                raise _lost_error(task, tenant, worker.pid, worker.proc.returncode)
            answer = pickle.loads(frame)
            if answer[0] == "ok":
                healthy = True
                return answer[1]
            _, stage, type_name, message, tb, blob = answer
            healthy = stage != "memory"
            raise _rebuild(task, isolation, limits, stage, type_name, message, tb, blob)
        finally:
            if watch is not None:
                self._watchdog.unwatch(watch)  # type: ignore[union-attr]
            pool.release(worker, healthy=healthy)

    def pool_pids(self) -> dict[tuple[Any, ...], list[int]]:
        """PIDs of live worker processes by pool key ``(tenant, pool, limits)``."""
        with self._lock:
            pools = list(self._pools.items())
        return {k: p.pids() for k, p in pools}

    def worker_pids(self) -> list[int]:
        """PIDs of every live worker process (for tests and monitoring)."""
        with self._lock:
            pools = list(self._pools.values())
        return [pid for p in pools for pid in p.pids()]

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for p in pools:
            p.close()


def pool_key(isolation: Isolation | None) -> tuple[Any, ...]:
    """The identity of the worker pool serving ``isolation``: ``(tenant, pool, limits)``.

    A structured key, never a joined string, so no tenant name can collide with another
    tenant's pool; the tenant is always part of it, whatever ``Isolation.pool`` holds.
    """
    if isolation is None:
        return (None, None, ResourceLimits())
    return (isolation.tenant, isolation.pool, isolation.limits)


def _tree_limit_error(
    task: Task, tenant: str | None, limits: ResourceLimits, watch: Watch
) -> ResourceLimitExceeded:
    assert watch.killed_at is not None and limits.memory_bytes is not None
    used = watch.killed_at - watch.baseline
    return ResourceLimitExceeded(
        f"task {task.name!r}"
        + (f" of tenant {tenant!r}" if tenant else "")
        + f" exceeded its memory limit of {_fmt_bytes(limits.memory_bytes)}: its process "
        f"tree (the worker and the processes it started) reached {_fmt_bytes(used)} "
        "resident; the whole tree was killed",
        task=task.name,
        tenant=tenant,
        limit="memory",
    )


def _lost_error(task: Task, tenant: str | None, pid: int, code: int | None) -> WorkerLostError:
    """What happened to a worker that died before answering: its signal or exit code."""
    import signal

    who = f"task {task.name!r}" + (f" of tenant {tenant!r}" if tenant else "")
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        why = f"was killed by {name}"
        if -code == signal.SIGKILL:
            why += " (sent by another process, or the kernel's out-of-memory killer)"
        elif -code in (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE):
            why += " (a crash in native code)"
    else:
        why = f"exited with code {code} (os._exit, or native code calling exit)"
    return WorkerLostError(
        f"{who}: its worker process (pid {pid}) {why} before answering",
        task=task.name,
    )


def _fmt_bytes(n: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} B"


def _rebuild(
    task: Task,
    isolation: Isolation | None,
    limits: ResourceLimits,
    stage: str,
    type_name: str,
    message: str,
    tb: str,
    blob: bytes | None,
) -> BaseException:
    tenant = isolation.tenant if isolation else None
    if stage == "memory" and limits.memory_bytes is not None:
        return ResourceLimitExceeded(
            f"task {task.name!r}"
            + (f" of tenant {tenant!r}" if tenant else "")
            + f" exceeded its memory limit of {_fmt_bytes(limits.memory_bytes)}",
            task=task.name,
            tenant=tenant,
            limit="memory",
            traceback=tb,
        )
    if stage == "lazy":
        return LazyResultError(
            f"task {task.name!r} is a plain function that returned a {type_name} object "
            "instead of a value: declare it `async def` to have it awaited, or return the "
            "value itself",
            task=task.name,
        )
    if stage == "result":
        return SerializationError(
            f"task {task.name!r}: its result cannot be pickled back from the worker: "
            f"{type_name}: {message}",
            task=task.name,
            traceback=tb,
        )
    exc: BaseException | None = None
    if blob is not None:
        try:
            exc = pickle.loads(blob)
        except Exception:
            exc = None
    if exc is None:
        exc = RemoteError(f"{type_name}: {message}", task=task.name, traceback=tb)
    try:
        exc.__xlib_remote_traceback__ = tb  # type: ignore[attr-defined]
    except Exception:
        pass
    return exc


def remote_traceback(exc: BaseException) -> str | None:
    """The traceback text a worker process reported for ``exc``, if it came from one."""
    return getattr(exc, "__xlib_remote_traceback__", None) or getattr(exc, "traceback", None)
