"""Resource-aware scheduling: task ``resources=`` against the manager's ``resources`` budget.

This is scheduling, not isolation: tasks *declare* what they need
(``resources={"cpu": 2, "memory_gb": 8}``) and the scheduler never runs tasks together
whose needs add up to more than the budget (config ``resources``). Operating-system limits
on a worker process are the tenancy plugin's ``resource_limits`` (see docs/resources.md).

The dispatch rule, used by the scheduler and by the simulator of the property tests:

1. Ready tasks that need resources wait in priority order: longest remaining path first
   (the "intelligent" critical-path height), then the larger need (its largest share of
   any one budget), then arrival order.
2. On every event (a task becomes ready, a task ends and frees its resources) the waiting
   tasks are walked in that order and every one that fits in what is free starts
   (backfilling: a small task may start ahead of a large one that does not fit yet).
3. No starvation: a waiting task that did not fit while a task behind it started is
   *bypassed*. Once it was bypassed ``max_bypass`` times, it holds a reservation: the walk
   stops at it, so nothing behind it starts before it does. It starts once the tasks
   already running have freed enough, since every task fits in the whole budget (checked
   before the run).
"""

from __future__ import annotations

import bisect
import math
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from ._records import StashKey
from .exceptions import ResourceError

#: Budget keys with a machine default: ``cpu`` (os.cpu_count()) and ``memory_gb``
#: (the memory available when the manager starts).
DEFAULTED = ("cpu", "memory_gb")
DEFAULT_MAX_BYPASS = 4


def _amount(name: str, value: Any, what: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{what} {name!r} must be a finite number >= 0, got {value!r}")
    return float(value)


def _name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what} names must be non-empty strings, got {name!r}")
    return name


def needs_option(value: Any) -> dict[str, float]:
    """Convert the task option ``resources=``: a mapping of resource name to amount."""
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a mapping like {{'cpu': 2, 'memory_gb': 8}}, got {value!r}")
    return {_name(k, "resource"): _amount(k, v, "resource") for k, v in value.items()}


def budget_section(value: Any) -> dict[str, Any]:
    """Convert config ``resources``: amounts by resource name, plus ``max_bypass``."""
    if not isinstance(value, Mapping):
        raise ValueError(
            f"expected a mapping like {{'cpu': 8, 'memory_gb': 32, 'db_connections': 4}}, "
            f"got {value!r}"
        )
    out: dict[str, Any] = {}
    for k, v in value.items():
        if k == "max_bypass":
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"'max_bypass' must be an integer >= 0, got {v!r}")
            out[k] = v
        else:
            out[_name(k, "budget")] = _amount(k, v, "budget of")
    return out


def machine_defaults() -> dict[str, float]:
    """``cpu``: os.cpu_count(); ``memory_gb``: available memory, in GiB."""
    import psutil

    return {
        "cpu": float(os.cpu_count() or 1),
        "memory_gb": psutil.virtual_memory().available / 1024**3,
    }


@attrs.frozen(kw_only=True)
class BudgetSpec:
    """The compiled budget of a plan: resource names, capacities and each task's needs."""

    names: tuple[str, ...]
    capacity: tuple[float, ...]
    #: Per task: ``((resource index, amount), ...)``, or ``None`` when it needs nothing.
    needs: tuple[tuple[tuple[int, float], ...] | None, ...]
    max_bypass: int = DEFAULT_MAX_BYPASS

    def describe(self) -> dict[str, float]:
        """The budget as a mapping."""
        return dict(zip(self.names, self.capacity))


def compile_budget(
    task_names: Sequence[str],
    task_needs: Sequence[Mapping[str, float] | None],
    section: Mapping[str, Any] | None,
    defaults: Mapping[str, float] | None = None,
) -> BudgetSpec:
    """Check every task's needs against the budget before the run: a task needing more of a
    resource than the whole budget, or a resource the budget does not have, is a
    :class:`ResourceError` naming the task, the resource and the budget."""
    budget: dict[str, float] = dict(defaults if defaults is not None else machine_defaults())
    max_bypass = DEFAULT_MAX_BYPASS
    for k, v in (section or {}).items():
        if k == "max_bypass":
            max_bypass = int(v)
        else:
            budget[k] = float(v)
    names = tuple(budget)
    index = {n: i for i, n in enumerate(names)}
    cap = tuple(budget[n] for n in names)
    compiled: list[tuple[tuple[int, float], ...] | None] = []
    for name, needs in zip(task_names, task_needs):
        if not needs:
            compiled.append(None)
            continue
        row: list[tuple[int, float]] = []
        for res, amount in needs.items():
            j = index.get(res)
            if j is None:
                raise ResourceError(
                    f"task {name!r} needs resource {res!r}, which the budget does not have "
                    f"(budget: {_fmt(budget)}); add it to config 'resources', e.g. "
                    f"{{'resources': {{{res!r}: {amount:g}}}}}"
                )
            if amount > cap[j]:
                raise ResourceError(
                    f"task {name!r} needs {res}={amount:g}, more than the whole budget "
                    f"{res}={cap[j]:g}; it could never run (raise config 'resources.{res}' "
                    "or lower the task's resources=)"
                )
            if amount > 0:
                row.append((j, amount))
        compiled.append(tuple(row) or None)
    return BudgetSpec(names=names, capacity=cap, needs=tuple(compiled), max_bypass=max_bypass)


def _fmt(budget: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in budget.items())


class Budget:
    """The run-time state of a budget: what is in use and who waits (thread-safe).

    ``request`` and ``release`` return the tasks that start now; the caller runs them.
    """

    def __init__(self, spec: BudgetSpec, height: Sequence[int]) -> None:
        self.spec = spec
        self.free = list(spec.capacity)
        self.height = height
        self.lock = threading.Lock()
        self.waiting: list[tuple[int, float, int, int]] = []  # heap of (key..., seq, task)
        self.bypassed: dict[int, int] = {}
        self.seq = 0
        share = []
        for row in spec.needs:
            if row is None:
                share.append(0.0)
            else:
                share.append(max(a / spec.capacity[j] for j, a in row if spec.capacity[j] > 0))
        self.share = share

    def _fits(self, i: int) -> bool:
        free = self.free
        return all(a <= free[j] + 1e-9 for j, a in self.spec.needs[i] or ())

    def _take(self, i: int) -> None:
        free = self.free
        for j, a in self.spec.needs[i] or ():
            free[j] -= a

    def request(self, i: int) -> list[int]:
        """Task ``i`` is ready: the tasks that start now (``i`` itself if it may)."""
        with self.lock:
            self.seq += 1
            bisect.insort(self.waiting, (-self.height[i], -self.share[i], self.seq, i))
            return self._walk()

    def claim(self, i: int) -> bool:
        """One more share of task ``i``'s needs (a ``map_over`` item beyond the first), taken
        only when it fits now and no task waits: extra shares never delay a waiting task."""
        with self.lock:
            if self.waiting or not self._fits(i):
                return False
            self._take(i)
            return True

    def release(self, i: int) -> list[int]:
        """Task ``i`` ended: free its resources; the tasks that start now."""
        with self.lock:
            free = self.free
            for j, a in self.spec.needs[i] or ():
                free[j] += a
            return self._walk()

    def _walk(self) -> list[int]:
        """Rule 2 and 3 of the module docstring, over the waiting list (kept sorted)."""
        order = self.waiting
        if not order:
            return []
        started: list[int] = []
        passed: list[tuple[int, int]] = []  # (position, task)
        kept: list[tuple[int, float, int, int]] = []
        limit = self.spec.max_bypass
        last_start = -1
        stop = len(order)
        for pos, entry in enumerate(order):
            i = entry[3]
            if self._fits(i):
                self._take(i)
                started.append(i)
                last_start = pos
                continue
            kept.append(entry)
            passed.append((pos, i))
            if self.bypassed.get(i, 0) >= limit:
                stop = pos + 1  # a reservation: nothing behind it starts
                break
        if not started:
            return []
        kept.extend(order[stop:])
        self.waiting = kept
        bypassed = self.bypassed
        for pos, i in passed:
            if pos < last_start:  # passed over while a task behind it started
                bypassed[i] = bypassed.get(i, 0) + 1
        for i in started:
            bypassed.pop(i, None)
        return started

    @property
    def in_use(self) -> dict[str, float]:
        """What running tasks hold, by resource."""
        with self.lock:
            return {n: c - f for n, c, f in zip(self.spec.names, self.spec.capacity, self.free)}


class ResourceSlots:
    """Extra shares of a running task's ``resources=`` from the run's budget.

    ``run.stash[RESOURCE_SLOTS]`` during a run with a budget: a task that runs several
    items at once (``map_over``) holds one share of its needs while it runs, and takes one
    more per item beyond the first with :meth:`take`, so the items in flight never need
    more than the budget. Give them back with :meth:`give_back` when the items ended.
    """

    def __init__(
        self, budget: Budget, index: Mapping[str, int], granted: Callable[[list[int]], Any]
    ) -> None:
        self._budget = budget
        self._index = index
        self._granted = granted

    def take(self, task: str, most: int) -> int:
        """Up to ``most`` extra shares of ``task``'s needs that fit now (all ``most`` for a
        task that declares no ``resources=``: the budget does not bound it)."""
        i = self._index[task]
        if self._budget.spec.needs[i] is None:
            return most
        got = 0
        while got < most and self._budget.claim(i):
            got += 1
        return got

    def give_back(self, task: str, count: int) -> None:
        """Return ``count`` shares taken with :meth:`take`; waiting tasks that fit start."""
        i = self._index[task]
        if self._budget.spec.needs[i] is None:
            return
        for _ in range(count):
            self._granted(self._budget.release(i))


#: The run's :class:`ResourceSlots` (present when the run schedules against a budget).
RESOURCE_SLOTS: StashKey[ResourceSlots] = StashKey("resource_slots")
