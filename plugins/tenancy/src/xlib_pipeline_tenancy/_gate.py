"""Per-tenant quotas: concurrent tasks, concurrent runs, and fair sharing between tenants.

One :class:`TenantGate` per manager. Tasks of a tenant wait in ``before_task`` while the
tenant is at its cap; the cap is the tenant's ``max_concurrent_tasks`` (or the default),
and with fair sharing on also ``ceil(slots / tenants with a run in progress)`` so
concurrent tenants split the machine evenly. Runs beyond ``max_concurrent_runs`` wait or
are refused (``tenancy.over_quota``).
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Callable, Iterable

from xlib_pipeline import SecurityError


class QuotaExceededError(SecurityError):
    """A tenant is at its quota and ``tenancy.over_quota`` is ``"refuse"``."""

    def __init__(self, message: str, *, tenant: str, quota: str) -> None:
        super().__init__(message)
        self.tenant = tenant
        self.quota = quota


class TenantGate:
    """Counts running tasks and runs per tenant and makes callers wait for their turn."""

    def __init__(
        self,
        *,
        task_cap: Callable[[str], int | None],
        run_cap: Callable[[str], int | None],
        slots: int | None,
        refuse: bool,
    ) -> None:
        self._task_cap = task_cap
        self._run_cap = run_cap
        self.slots = slots  # None: no fair sharing
        self.refuse = refuse
        self._cond = threading.Condition()
        self.running: Counter[str] = Counter()
        self.runs: Counter[str] = Counter()

    def cap(self, tenant: str) -> int | None:
        """How many tasks ``tenant`` may run right now."""
        cap = self._task_cap(tenant)
        if self.slots is not None:
            active = max(1, sum(1 for n in self.runs.values() if n > 0))
            share = max(1, math.ceil(self.slots / active))
            cap = share if cap is None else min(cap, share)
        return cap

    def acquire_task(self, tenant: str) -> None:
        """Wait until ``tenant`` may start one more task, then count it."""
        with self._cond:
            while True:
                cap = self.cap(tenant)
                if cap is None or self.running[tenant] < cap:
                    self.running[tenant] += 1
                    return
                self._cond.wait()

    def release_task(self, tenant: str) -> None:
        """A task of ``tenant`` ended."""
        with self._cond:
            self.running[tenant] -= 1
            self._cond.notify_all()

    def acquire_runs(self, tenants: Iterable[str], *, what: str) -> list[str]:
        """Count a run for each tenant (sorted, so two runs never deadlock); wait or refuse."""
        taken: list[str] = []
        with self._cond:
            for tenant in sorted(set(tenants)):
                cap = self._run_cap(tenant)
                while cap is not None and self.runs[tenant] >= cap:
                    if self.refuse:
                        for t in taken:
                            self.runs[t] -= 1
                        self._cond.notify_all()
                        raise QuotaExceededError(
                            f"tenant {tenant!r} already has {self.runs[tenant]} run(s) in "
                            f"progress, its quota max_concurrent_runs={cap}; {what} was "
                            "refused (tenancy.over_quota is 'refuse')",
                            tenant=tenant,
                            quota="max_concurrent_runs",
                        )
                    self._cond.wait()
                self.runs[tenant] += 1
                taken.append(tenant)
            self._cond.notify_all()
        return taken

    def release_runs(self, tenants: Iterable[str]) -> None:
        """The runs counted by :meth:`acquire_runs` ended."""
        with self._cond:
            for tenant in tenants:
                self.runs[tenant] -= 1
            self._cond.notify_all()
