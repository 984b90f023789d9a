"""The ``dask`` executor (task bodies on Dask workers) and the ``local_map`` fallback.

The scheduler loop, hooks, retries and audit stay in the driver; :meth:`DaskExecutor.call`
only ships a task's function and upstream values to the cluster and blocks the calling
lane until the answer (or the remote exception, with its traceback) is back.
"""

from __future__ import annotations

import functools
import itertools
import uuid
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from xlib_pipeline import (
    OUTPUTS_IN_DRIVER,
    DefinitionError,
    Isolation,
    ResourceError,
    RunContext,
    Task,
    call_body,
    call_with_timeout,
    current_task_scopes,
    run_in_scopes,
)

from ._futures import gather_all, wait_all, wait_one, windowed
from ._outputs import ClusterOutput, RemoteResult, unwrap
from ._plugin import STASH as STASH  # the key lives beside the hooks that read it
from ._remote import RemoteCall, by_value, by_value_modules
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
        # Dask keys must never repeat on a cluster (a repeated key is served the old
        # result): one random prefix per executor and a counter, instead of a uuid4 (an
        # os.urandom system call) per task.
        self._key_prefix = uuid.uuid4().hex
        self._key_count = itertools.count()

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
        args = tuple([unwrap(a) for a in args])
        # Files run by `xlib-pipeline run` are registered for pickling by value, which
        # Dask's serializer ignores for values it can pickle by reference: send plain
        # values as cloudpickle bytes, loaded in the task on the worker.
        boxing = bool(args) and by_value_modules()
        key = f"{task.name}-{self._key_prefix}-{next(self._key_count)}"
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
            wait_all(client, task, [fut], timeout)
            return ClusterOutput(task.name, future=fut)
        return wait_one(client, task, fut, timeout)

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
                wait_all(client, task, futs, timeout)
                return ClusterOutput(task.name, futures=futs)
            return gather_all(client, task, futs, timeout)
        return windowed(client, task, fn, before, after, items, par, key, timeout)


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
