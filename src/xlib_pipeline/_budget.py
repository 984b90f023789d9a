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
   run in place of. Events of one instant (tasks that end, the successors they made
   ready) are one walk when handed over together (:meth:`Budget.admit`); the scheduler
   hands each over alone, as it happens (see docs/resources.md).
3. No starvation: a waiting task that did not fit while a task behind it started is
   *bypassed*. Once it was bypassed ``max_bypass`` times, it holds a reservation: the walk
   stops at it, so nothing behind it starts before it does. It starts once the tasks
   already running have freed enough, since every task fits in the whole budget (checked
   before the run).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ._budget_spec import (
    DEFAULT_MAX_BYPASS,
    DEFAULTED,
    BudgetSpec,
    budget_section,
    compile_budget,
    machine_defaults,
    needs_option,
)
from ._records import StashKey

__all__ = [
    "DEFAULTED",
    "DEFAULT_MAX_BYPASS",
    "RESOURCE_SLOTS",
    "WINDOW",
    "Budget",
    "BudgetSpec",
    "ResourceSlots",
    "budget_section",
    "compile_budget",
    "machine_defaults",
    "needs_option",
]

#: How many of the waiting tasks, highest priority first, rule 2 packs by best fit.
WINDOW = 8


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
        #: How many different needs the tasks declare: once that many did not fit in one
        #: walk, nothing further can (what is free only shrinks during a walk).
        self.kinds = len({row for row in spec.needs if row is not None})
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
        free = self.free
        if not order or all(f <= 1e-9 for f in free):
            return []  # every waiting task needs some of a resource: none can start
        bypassed = self.bypassed
        limit = self.spec.max_bypass
        window = self.window
        needs = self.spec.needs
        failed: set[Any] = set()  # needs (after the window) that did not fit: free only shrinks
        kinds = self.kinds
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
            if pos >= window:
                row = needs[i]
                if row not in failed:
                    if self._fits(i):
                        self._take(i)
                        picked.append(pos)
                        if all(f <= 1e-9 for f in free):
                            break
                        pos += 1
                        continue
                    failed.add(row)
                if bypassed and bypassed.get(i, 0) >= limit:
                    stop = pos  # a reservation: nothing behind it starts
                    break
                if len(failed) >= kinds:
                    break  # no task further on can fit
                pos += 1
                continue
            if pos == 0 or entry[0] != level:
                level, lo, lo_picked = entry[0], pos, len(picked)
            if self._fits(i):
                self._take(i)
                picked.append(pos)
                pos += 1
                continue
            if bypassed and bypassed.get(i, 0) >= limit:
                stop = pos  # a reservation: nothing behind it starts
                break
            if len(picked) > lo_picked and self._fits_with(i, picked[lo_picked:]):
                hi = pos + 1
                while hi < min(n, window) and order[hi][0] == level:
                    hi += 1
                # A reserved task of the level (picked above, or still ahead) is never
                # repacked away: rule 3 over rule 2.
                if not bypassed or all(bypassed.get(order[k][3], 0) < limit for k in range(lo, hi)):
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
        before = list(free)
        for k in picked[lo_picked:]:
            for j, a in needs[order[k][3]] or ():
                free[j] += a
        cands = [k for k in range(lo, hi) if self._fits(order[k][3])]
        # No subset uses more of a resource than was free or than the tasks need in all:
        # when first fit used that much of each, it is a best fit already.
        total = [0.0] * len(free)
        for k in cands:
            for j, a in needs[order[k][3]] or ():
                total[j] += a
        if all(f - b >= min(f, t) - 1e-9 for f, b, t in zip(free, before, total)):
            free[:] = before
            return
        del picked[lo_picked:]
        for k in self._best_fit(order, cands):
            self._take(order[k][3])
            picked.append(k)

    def _best_fit(self, order: list[tuple[int, float, int, int]], cands: list[int]) -> list[int]:
        """The subset of ``cands`` (positions) that fits what is free and has the largest
        summed weight; among equal ones the one taking the earliest tasks.

        Exact, by the sums a subset can reach: a subset's weight is a function of its
        summed needs, so for each reachable sum only its preferred subset (the earliest
        tasks: the largest mask, the first candidate being the highest bit) is kept."""
        needs = self.spec.needs
        free = self.free
        cap = self.spec.capacity
        m = len(cands)
        zero = (0.0,) * len(free)
        states: dict[tuple[float, ...], int] = {zero: 0}
        for x, k in enumerate(cands):
            row = needs[order[k][3]] or ()
            bit = 1 << (m - 1 - x)
            for key, mask in list(states.items()):
                new = list(key)
                for j, a in row:
                    new[j] = round(new[j] + a, 9)
                if any(v > f + 1e-9 for v, f in zip(new, free)):
                    continue
                t = tuple(new)
                if states.get(t, -1) < mask | bit:
                    states[t] = mask | bit
        best = max(
            (round(sum(v / c for v, c in zip(key, cap) if c > 0), 9), mask)
            for key, mask in states.items()
        )[1]
        return [k for x, k in enumerate(cands) if best >> (m - 1 - x) & 1]

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
