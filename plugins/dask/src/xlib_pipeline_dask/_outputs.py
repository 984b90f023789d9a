"""Outputs that stay on the Dask cluster: :class:`RemoteResult` (``keep_remote``) and
:class:`ClusterOutput` (left there because nothing in the driver needed it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from xlib_pipeline import DeferredOutput, OutputUnavailableError


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


#: What ``unwrap`` passes to ``client.submit`` as futures.
REMOTE_TYPES = (RemoteResult, ClusterOutput)


def unwrap(value: Any) -> Any:
    return value.remote() if type(value) in REMOTE_TYPES else value
