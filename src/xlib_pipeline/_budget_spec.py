"""The budget's declarations: task ``resources=``, config ``resources``, compiled per plan.

See :mod:`._budget` for the run-time side (who waits, who starts) and docs/resources.md.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

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
