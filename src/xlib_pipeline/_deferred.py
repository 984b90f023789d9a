"""Outputs left where they were computed, and which outputs the driver reads during a run.

An executor that runs task bodies elsewhere (the Dask plugin) may leave an output on the
cluster when nothing in the driver reads it during the run: successors receive a reference
and the cluster moves the data. :func:`outputs_read_in_driver` says which outputs the core
itself reads (the final results, inputs of conditions, contracts, caching, ...); plugins whose
hooks read every output set :data:`~._records.OUTPUTS_IN_DRIVER`. The run result then gives
real values: a :class:`DeferredOutput` is fetched when ``result.tasks[name].output`` is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._records import RunContext


class DeferredOutput:
    """Base class of a task output an executor kept where it was computed because nothing
    in the driver needed it during the run.

    Reading ``result.tasks[name].output`` calls :meth:`fetch` once and caches the value;
    :meth:`~._results.TaskResults.outputs` fetches several through :meth:`fetch_many` (one
    batched call per kind). During the run, hooks see this object itself. Subclasses set
    ``task`` and raise :class:`~.exceptions.OutputUnavailableError` naming it when the value
    is gone (its cluster was closed with the manager).
    """

    __slots__ = ()

    task: str

    def fetch(self) -> Any:
        """The value, fetched to the driver."""
        raise NotImplementedError

    @classmethod
    def fetch_many(cls, items: Sequence[DeferredOutput]) -> list[Any]:
        """The values of ``items`` (all of this class), in order; override to batch."""
        return [item.fetch() for item in items]


def outputs_read_in_driver(run: RunContext) -> frozenset[str]:
    """Names of the tasks whose output the core reads in the driver during ``run``, whatever
    the plugins: the final results (sinks); the inputs of a ``condition``, of a merge
    strategy other than ``all_success``, of a ``freeze_inputs`` copy, of an input contract,
    of a ``fallback`` and of a cached task (its key hashes them); the output of a task with
    an output contract or a cache entry. An executor that can leave outputs where they were
    computed fetches these (and every output when ``OUTPUTS_IN_DRIVER`` is true)."""
    config = run.config
    frozen = bool(config.get("freeze_inputs", False))
    section = config.get("cache") or {}
    cached_by_default = bool(section.get("enabled", False))
    has_successor: set[str] = set()
    need: set[str] = set()
    for t in run.tasks:
        deps = t.depends_on
        has_successor.update(deps)
        opts = t.options
        cached = bool(opts.get("cache", cached_by_default))
        if (
            t.condition is not None
            or t.merge_strategy != "all_success"
            or opts.get("freeze_inputs", frozen)
            or "input_contract" in opts
            or "fallback" in opts
            or cached
        ):
            need.update(deps)
        if cached or "contract" in opts:
            need.add(t.name)
    need.update(t.name for t in run.tasks if t.name not in has_successor)
    return frozenset(need)
