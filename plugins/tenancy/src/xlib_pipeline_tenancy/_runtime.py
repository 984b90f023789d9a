"""The tenancy plugin's per-run and per-task hooks, registered only once tenancy is in use."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import attrs

from xlib_pipeline import ConfigError, Isolation, RunContext, SecurityError, StashKey, hookimpl

from ._policy import denial

if TYPE_CHECKING:  # pragma: no cover
    from ._plugin import TenancyPlugin


@attrs.define
class TenancyRun:
    """What tenancy decided for one run (kept in ``run.stash[TENANCY_RUN]``)."""

    principal: str | None = None
    tenants: frozenset[str] = frozenset()
    isolation: dict[str, Isolation | None] = attrs.Factory(dict)
    runs_taken: list[str] = attrs.Factory(list)
    gated: dict[str, str] = attrs.Factory(dict)  # task name -> tenant holding a task slot
    lock: threading.Lock = attrs.Factory(threading.Lock)


#: This plugin's per-run state.
TENANCY_RUN: StashKey[TenancyRun] = StashKey("tenancy")


class Runtime:
    """The hooks that run per run and per task; registered by :meth:`TenancyPlugin.activate`."""

    def __init__(self, plugin: TenancyPlugin) -> None:
        self.p = plugin

    @hookimpl
    def validate_pipeline(self, pipeline: Any, run: RunContext) -> None:
        p = self.p
        if run.options.get("resource_limits") is not None and (
            run.options.get("isolation_mode") == "none"
        ):
            raise ConfigError(
                f"run of pipeline {run.pipeline_name!r}: resource_limits are enforced in "
                "worker processes, but isolation_mode='none' runs every task in the driver; "
                "drop isolation_mode='none' (limits then apply to every task) or drop "
                "resource_limits",
                key="resource_limits",
            )
        groups = p.tenants_of(run)
        tenants = {t for t in groups if t is not None}
        declared = p.policy.tenants
        if declared:
            unknown = sorted(tenants - set(declared))
            if unknown:
                raise SecurityError(
                    f"pipeline {run.pipeline_name!r} uses tenant(s) {unknown} not declared in "
                    f"tenancy.tenants (declared: {sorted(declared)})"
                )
        if p.access_control != "rbac":
            return
        principal = p.principal_of(run.principal)
        needed = [(p.task_permission, "run")]
        if run.resumed_from:
            needed.append(("read_data", "resume the stored results of"))
        for tenant, names in groups.items():
            for permission, verb in needed:
                if not p.policy.allows(principal, tenant, permission):
                    shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
                    raise denial(
                        p.policy,
                        principal,
                        tenant,
                        permission,
                        f"{verb} task(s) {shown} of pipeline {run.pipeline_name!r}",
                    )

    @hookimpl
    def before_pipeline(self, run: RunContext) -> None:
        p = self.p
        groups = p.tenants_of(run)
        tenants = frozenset(t for t in groups if t is not None)
        state = TenancyRun(principal=run.principal, tenants=tenants)
        given = run.options.get("isolation_mode")
        mode = given or ("tenant" if p.resource_isolation else "none")
        run_limits = run.options.get("resource_limits")
        # An explicit isolation_mode="none" turns isolation off, task options included.
        per_task = given != "none" and any(
            t.options.get("isolate") or t.options.get("resource_limits") for t in run.tasks
        )
        # Run-level limits hold for every task of the run, with or without isolation_mode:
        # a task without a tenant runs in a limited pool of the run's (possibly no) tenant.
        every = run_limits is not None
        from ._plugin import _limits, merge_limits  # the plugin module imports this one

        if mode == "tenant" or per_task or every:
            for task in run.tasks:
                tenant = run.tenant_of(task)
                wanted = every or (
                    per_task
                    and bool(task.options.get("isolate") or task.options.get("resource_limits"))
                )
                if not ((mode == "tenant" and tenant) or wanted):
                    state.isolation[task.name] = None
                    continue
                spec = p.policy.tenants.get(tenant) if tenant else None
                task_limits = task.options.get("resource_limits")
                limits = merge_limits(
                    p.default_limits,
                    spec.limits if spec else None,
                    run_limits,
                    _limits(task_limits) if task_limits is not None else None,
                )
                state.isolation[task.name] = Isolation(
                    executor="processes",
                    pool=p.pool_for(tenant, limits),
                    tenant=tenant,
                    limits=limits,
                )
        gate = p.gate
        if gate is not None and tenants:
            state.runs_taken = gate.acquire_runs(
                tenants, what=f"run {run.run_id} of pipeline {run.pipeline_name!r}"
            )
        run.stash[TENANCY_RUN] = state

    @hookimpl
    def after_pipeline(self, run: RunContext, result: Any) -> None:
        state: TenancyRun | None = run.stash.pop(TENANCY_RUN, None)
        if state is not None and state.runs_taken and self.p.gate is not None:
            self.p.gate.release_runs(state.runs_taken)
            state.runs_taken = []

    @hookimpl
    def isolate(self, task: Any, run: RunContext) -> Isolation | None:
        state: TenancyRun | None = run.stash.get(TENANCY_RUN, None)
        if state is None:
            return None
        return state.isolation.get(task.name)

    @hookimpl
    def before_task(self, task: Any, run: RunContext, inputs: Any) -> None:
        gate = self.p.gate
        if gate is None:
            return
        tenant = run.tenant_of(task)
        state: TenancyRun | None = run.stash.get(TENANCY_RUN, None)
        if tenant is None or state is None:
            return
        gate.acquire_task(tenant)
        with state.lock:
            state.gated[task.name] = tenant

    @hookimpl
    def after_task(self, task: Any, run: RunContext, outcome: Any) -> None:
        state: TenancyRun | None = run.stash.get(TENANCY_RUN, None)
        if state is None or not state.gated:
            return
        with state.lock:
            tenant = state.gated.pop(task.name, None)
        if tenant is not None and self.p.gate is not None:
            self.p.gate.release_task(tenant)
