"""The tenancy plugin: RBAC before a run, per-tenant quotas, tenant-isolated worker pools.

The per-run and per-task hooks live on a separate runtime object that is registered only
once tenancy is in use (configured, or ``isolation_mode=``/``pm.isolate_resources``/task
options used), so a manager that never uses tenancy runs exactly as the bare core.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from xlib_pipeline import (
    CliCommand,
    ConfigError,
    ConfigKey,
    Isolation,
    ManagerDecorator,
    ResourceLimits,
    RunContext,
    RunOption,
    SecurityError,
    TaskOption,
    boolean,
    check_tenant_id,
    hookimpl,
    one_of,
    with_options,
)

from ._gate import TenantGate
from ._policy import Policy, TenantSpec, denial, os_user, read_policy_file

ISOLATION_MODES = ("tenant", "none")
# --- converters ---------------------------------------------------------------------------------


_bool = boolean


_choice = one_of


def _positive(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a positive integer, got {value!r}")
    return value


def _mapping(check: Callable[[Mapping[str, Any]], Any]) -> Callable[[Any], dict[str, Any]]:
    def convert(value: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise ValueError(f"expected a mapping, got {value!r}")
        check(value)
        return dict(value)

    return convert


def _limits(value: Any) -> ResourceLimits:
    if isinstance(value, ResourceLimits):
        return value
    if value is not None and not isinstance(value, Mapping):
        raise ValueError(
            f"expected a mapping like {{'cpu_cores': 2, 'memory_gb': 4}}, got {value!r}"
        )
    return ResourceLimits.from_mapping(value)


def _str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def merge_limits(*layers: ResourceLimits | None) -> ResourceLimits:
    """Later layers override earlier ones field by field; cores are clamped to the machine."""
    mem = cores = wall = None
    for layer in layers:
        if layer is None:
            continue
        mem = layer.memory_bytes if layer.memory_bytes is not None else mem
        cores = layer.cpu_cores if layer.cpu_cores is not None else cores
        wall = layer.wall_seconds if layer.wall_seconds is not None else wall
    if cores is not None:
        cores = max(1, min(cores, available_cores()))
    return ResourceLimits(memory_bytes=mem, cpu_cores=cores, wall_seconds=wall)


# --- per-run state ------------------------------------------------------------------------------


@attrs.define
class RunState:
    """What tenancy decided for one run (kept in ``run.stash["tenancy"]``)."""

    principal: str | None = None
    tenants: frozenset[str] = frozenset()
    isolation: dict[str, Isolation | None] = attrs.Factory(dict)
    runs_taken: list[str] = attrs.Factory(list)
    gated: dict[str, str] = attrs.Factory(dict)  # task name -> tenant holding a task slot
    lock: threading.Lock = attrs.Factory(threading.Lock)


class TenancyPlugin:
    """Tenants, RBAC, quotas and tenant isolation (see docs/plugins/tenancy.md)."""

    name = "tenancy"

    def __init__(self) -> None:
        self.manager: Any = None
        self.policy = Policy()
        self.access_control = "none"
        self.multi_tenant = False
        self.resource_isolation = False
        self.default_principal: str | None = None
        self.task_permission = "process_data"
        self.default_limits: ResourceLimits | None = None
        self.gate: TenantGate | None = None
        self._runtime: _Runtime | None = None
        self._lock = threading.Lock()
        self._plans: weakref.WeakKeyDictionary[Any, dict[Any, Any]] = weakref.WeakKeyDictionary()

    # -- collectors --------------------------------------------------------------------------

    @hookimpl
    def register_config_keys(self) -> Iterable[ConfigKey]:
        def tenants(v: Mapping[str, Any]) -> None:
            for name, spec in v.items():
                TenantSpec.parse(str(name), spec)

        def roles(v: Mapping[str, Any]) -> None:
            Policy.parse({"roles": v})

        return (
            ConfigKey(name="multi_tenant", convert=_bool, default=False, doc="Turn tenancy on."),
            ConfigKey(
                name="resource_isolation",
                convert=_bool,
                default=False,
                doc="Run tasks that have a tenant in that tenant's worker processes by default.",
            ),
            ConfigKey(
                name="security.access_control",
                convert=_choice("rbac", "none"),
                default="none",
                doc="'rbac' checks the principal's permissions before a run; 'none' does not.",
            ),
            ConfigKey(
                name="tenancy.tenants",
                convert=_mapping(tenants),
                doc="{tenant: {resource_limits, max_concurrent_tasks, max_concurrent_runs}}.",
            ),
            ConfigKey(name="tenancy.roles", convert=_mapping(roles), doc="{role: [permissions]}."),
            ConfigKey(
                name="tenancy.bindings",
                convert=_mapping(lambda v: None),
                doc="{principal: {tenant or '*': [roles]}} (or {principal: [roles]}).",
            ),
            ConfigKey(
                name="tenancy.principals",
                convert=_mapping(lambda v: None),
                doc="Alias of tenancy.bindings.",
            ),
            ConfigKey(
                name="tenancy.policy_file",
                convert=lambda v: os.fspath(v),
                doc="Policy file (.json/.toml/.yaml) with tenants, roles and bindings.",
            ),
            ConfigKey(
                name="tenancy.default_principal",
                convert=_str,
                doc="Principal of runs that name none (default: the OS user).",
            ),
            ConfigKey(
                name="tenancy.task_permission",
                convert=_str,
                default="process_data",
                doc="Permission needed on a task's tenant to run the task.",
            ),
            ConfigKey(
                name="tenancy.max_concurrent_tasks",
                convert=_positive,
                doc="Default cap on tasks of one tenant running at once.",
            ),
            ConfigKey(
                name="tenancy.max_concurrent_runs",
                convert=_positive,
                doc="Default cap on runs of one tenant in progress at once.",
            ),
            ConfigKey(
                name="tenancy.over_quota",
                convert=_choice("wait", "refuse"),
                default="wait",
                doc="A run over its tenant's max_concurrent_runs waits, or is refused.",
            ),
            ConfigKey(
                name="tenancy.fair_share",
                convert=_bool,
                doc="Split max_workers evenly between tenants with runs in progress "
                "(default: on when multi_tenant).",
            ),
            ConfigKey(
                name="tenancy.default_limits",
                convert=_limits,
                doc="Resource limits of isolated tenants that declare none.",
            ),
        )

    @hookimpl
    def register_task_options(self) -> Iterable[TaskOption]:
        return (
            TaskOption(
                name="isolate",
                convert=self._activating(_bool),
                doc="Run this task in its tenant's worker processes.",
            ),
            TaskOption(
                name="resource_limits",
                convert=self._activating(_limits),
                doc="Limits of this task's worker: {cpu_cores, memory_gb, wall_seconds}.",
            ),
        )

    @hookimpl
    def register_run_options(self) -> Iterable[RunOption]:
        return (
            RunOption(
                name="isolation_mode",
                convert=self._activating(_choice(*ISOLATION_MODES)),
                doc="'tenant': each tenant's tasks run in its own worker processes; 'none'.",
            ),
            RunOption(
                name="resource_limits",
                convert=self._activating(_limits),
                doc="Limits of the run's tenant workers: {cpu_cores, memory_gb, wall_seconds}.",
            ),
        )

    @hookimpl
    def register_manager_decorators(self) -> Iterable[ManagerDecorator]:
        return (
            ManagerDecorator(
                name="isolate_resources",
                factory=self._isolate_resources,
                doc="pm.isolate_resources(tenant_id=..., cpu_cores=..., memory_gb=...): run "
                "the task in its tenant's worker processes under limits.",
            ),
        )

    @hookimpl
    def register_cli_commands(self) -> Iterable[CliCommand]:
        from ._cli import tenants_command

        return (tenants_command(),)

    # -- configuration ---------------------------------------------------------------------

    @hookimpl
    def configure(self, manager: Any, config: Any) -> None:
        self.manager = manager
        self.multi_tenant = bool(config.get("multi_tenant"))
        self.resource_isolation = bool(config.get("resource_isolation"))
        self.access_control = config.get("security.access_control") or "none"
        self.default_principal = config.get("tenancy.default_principal")
        self.task_permission = config.get("tenancy.task_permission") or "process_data"
        self.default_limits = config.get("tenancy.default_limits")
        base = None
        if config.get("tenancy.policy_file"):
            try:
                base = Policy.parse(read_policy_file(config.get("tenancy.policy_file")))
            except ValueError as exc:
                if isinstance(exc, ConfigError):
                    raise
                raise ConfigError(f"tenancy.policy_file: {exc}", key="tenancy.policy_file") from exc
        inline = {
            k: config.get(f"tenancy.{k}")
            for k in ("tenants", "roles", "bindings", "principals")
            if config.get(f"tenancy.{k}") is not None
        }
        try:
            self.policy = Policy.parse(inline, base=base)
        except ValueError as exc:
            raise ConfigError(f"tenancy: {exc}", key="tenancy") from exc
        fair = config.get("tenancy.fair_share")
        if fair is None:
            fair = self.multi_tenant
        default_tasks = config.get("tenancy.max_concurrent_tasks")
        default_runs = config.get("tenancy.max_concurrent_runs")
        tenants = self.policy.tenants
        quotas = (
            fair
            or default_tasks is not None
            or default_runs is not None
            or any(
                t.max_concurrent_tasks is not None or t.max_concurrent_runs is not None
                for t in tenants.values()
            )
        )
        if quotas:

            def task_cap(tenant: str) -> int | None:
                spec = tenants.get(tenant)
                if spec is not None and spec.max_concurrent_tasks is not None:
                    return spec.max_concurrent_tasks
                return default_tasks

            def run_cap(tenant: str) -> int | None:
                spec = tenants.get(tenant)
                if spec is not None and spec.max_concurrent_runs is not None:
                    return spec.max_concurrent_runs
                return default_runs

            self.gate = TenantGate(
                task_cap=task_cap,
                run_cap=run_cap,
                slots=manager.config.core.max_workers if fair else None,
                refuse=config.get("tenancy.over_quota") == "refuse",
            )
        in_use = (
            self.multi_tenant
            or self.resource_isolation
            or self.access_control == "rbac"
            or self.gate is not None
            or config.given("tenancy")
        )
        if in_use:
            self.activate()

    @hookimpl
    def check_access(
        self, principal: str | None, permission: str, tenant: str | None, action: str
    ) -> None:
        """Store reads outside a run (``runs show``, ``read_run``) need the permission too."""
        self.authorize_action(principal, permission, action=action, tenant=tenant)

    def activate(self) -> None:
        """Register the per-run and per-task hooks (idempotent, thread-safe)."""
        if self._runtime is not None or self.manager is None:
            return
        with self._lock:
            if self._runtime is not None:
                return
            runtime = _Runtime(self)
            self.manager.register(runtime, name="tenancy.runtime")
            self._runtime = runtime

    def _activating(self, convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def wrapped(value: Any) -> Any:
            out = convert(value)
            self.activate()
            return out

        return wrapped

    def _isolate_resources(
        self,
        manager: Any,
        fn: Callable[..., Any] | None = None,
        *,
        tenant_id: str | None = None,
        resource_limits: Mapping[str, Any] | None = None,
        **limits: Any,
    ) -> Any:
        if tenant_id is not None:
            try:
                check_tenant_id(tenant_id, what="pm.isolate_resources(tenant_id=...)")
            except ValueError as exc:
                raise ConfigError(str(exc), key="tenant_id") from exc
        spec = {**(resource_limits or {}), **limits}
        try:
            ResourceLimits.from_mapping(spec)
        except ValueError as exc:
            raise ConfigError(f"pm.isolate_resources(...): {exc}") from exc
        options: dict[str, Any] = {"isolate": True}
        if tenant_id is not None:
            options["tenant_id"] = tenant_id
        if spec:
            options["resource_limits"] = spec
        self.activate()

        def decorator(f: Callable[..., Any]) -> Callable[..., Any]:
            return with_options(f, options)

        return decorator(fn) if fn is not None else decorator

    # -- decisions ---------------------------------------------------------------------------

    def principal_of(self, given: str | None) -> str:
        """The effective principal: the one given, else the configured default, else OS user."""
        return given or self.default_principal or os_user()

    def authorize(self, principal: str | None, tenant: str | None, permission: str) -> bool:
        """Whether ``principal`` holds ``permission`` on ``tenant`` (always true without RBAC)."""
        if self.access_control != "rbac":
            return True
        return self.policy.allows(self.principal_of(principal), tenant, permission)

    def authorize_action(
        self, principal: str | None, permission: str, *, action: str, tenant: str | None = None
    ) -> None:
        """Raise :class:`SecurityError` when RBAC is on and ``principal`` may not ``action``."""
        if self.access_control != "rbac":
            return
        self.policy.check(self.principal_of(principal), tenant, permission, action=action)

    def tenants_of(self, run: RunContext) -> dict[str | None, tuple[str, ...]]:
        """The run's tasks grouped by tenant (cached per plan and run tenant)."""
        per_plan = self._plans.get(run.plan)
        if per_plan is not None:
            found = per_plan.get(run.tenant_id)
            if found is not None:
                return found
        groups: dict[str | None, list[str]] = {}
        for task in run.plan.tasks:
            groups.setdefault(run.tenant_of(task), []).append(task.name)
        out = {k: tuple(v) for k, v in groups.items()}
        try:
            self._plans.setdefault(run.plan, {})[run.tenant_id] = out
        except TypeError:  # pragma: no cover - plan not weak-referenceable
            pass
        return out

    def pool_for(self, tenant: str | None, limits: ResourceLimits) -> tuple[Any, ...]:
        """The worker-pool key of a tenant: the tuple ``("tenant", tenant, limits)``.

        Structured, never a joined string: no tenant id can name another tenant's pool.
        (The process executor adds the tenant and limits to its own key as well.)
        """
        return ("tenant", tenant, limits)


class _Runtime:
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
        if run.principal is None:
            run.principal = principal
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
        state = RunState(principal=run.principal, tenants=tenants)
        given = run.options.get("isolation_mode")
        mode = given or ("tenant" if p.resource_isolation else "none")
        run_limits = run.options.get("resource_limits")
        # An explicit isolation_mode="none" turns isolation off, task options included.
        per_task = given != "none" and any(
            t.options.get("isolate") or t.options.get("resource_limits") for t in run.plan.tasks
        )
        # Run-level limits hold for every task of the run, with or without isolation_mode:
        # a task without a tenant runs in a limited pool of the run's (possibly no) tenant.
        every = run_limits is not None
        if mode == "tenant" or per_task or every:
            for task in run.plan.tasks:
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
        run.stash["tenancy"] = state

    @hookimpl
    def after_pipeline(self, run: RunContext, result: Any) -> None:
        state: RunState | None = run.stash.pop("tenancy", None)
        if state is not None and state.runs_taken and self.p.gate is not None:
            self.p.gate.release_runs(state.runs_taken)
            state.runs_taken = []

    @hookimpl
    def isolate(self, task: Any, run: RunContext) -> Isolation | None:
        state: RunState | None = run.stash.get("tenancy")
        if state is None:
            return None
        return state.isolation.get(task.name)

    @hookimpl
    def before_task(self, task: Any, run: RunContext, inputs: Any) -> None:
        gate = self.p.gate
        if gate is None:
            return
        tenant = run.tenant_of(task)
        state: RunState | None = run.stash.get("tenancy")
        if tenant is None or state is None:
            return
        gate.acquire_task(tenant)
        with state.lock:
            state.gated[task.name] = tenant

    @hookimpl
    def after_task(self, task: Any, run: RunContext, outcome: Any) -> None:
        state: RunState | None = run.stash.get("tenancy")
        if state is None or not state.gated:
            return
        with state.lock:
            tenant = state.gated.pop(task.name, None)
        if tenant is not None and self.p.gate is not None:
            self.p.gate.release_task(tenant)
