"""Which per-task features a plan uses (fallbacks, contracts, resource budgets, the result
cache), compiled once per plan and manager config by :func:`compile_features`, and the
stash keys through which a run tells plugins what they did. ``None`` from
:func:`compile_features` means the plain scheduler runs the plan and none of them costs a
task anything."""

from __future__ import annotations

from typing import Any

import attrs

from ._budget import BudgetSpec, compile_budget
from ._cache import CachePolicy
from ._contracts import TaskContracts, compile_task_contracts
from ._fallback import Fallback, compile_fallbacks
from ._graph import Plan
from ._run_keys import CACHE_HITS as CACHE_HITS
from ._run_keys import FALLBACKS as FALLBACKS
from ._run_keys import FallbackUsed as FallbackUsed

# The stash keys live in a module of their own: plugins import them on every manager, and
# this module's imports (the cache, contracts, fallbacks, the graph) are the engine's.


@attrs.frozen(kw_only=True, eq=False)
class Features:
    """What a plan's tasks use, compiled once per plan and manager config."""

    #: The plan the run schedules: fallback tasks are neither roots nor sinks.
    plan: Plan
    fallbacks: tuple[Fallback | None, ...] | None = None
    #: Fallback task index -> the task it stands in for, and the reverse.
    targets: dict[int, int] = attrs.field(factory=dict)
    primaries: dict[int, int] = attrs.field(factory=dict)
    contracts: tuple[TaskContracts | None, ...] | None = None
    budget: BudgetSpec | None = None
    cache: tuple[CachePolicy | None, ...] | None = None


def compile_features(p: Plan, config: Any) -> Features | None:
    """The features ``p`` uses under ``config``, or ``None`` when it uses none (the plain
    scheduler runs). Raises :class:`~.exceptions.DefinitionError` for a malformed one."""
    if not p.has_options and not _cached_by_default(config):
        return None  # no task option, no cache by default: nothing to compile
    fallbacks: tuple[Fallback | None, ...] | None = None
    targets: dict[int, int] = {}
    if any("fallback" in t.options for t in p.tasks):
        fallbacks, targets = compile_fallbacks(p)
        if not any(f is not None for f in fallbacks):
            fallbacks = None
    contracts: tuple[TaskContracts | None, ...] | None = None
    if any("contract" in t.options or "input_contract" in t.options for t in p.tasks):
        contracts = tuple(compile_task_contracts(t) for t in p.tasks)
    budget: BudgetSpec | None = None
    if any(t.options.get("resources") for t in p.tasks):
        budget = compile_budget(
            p.names,
            [t.options.get("resources") for t in p.tasks],
            config.get("resources"),
        )
    cache = compile_cache(p, config)
    if fallbacks is None and contracts is None and budget is None and cache is None:
        return None
    plan = p
    if targets:
        plan = attrs.evolve(
            p,
            roots=tuple(r for r in p.roots if r not in targets),
            sinks=tuple(s for s in p.sinks if s not in targets),
        )
    return Features(
        plan=plan,
        fallbacks=fallbacks,
        targets=targets,
        primaries={i: j for j, i in targets.items()},
        contracts=contracts,
        budget=budget,
        cache=cache,
    )


def _cached_by_default(config: Any) -> bool:
    """Config ``cache.enabled``: every task cached unless its ``cache`` option says no."""
    return bool((config.get("cache") or {}).get("enabled", False))


def compile_cache(p: Plan, config: Any) -> tuple[CachePolicy | None, ...] | None:
    """Each task's :class:`CachePolicy` (``None``: not cached), or ``None`` for none."""
    from ._cache import function_fingerprint

    on_by_default = _cached_by_default(config)
    default_ttl = (config.get("cache") or {}).get("default_ttl")
    out: list[CachePolicy | None] = []
    for t in p.tasks:
        if not t.options.get("cache", on_by_default):
            out.append(None)
            continue
        out.append(
            CachePolicy(
                ttl=t.options.get("cache_ttl", default_ttl),
                version=str(t.options.get("cache_version", "")),
                key_fn=t.options.get("cache_key"),
                code=function_fingerprint(t.fn),
            )
        )
    return tuple(out) if any(c is not None for c in out) else None
