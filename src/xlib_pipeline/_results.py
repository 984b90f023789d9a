"""Results: :class:`TaskResult` per task and :class:`PipelineResult` per run."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

import attrs

from ._deferred import DeferredOutput
from ._records import Status, utc
from .exceptions import TaskFailedError

_WITH_OUTPUT = (Status.SUCCEEDED, Status.CACHED, Status.FALLBACK)


@attrs.frozen(kw_only=True, repr=False)
class TaskResult:
    """How a task ended in a run.

    ``status`` is one of succeeded, cached, fallback, failed, skipped, upstream_failed,
    cancelled; ``output`` is the function's return value when it succeeded (the cached
    output when ``cached``, the fallback's output when ``fallback``); ``error`` the exception
    when it failed (for ``fallback``: the failure the fallback replaced); ``attempts``
    counts calls of the function (0 when it never ran).

    An output an executor left where it was computed (a :class:`DeferredOutput`, e.g. an
    intermediate result on a Dask cluster) is fetched the first time ``output`` is read and
    cached; :class:`~.exceptions.OutputUnavailableError` names the task when it is gone.
    """

    name: str
    status: Status
    _output: Any = None
    error: BaseException | None = None
    traceback: str | None = None
    attempts: int = 0
    started: float | None = None
    finished: float | None = None

    @property
    def output(self) -> Any:
        """The task's output (``None`` unless it succeeded, was cached or fell back)."""
        out = self._output
        if isinstance(out, DeferredOutput):
            out = out.fetch()
            object.__setattr__(self, "_output", out)
        return out

    @property
    def output_fetched(self) -> bool:
        """False while the output is still where it was computed (reading ``output``
        fetches it)."""
        return not isinstance(self._output, DeferredOutput)

    def __repr__(self) -> str:  # never fetches: shows a deferred output as itself
        return (
            f"TaskResult(name={self.name!r}, status={self.status!r}, output={self._output!r}, "
            f"error={self.error!r}, traceback={self.traceback!r}, attempts={self.attempts!r}, "
            f"started={self.started!r}, finished={self.finished!r})"
        )

    @property
    def started_at(self) -> datetime | None:
        """UTC start of the first attempt."""
        return utc(self.started)

    @property
    def finished_at(self) -> datetime | None:
        """UTC end of the last attempt."""
        return utc(self.finished)

    @property
    def duration(self) -> float | None:
        """Seconds from first start to last finish, when the task ran."""
        if self.started is None or self.finished is None:
            return None
        return self.finished - self.started

    @property
    def succeeded(self) -> bool:
        """True when the task succeeded, by running or from the result cache."""
        return self.status is Status.SUCCEEDED or self.status is Status.CACHED


class TaskResults(Mapping[str, TaskResult]):
    """Task name → :class:`TaskResult`, built lazily from the scheduler's arrays."""

    __slots__ = ("_built", "_cols", "_index", "_names")

    def __init__(self, names: tuple[str, ...], index: Mapping[str, int], cols: Any) -> None:
        self._names = names
        self._index = index
        self._cols = cols
        self._built: dict[int, TaskResult] = {}

    def _build(self, i: int) -> TaskResult:
        r = self._built.get(i)
        if r is None:
            c = self._cols
            err = c.errors.get(i)
            r = TaskResult(
                name=self._names[i],
                status=c.status[i] or Status.PENDING,
                output=c.outputs[i] if c.status[i] in _WITH_OUTPUT else None,
                error=err[0] if err else None,
                traceback=err[1] if err else None,
                attempts=c.attempts.get(i, 1 if c.started[i] is not None else 0),
                started=c.started[i],
                finished=c.finished[i],
            )
            self._built[i] = r
        return r

    def __getitem__(self, name: str) -> TaskResult:
        return self._build(self._index[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for s in self._cols.status:
            counts[str(s)] = counts.get(str(s), 0) + 1
        return f"TaskResults({len(self)} tasks: {counts})"

    def rows(self) -> Iterator[tuple[str, Status, int, float | None, float | None]]:
        """``(name, status, attempts, started, finished)`` of every task, straight from the
        scheduler's arrays (no :class:`TaskResult` built): for exporters that read every
        task of every run. ``status`` is ``pending`` for a task not yet terminal."""
        c = self._cols
        attempts = c.attempts
        pending = Status.PENDING
        for i, (name, status, started, finished) in enumerate(
            zip(self._names, c.status, c.started, c.finished)
        ):
            n = attempts.get(i, 1 if started is not None else 0)
            yield name, status or pending, n, started, finished

    def outputs(self, names: Iterable[str] | None = None) -> dict[str, Any]:
        """Task name -> output of the tasks in ``names`` (default: every task) that have one
        (succeeded, cached or fell back). Outputs still where they were computed are fetched
        in one batched call per kind (one ``client.gather`` for Dask) and cached, instead of
        one round trip per task as reading each ``output`` would do."""
        wanted = list(self._names if names is None else names)
        results = [self[n] for n in wanted]  # KeyError names an unknown task
        pending: dict[type[DeferredOutput], list[TaskResult]] = {}
        for r in results:
            if r.status in _WITH_OUTPUT and isinstance(r._output, DeferredOutput):
                pending.setdefault(type(r._output), []).append(r)
        for kind, rs in pending.items():
            values = kind.fetch_many([r._output for r in rs])
            for r, v in zip(rs, values, strict=True):
                object.__setattr__(r, "_output", v)
        return {r.name: r.output for r in results if r.status in _WITH_OUTPUT}

    def by_status(self, status: Status | str) -> list[str]:
        """Names of the tasks that ended in ``status``."""
        st = Status(status)
        return [n for n, s in zip(self._names, self._cols.status) if s is st]

    def counts(self) -> dict[Status, int]:
        """How many tasks ended in each status (one pass; statuses no task ended in are
        left out, as are tasks with no status yet)."""
        statuses = self._cols.status
        if len(statuses) > 32:  # Counter counts in C; its set-up costs a small run 1.4 µs
            found = Counter(statuses)
            found.pop(None, None)
            return dict(found)
        small: dict[Status, int] = {}
        for s in statuses:
            if s is not None:
                small[s] = small.get(s, 0) + 1
        return small


_MAPPING_KEYS = (
    "success",
    "final_result",
    "error",
    "tasks",
    "duration",
    "run_id",
    "pipeline",
    "status",
)


@attrs.frozen(kw_only=True)
class PipelineResult(Mapping[str, Any]):
    """The outcome of one run; also readable as a mapping (``result["final_result"]``).

    ``final_result`` is the single sink task's output; with several sink tasks it is a dict
    of sink name → output (``None`` for sinks that did not succeed). ``error`` is a
    :class:`TaskFailedError` for the first task that failed (its ``task``, ``cause`` and
    ``traceback``), or the error that stopped the run, or ``None``.
    """

    pipeline: str
    run_id: str
    status: str
    success: bool
    final_result: Any
    error: BaseException | None
    tasks: Mapping[str, TaskResult] = attrs.field(repr=False)
    started: float
    finished: float
    resumed_from: str | None = None

    @property
    def duration(self) -> float:
        """Wall-clock seconds of the run."""
        return self.finished - self.started

    @property
    def fallbacks(self) -> list[str]:
        """Names of the tasks whose output came from their ``fallback=`` (status
        ``fallback``): the run succeeded, but these tasks did not."""
        return [n for n, r in self.tasks.items() if r.status is Status.FALLBACK]

    @property
    def cached(self) -> list[str]:
        """Names of the tasks served from the result cache (status ``cached``)."""
        return [n for n, r in self.tasks.items() if r.status is Status.CACHED]

    @property
    def failed_task(self) -> str | None:
        """The name of the first task that failed, if any."""
        return self.error.task if isinstance(self.error, TaskFailedError) else None

    def __getitem__(self, key: str) -> Any:
        if key not in _MAPPING_KEYS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(_MAPPING_KEYS)

    def __len__(self) -> int:
        return len(_MAPPING_KEYS)

    def __bool__(self) -> bool:
        return self.success

    def raise_for_status(self) -> PipelineResult:
        """Raise the run's error if it did not succeed; return ``self`` otherwise."""
        if not self.success and self.error is not None:
            raise self.error
        return self
