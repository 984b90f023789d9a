"""Resource-aware scheduling: task ``resources=`` against the manager's ``resources`` budget.

This is scheduling, not isolation: tasks *declare* what they need
(``resources={"cpu": 2, "memory_gb": 8}``) and the scheduler never runs tasks together
whose needs add up to more than the budget (config ``resources``). Operating-system limits
on a worker process are the tenancy plugin's ``resource_limits`` (see docs/resources.md).

The dispatch rule, used by the scheduler and by the simulator of the property tests:

1. Ready tasks that need resources wait in priority order: longest remaining path first
   (the "intelligent" critical-path height), then the larger need (its largest share of
   any one budget), then arrival order.
2. On every event (tasks become ready, tasks end and free their resources) the waiting
   tasks are walked in that order and those that fit in what is free start (backfilling:
   a small task may start ahead of a large one that does not fit yet). The first
   ``WINDOW`` (8) of them are packed by best fit, one critical-path level at a time: of
   the tasks of the highest level, the subset that fits and fills the most of the budget
   (the sum of each task's shares of every resource; ties: the earlier tasks) starts,
   then the next level gets what is left, and so on; the rest are walked first fit.
   A task of a higher level is thus never left waiting for a lower one it could have
   run in place of. Events of one instant (a task ends, the successors it made ready)
   are one walk when handed over together (:meth:`Budget.admit`).
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
#: How many of the waiting tasks, highest priority first, rule 2 packs by best fit.
WINDOW = 8


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

    def __init__(self, spec: BudgetSpec, height: Sequence[int], window: int = WINDOW) -> None:
        self.spec = spec
        self.free = list(spec.capacity)
        self.height = height
        self.window = window
        self.lock = threading.Lock()
        self.waiting: list[tuple[int, float, int, int]] = []  # sorted (key..., seq, task)
        self.bypassed: dict[int, int] = {}
        self.seq = 0
        share: list[float] = []
        weight: list[float] = []
        for row in spec.needs:
            parts = [a / spec.capacity[j] for j, a in row or () if spec.capacity[j] > 0]
            share.append(max(parts, default=0.0))
            weight.append(sum(parts))
        self.share = share
        #: What a task fills: the sum of its shares of every budget (rule 2's best fit).
        self.weight = weight

    def _fits(self, i: int) -> bool:
        free = self.free
        for j, a in self.spec.needs[i] or ():  # noqa: SIM110 (a loop: no generator per call)
            if a > free[j] + 1e-9:
                return False
        return True

    def _take(self, i: int) -> None:
        free = self.free
        for j, a in self.spec.needs[i] or ():
            free[j] -= a

    def _queue(self, i: int) -> None:
        self.seq += 1
        bisect.insort(self.waiting, (-self.height[i], -self.share[i], self.seq, i))

    def request(self, i: int) -> list[int]:
        """Task ``i`` is ready: the tasks that start now (``i`` itself if it may)."""
        with self.lock:
            self._queue(i)
            return self._walk()

    def admit(self, ended: Sequence[int] = (), ready: Sequence[int] = ()) -> list[int]:
        """Tasks that ended and tasks that became ready at the same instant: free what the
        ended ones held, queue the ready ones, then one walk over all (so rule 2 packs
        them together); the tasks that start now."""
        with self.lock:
            free = self.free
            needs = self.spec.needs
            for i in ended:
                for j, a in needs[i] or ():
                    free[j] += a
            for i in ready:
                self._queue(i)
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
        """Rules 2 and 3 of the module docstring, over the waiting list (kept sorted).

        One first-fit pass; a level of the window is repacked by best fit only when one of
        its tasks does not fit but would have in place of the level's earlier picks."""
        order = self.waiting
        if not order:
            return []
        bypassed = self.bypassed
        limit = self.spec.max_bypass
        window = self.window
        picked: list[int] = []  # positions in order
        n = len(order)
        stop = n
        level = 0
        lo = 0  # where the current level of the window starts, in order and in picked
        lo_picked = 0
        pos = 0
        while pos < n:
            entry = order[pos]
            i = entry[3]
            if pos < window and (pos == 0 or entry[0] != level):
                level, lo, lo_picked = entry[0], pos, len(picked)
            if self._fits(i):
                self._take(i)
                picked.append(pos)
                pos += 1
                continue
            if bypassed and bypassed.get(i, 0) >= limit:
                stop = pos  # a reservation: nothing behind it starts
                break
            if pos < window and len(picked) > lo_picked and self._fits_with(i, picked[lo_picked:]):
                hi = pos + 1
                while hi < min(n, window) and order[hi][0] == level:
                    hi += 1
                if not bypassed or all(
                    bypassed.get(order[k][3], 0) < limit for k in range(pos, hi)
                ):
                    self._repack(picked, lo_picked, lo, hi)
                    pos = hi
                    continue
            pos += 1
        if not picked:
            return []
        picked.sort()
        last = picked[-1]
        kept = []
        k = 0
        for p in picked:
            for entry in order[k:p]:  # passed over while a task behind it started
                kept.append(entry)
                if k < stop:
                    i = entry[3]
                    bypassed[i] = bypassed.get(i, 0) + 1
                k += 1
            k = p + 1
        kept.extend(order[last + 1 :])
        self.waiting = kept
        started = [order[p][3] for p in picked]
        if bypassed:
            for i in started:
                bypassed.pop(i, None)
        return started

    def _fits_with(self, i: int, given_back: Sequence[int]) -> bool:
        """Would task ``i`` fit if the tasks at positions ``given_back`` were not taken?"""
        needs = self.spec.needs
        order = self.waiting
        for j, a in needs[i] or ():
            room = self.free[j]
            for k in given_back:
                for j2, a2 in needs[order[k][3]] or ():
                    if j2 == j:
                        room += a2
            if a > room + 1e-9:
                return False
        return True

    def _repack(self, picked: list[int], lo_picked: int, lo: int, hi: int) -> None:
        """Replace the first-fit picks ``picked[lo_picked:]`` of the level ``order[lo:hi]``
        with its best fit (see :meth:`_best_fit`)."""
        order = self.waiting
        needs = self.spec.needs
        free = self.free
        for k in picked[lo_picked:]:
            for j, a in needs[order[k][3]] or ():
                free[j] += a
        del picked[lo_picked:]
        cands = [k for k in range(lo, hi) if self._fits(order[k][3])]
        for k in self._best_fit(order, cands):
            self._take(order[k][3])
            picked.append(k)

    def _best_fit(self, order: list[tuple[int, float, int, int]], cands: list[int]) -> list[int]:
        """The subset of ``cands`` (positions) that fits what is free and has the largest
        summed weight; among equal ones the one taking the earliest tasks (exhaustive,
        depth first, including a task before excluding it; ``len(cands) <= window``)."""
        needs = self.spec.needs
        weight = self.weight
        rows = [needs[order[k][3]] or () for k in cands]
        ws = [weight[order[k][3]] for k in cands]
        rest = [0.0] * (len(cands) + 1)
        for x in range(len(cands) - 1, -1, -1):
            rest[x] = rest[x + 1] + ws[x]
        free = list(self.free)
        best: list[Any] = [-1.0, []]
        chosen: list[int] = []

        def search(x: int, got: float) -> None:
            if got + rest[x] <= best[0] + 1e-9:
                return
            if x == len(cands):
                best[0] = got
                best[1] = list(chosen)
                return
            row = rows[x]
            if all(a <= free[j] + 1e-9 for j, a in row):
                for j, a in row:
                    free[j] -= a
                chosen.append(cands[x])
                search(x + 1, got + ws[x])
                chosen.pop()
                for j, a in row:
                    free[j] += a
            search(x + 1, got)

        search(0, 0.0)
        chosen_list: list[int] = best[1]
        return chosen_list

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
        """Return ``count`` shares taken with :meth:`take`; waiting tasks that fit start
        (one walk over all the shares given back, so they are packed together)."""
        i = self._index[task]
        if self._budget.spec.needs[i] is None or count <= 0:
            return
        self._granted(self._budget.admit([i] * count))


#: The run's :class:`ResourceSlots` (present when the run schedules against a budget).
RESOURCE_SLOTS: StashKey[ResourceSlots] = StashKey("resource_slots")
