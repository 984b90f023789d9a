"""The ``dask`` executor (task bodies on Dask workers) and the ``local_map`` fallback.

The scheduler loop, hooks, retries and audit stay in the driver; :meth:`DaskExecutor.call`
only ships a task's function and upstream values to the cluster and blocks the calling
lane until the answer (or the remote exception, with its traceback) is back.
"""

from __future__ import annotations

import functools
import uuid
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from xlib_pipeline import (
    OUTPUTS_IN_DRIVER,
    DeferredOutput,
    DefinitionError,
    Isolation,
    OutputUnavailableError,
    ResourceError,
    RunContext,
    SerializationError,
    StashKey,
    Task,
    TaskError,
    TaskTimeoutError,
    WorkerLostError,
    call_body,
    call_with_timeout,
    current_task_scopes,
    run_in_scopes,
)

from ._remote import RemoteCall, WorkerLoadError, by_value, by_value_modules
from ._settings import DistributeSpec

if TYPE_CHECKING:  # pragma: no cover
    from ._cluster import ClusterHandle


@attrs.define(kw_only=True)
class DaskRun:
    """Per-run decisions, made once by ``select_executor``."""

    distributed: bool
    inner: str  # the executor the run would have used without this plugin
    marked_only: bool = False
    #: By task name: ``(distribute spec, map index)`` of the tasks that have either.
    specs: Mapping[str, tuple[DistributeSpec | None, int | None]] = attrs.field(factory=dict)
    #: Tasks whose output the driver needs even when no hook reads outputs: final results
    #: (sinks), inputs of conditions, of freeze_inputs copies and of tasks run in the driver.
    fetch: frozenset[str] = frozenset()

    def spec(self, task: Task) -> tuple[DistributeSpec | None, int | None]:
        """``(distribute spec, map index)`` of ``task``."""
        return self.specs.get(task.name, (None, None))


#: ``run.stash`` key of the per-run state.
STASH: StashKey[DaskRun] = StashKey("dask")


class RemoteResult:
    """A task output kept on the cluster (``distribute={"keep_remote": True}``).

    Downstream tasks on the ``dask`` executor receive the value itself (Dask resolves the
    future on the worker); anything else receives this object and may call :meth:`result`.
    """

    __slots__ = ("_future", "_futures", "task")

    def __init__(self, task: str, future: Any = None, futures: list[Any] | None = None) -> None:
        self.task = task
        self._future = future
        self._futures = futures

    @property
    def futures(self) -> list[Any]:
        """The Dask futures holding the value (one, or one per mapped partition)."""
        return list(self._futures) if self._futures is not None else [self._future]

    def remote(self) -> Any:
        """What to pass to ``client.submit``: the future, or the list of futures."""
        return list(self._futures) if self._futures is not None else self._future

    def result(self, timeout: float | None = None) -> Any:
        """Fetch the value to the driver."""
        if self._futures is not None:
            client = self._futures[0].client if self._futures else None
            return client.gather(self._futures) if client is not None else []
        return self._future.result(timeout=timeout)

    def __repr__(self) -> str:
        n = "" if self._futures is None else f", partitions={len(self._futures)}"
        return f"{type(self).__name__}(task={self.task!r}{n})"


class ClusterOutput(RemoteResult, DeferredOutput):
    """An output left on the cluster because nothing in the driver needed it during the
    run (no ``keep_remote``): successors on Dask received its future, hooks see this
    object, and the run result fetches the value when ``result.tasks[name].output`` is
    read (:meth:`fetch`; ``result.tasks.outputs()`` batches several into one gather).
    """

    __slots__ = ()

    def fetch(self) -> Any:
        return self.fetch_many([self])[0]

    @classmethod
    def fetch_many(cls, items: Sequence[DeferredOutput]) -> list[Any]:
        """One ``client.gather`` per client for every future of ``items``."""
        outs = [i for i in items if isinstance(i, ClusterOutput)]
        if len(outs) != len(items):  # pragma: no cover - the core groups by class
            raise TypeError("ClusterOutput.fetch_many takes ClusterOutput items only")
        by_client: dict[int, tuple[Any, list[int]]] = {}
        for k, o in enumerate(outs):
            futs = o.futures
            client = futs[0].client if futs else None
            if client is not None:
                by_client.setdefault(id(client), (client, []))[1].append(k)
        values: list[Any] = [[] if o._futures is not None else None for o in outs]
        for client, ks in by_client.values():
            flat = [f for k in ks for f in outs[k].futures]
            for k in ks:
                outs[k]._check_alive(client)
            try:
                got = client.gather(flat)
            except Exception as exc:
                for k in ks:  # name the task whose value is gone
                    outs[k]._fetch_one(client)
                raise outs[ks[0]]._gone(exc) from exc  # pragma: no cover - all fetched
            pos = 0
            for k in ks:
                n = len(outs[k].futures)
                part = got[pos : pos + n]
                pos += n
                values[k] = list(part) if outs[k]._futures is not None else part[0]
        return values

    def _check_alive(self, client: Any) -> None:
        status = getattr(client, "status", "running")
        if status in ("closing", "closed"):
            raise self._gone(None, "its Dask client was closed with the PipelineManager")
        lost = [f for f in self.futures if f.status in ("cancelled", "lost", "error")]
        if lost:
            raise self._gone(None, f"its Dask future is {lost[0].status} (cluster closed?)")

    def _fetch_one(self, client: Any) -> None:
        try:
            client.gather(self.futures)
        except Exception as exc:
            raise self._gone(exc) from exc

    def _gone(self, exc: BaseException | None, why: str | None = None) -> OutputUnavailableError:
        reason = why or f"{type(exc).__name__}: {exc}"
        return OutputUnavailableError(
            f"task {self.task!r}: its output stayed on the Dask cluster (nothing in the "
            f"driver needed it during the run) and cannot be fetched now: {reason}. Read "
            f"result.tasks[{self.task!r}].output (or result.tasks.outputs()) before closing "
            "the PipelineManager, or configure a run store so that outputs are recorded",
            task=self.task,
            cause=exc,
        )


#: What ``_unwrap`` passes to ``client.submit`` as futures.
_REMOTE = (RemoteResult, ClusterOutput)


def _unwrap(value: Any) -> Any:
    return value.remote() if type(value) in _REMOTE else value


class DaskExecutor:
    """Runs task bodies on a Dask cluster through ``client.submit(fn, *args, pure=False)``.

    ``lanes()`` is how many tasks the driver keeps in flight: ``distributed.lanes`` or eight
    per worker thread (Dask queues the excess, so workers never wait for the driver).
    """

    name = "dask"

    def __init__(self, handle: ClusterHandle, lanes: int | None = None) -> None:
        self.handle = handle
        self._lanes = lanes
        self._wrappers: weakref.WeakKeyDictionary[Any, RemoteCall] = weakref.WeakKeyDictionary()

    def lanes(self) -> int | None:
        if self._lanes is not None:
            return self._lanes
        return max(8, 8 * self.handle.total_threads())

    def close(self) -> None:
        self.handle.close()

    def _remote(self, task: Task) -> RemoteCall:
        fn = task.fn
        try:
            w = self._wrappers.get(fn)
        except TypeError:
            return RemoteCall(fn, task.name, task.is_async)
        if w is None or w.task != task.name:
            w = RemoteCall(fn, task.name, task.is_async)
            try:
                self._wrappers[fn] = w
            except TypeError:
                pass
        return w

    def call(
        self,
        task: Task,
        args: tuple[Any, ...],
        *,
        run: RunContext,
        isolation: Isolation | None,
        timeout: float | None,
    ) -> Any:
        state: DaskRun | None = run.stash.get(STASH, None)
        spec, index = state.spec(task) if state is not None else (None, None)
        if state is not None and state.marked_only and spec is None and index is None:
            # distributed.scope = "marked": unmarked tasks stay in the driver's lane.
            scopes = current_task_scopes()
            if timeout is not None:
                return run_in_scopes(scopes, call_with_timeout, task, task.fn, args, timeout)
            body = functools.partial(call_body, is_async=task.is_async)
            return run_in_scopes(scopes, body, task.name, task.fn, args)
        client = self.handle.client()
        fn = self._remote(task)
        scopes = current_task_scopes()
        if scopes:  # entered on the Dask worker around the body (tracing context, ...)
            fn = functools.partial(run_in_scopes, scopes, fn)  # type: ignore[assignment]
        args = tuple([_unwrap(a) for a in args])
        # Files run by `xlib-pipeline run` are registered for pickling by value, which
        # Dask's serializer ignores for values it can pickle by reference: send plain
        # values as cloudpickle bytes, loaded in the task on the worker.
        boxing = bool(args) and by_value_modules()
        key = f"{task.name}-{uuid.uuid4().hex}"
        needs = worker_resources(client, task)
        keep = spec is not None and spec.keep_remote
        # The value comes to the driver only when something there needs it; otherwise the
        # task's successors receive its future and the cluster moves the data.
        needed = (
            state is None
            or task.name in state.fetch
            or run.stash.get(OUTPUTS_IN_DRIVER, True) is not False
        )
        if index is not None:
            stay = keep or not needed
            return self._map(client, task, fn, args, index, spec, key, stay, timeout, needs, boxing)
        if boxing:
            args = tuple([_box(a) for a in args])
        fut = client.submit(fn, *args, pure=False, key=key, **needs)
        if keep:
            return RemoteResult(task.name, future=fut)
        if not needed:
            _wait_all(client, task, [fut], timeout)
            return ClusterOutput(task.name, future=fut)
        return _wait_one(client, task, fut, timeout)

    def _map(
        self,
        client: Any,
        task: Task,
        fn: RemoteCall,
        args: tuple[Any, ...],
        index: int,
        spec: DistributeSpec | None,
        key: str,
        keep: bool,
        timeout: float | None,
        needs: dict[str, Any] | None = None,
        boxing: bool = False,
    ) -> Any:
        from distributed import Future

        needs = needs or {}
        items = _items(task, args, index)
        if isinstance(items, Future):
            items = items.result()
            _check_items(task, items, index)
        n = len(items)
        shared = list(args)
        if boxing:
            shared = [a if j == index else _box(a) for j, a in enumerate(shared)]
            items = [_box(i) for i in items]
        if n > 1:  # ship each shared argument once, not once per partition
            for j, a in enumerate(shared):
                if j != index and not isinstance(a, Future) and not _small(a):
                    shared[j] = client.scatter([a], hash=False)[0]
        before, after = shared[:index], shared[index + 1 :]
        par = spec.parallelism if spec is not None else "auto"
        if isinstance(par, str) or par >= n:  # "auto"
            futs = [
                client.submit(fn, *before, item, *after, pure=False, key=f"{key}-{k}", **needs)
                for k, item in enumerate(items)
            ]
            if spec is not None and spec.keep_remote:
                return RemoteResult(task.name, futures=futs)
            if keep:  # kept because nothing in the driver needs it
                _wait_all(client, task, futs, timeout)
                return ClusterOutput(task.name, futures=futs)
            return _gather(client, task, futs, timeout)
        return _windowed(client, task, fn, before, after, items, par, key, timeout)


def _box(value: Any) -> Any:
    from distributed import Future

    if _small(value) or isinstance(value, Future):
        return value
    if isinstance(value, list) and value and all(isinstance(v, Future) for v in value):
        return value
    return by_value(value)


def worker_resources(client: Any, task: Task) -> dict[str, Any]:
    """``{"resources": ...}`` for ``client.submit`` when the task declares ``resources=``
    (Dask worker resources); :class:`ResourceError` naming the task when no worker of the
    cluster advertises that much (Dask would wait for one forever)."""
    needs = task.options.get("resources")
    if not needs:
        return {}
    wanted = {k: float(v) for k, v in dict(needs).items() if v}
    if not wanted:
        return {}
    workers = client.scheduler_info().get("workers", {})
    for info in workers.values():
        have = info.get("resources") or {}
        if all(float(have.get(k, 0)) >= v for k, v in wanted.items()):
            return {"resources": wanted}
    raise ResourceError(
        f"task {task.name!r} needs Dask worker resources {wanted}, which no worker of the "
        f"cluster advertises (start workers with --resources, e.g. "
        f'"{" ".join(f"{k}={v:g}" for k, v in wanted.items())}")'
    )


def _small(value: Any) -> bool:
    return value is None or (
        isinstance(value, int | float | bool | str | bytes)
        and (not isinstance(value, str | bytes) or len(value) < 1024)
    )


def _items(task: Task, args: tuple[Any, ...], index: int) -> Any:
    if index >= len(args):
        raise DefinitionError(
            f"task {task.name!r}: map_over={index} but the task has {len(args)} upstream "
            f"argument(s) ({', '.join(task.depends_on) or 'none'})",
            task=task.name,
        )
    items = args[index]
    from distributed import Future

    if isinstance(items, Future):
        return items
    if isinstance(items, list) and items and all(isinstance(i, Future) for i in items):
        return items  # partitions kept remote upstream: map over the futures themselves
    _check_items(task, items, index)
    return items


def _check_items(task: Task, items: Any, index: int) -> None:
    if isinstance(items, str | bytes | Mapping) or not isinstance(items, Sequence):
        upstream = task.depends_on[index] if index < len(task.depends_on) else "?"
        raise TypeError(
            f"task {task.name!r}: map_over={index} expects upstream argument {index} "
            f"(the output of {upstream!r}) to be a list or tuple, got {type(items).__name__}"
        )


def _wait_one(client: Any, task: Task, fut: Any, timeout: float | None) -> Any:
    try:
        return fut.result(timeout=timeout)
    except BaseException as exc:
        raise _translate(client, task, [fut], exc, timeout) from None


def _wait_all(client: Any, task: Task, futs: list[Any], timeout: float | None) -> None:
    from distributed import wait

    try:
        with client.as_current():  # wait() looks its client up; ours is not the default
            wait(futs, timeout=timeout)
        for f in futs:
            if f.status != "finished":
                f.result()  # raises the task's exception (with its remote traceback)
    except BaseException as exc:
        raise _translate(client, task, futs, exc, timeout) from None


def _gather(client: Any, task: Task, futs: list[Any], timeout: float | None) -> list[Any]:
    from distributed import wait

    try:
        if timeout is not None:
            with client.as_current():
                wait(futs, timeout=timeout)
        return list(client.gather(futs))
    except BaseException as exc:
        raise _translate(client, task, futs, exc, timeout) from None


def _windowed(
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
