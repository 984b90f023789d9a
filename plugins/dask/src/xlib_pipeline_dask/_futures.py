"""Waiting on Dask futures for a task, and turning what they raise into what the core
expects (timeouts, lost workers, cancelled futures, failed partitions)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from xlib_pipeline import (
    SerializationError,
    Task,
    TaskError,
    TaskTimeoutError,
    WorkerLostError,
)

from ._remote import RemoteCall, WorkerLoadError


def wait_one(client: Any, task: Task, fut: Any, timeout: float | None) -> Any:
    try:
        return fut.result(timeout=timeout)
    except BaseException as exc:
        raise _translate(client, task, [fut], exc, timeout) from None


def wait_all(client: Any, task: Task, futs: list[Any], timeout: float | None) -> None:
    from distributed import wait

    try:
        with client.as_current():  # wait() looks its client up; ours is not the default
            wait(futs, timeout=timeout)
        for f in futs:
            if f.status != "finished":
                f.result()  # raises the task's exception (with its remote traceback)
    except BaseException as exc:
        raise _translate(client, task, futs, exc, timeout) from None


def gather_all(client: Any, task: Task, futs: list[Any], timeout: float | None) -> list[Any]:
    from distributed import wait

    try:
        if timeout is not None:
            with client.as_current():
                wait(futs, timeout=timeout)
        return list(client.gather(futs))
    except BaseException as exc:
        raise _translate(client, task, futs, exc, timeout) from None


def windowed(
    client: Any,
    task: Task,
    fn: RemoteCall,
    before: list[Any],
    after: list[Any],
    items: Sequence[Any],
    par: int,
    key: str,
    timeout: float | None,
) -> list[Any]:
    """Map with at most ``par`` partitions in flight; results in input order."""
    from distributed import as_completed

    n = len(items)
    results: list[Any] = [None] * n
    futs: list[Any] = []
    index_of: dict[str, int] = {}

    def submit(k: int) -> Any:
        f = client.submit(fn, *before, items[k], *after, pure=False, key=f"{key}-{k}")
        futs.append(f)
        index_of[f.key] = k
        return f

    nxt = min(par, n)
    ac = as_completed([submit(k) for k in range(nxt)], loop=client.loop, timeout=timeout)
    current: int | None = None
    try:
        for f in ac:
            current = index_of[f.key]
            results[current] = f.result()
            current = None
            if nxt < n:
                ac.add(submit(nxt))
                nxt += 1
    except BaseException as exc:
        raise _translate(client, task, futs, exc, timeout, total=n, index=current) from None
    return results


def _translate(
    client: Any,
    task: Task,
    futs: list[Any],
    exc: BaseException,
    timeout: float | None,
    *,
    total: int | None = None,
    index: int | None = None,
) -> BaseException:
    """Turn what ``result``/``gather`` raised into what the core should see."""
    from distributed import CancelledError

    try:
        from distributed.scheduler import KilledWorker
    except Exception:  # pragma: no cover
        KilledWorker = ()  # type: ignore[assignment,misc]
    if isinstance(exc, WorkerLoadError):
        err = SerializationError(str(exc), task=task.name, cause=exc)
        tb = getattr(exc, "__xlib_remote_traceback__", None)
        if tb:
            err.__xlib_remote_traceback__ = tb  # type: ignore[attr-defined]
        exc = err
    pending = [f for f in futs if not f.done()]
    failed = [k for k, f in enumerate(futs) if f.status == "error"]
    if index is not None:
        failed = [index]
    if pending:
        try:
            client.cancel(pending)
        except Exception:  # pragma: no cover - client already closed
            pass
    if isinstance(exc, TimeoutError) and timeout is not None and not failed:
        return TaskTimeoutError(
            f"task {task.name!r} timed out after {timeout:g}s on the Dask cluster "
            "(its futures were cancelled; a running worker thread finishes on its own)",
            task=task.name,
        )
    if isinstance(exc, KilledWorker):
        return WorkerLostError(
            f"task {task.name!r}: the Dask workers running it died ({exc})", task=task.name
        )
    if isinstance(exc, CancelledError) and not failed:
        return TaskError(
            f"task {task.name!r}: its Dask future was cancelled (cluster closed?)",
            task=task.name,
        )
    total = len(futs) if total is None else total
    if total > 1 and failed:
        note = f"partition {failed[0]} of {total} of task {task.name!r} failed\n"
        tb = getattr(exc, "__xlib_remote_traceback__", None)
        if tb:
            try:
                exc.__xlib_remote_traceback__ = note + tb  # type: ignore[attr-defined]
            except Exception:  # pragma: no cover
                pass
    return exc
