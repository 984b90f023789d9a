"""The tenancy plugin: RBAC before a run, per-tenant quotas, tenant-isolated worker pools.

The per-run and per-task hooks live on a separate runtime object, registered by
``configure`` when the config turns tenancy on, or by ``prepare_run`` when a run or its
tasks ask for isolation (``isolation_mode=``, ``pm.isolate_resources``, ``isolate=``), so a
manager that never uses tenancy runs exactly as the bare core.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from xlib_pipeline import (
    CliCommand,
    ConfigError,
    ConfigKey,
    ManagerDecorator,
    ResourceLimits,
    RunContext,
    RunOption,
    TaskOption,
    boolean,
    check_tenant_id,
    hookimpl,
    one_of,
    with_options,
)

if TYPE_CHECKING:  # pragma: no cover
    from ._gate import TenantGate
    from ._policy import Policy, TenantSpec
    from ._runtime import Runtime

# The entry point loads this module on every PipelineManager(): the policy (attrs classes),
# gate and runtime modules are imported when tenancy is configured or used.

ISOLATION_MODES = ("tenant", "none")
# --- converters ---------------------------------------------------------------------------------


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


class TenancyPlugin:
    """Tenants, RBAC, quotas and tenant isolation (see docs/plugins/tenancy.md)."""

    name = "tenancy"

    def __init__(self) -> None:
        self.manager: Any = None
        self._policy: Policy | None = None
        self.access_control = "none"
        self.multi_tenant = False
        self.resource_isolation = False
        self.default_principal: str | None = None
        self.task_permission = "process_data"
        self.default_limits: ResourceLimits | None = None
        self.gate: TenantGate | None = None
        self._runtime: Runtime | None = None
        self._lock = threading.Lock()
        self._plans: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], dict[Any, Any]]] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def policy(self) -> Policy:
        """Tenants, roles and bindings (an empty policy when none is configured)."""
        found = self._policy
        if found is None:
            from ._policy import Policy

            found = self._policy = Policy()
        return found

    @policy.setter
    def policy(self, value: Policy) -> None:
        self._policy = value

    # -- collectors --------------------------------------------------------------------------

    @hookimpl
    def register_config_keys(self) -> Iterable[ConfigKey]:
        def tenants(v: Mapping[str, Any]) -> None:
            from ._policy import TenantSpec

            for name, spec in v.items():
                TenantSpec.parse(str(name), spec)

        def roles(v: Mapping[str, Any]) -> None:
            from ._policy import Policy

            Policy.parse({"roles": v})

        return (
            ConfigKey(name="multi_tenant", convert=boolean, default=False, doc="Turn tenancy on."),
            ConfigKey(
                name="resource_isolation",
                convert=boolean,
                default=False,
                doc="Run tasks that have a tenant in that tenant's worker processes by default.",
            ),
            ConfigKey(
                name="security.access_control",
                convert=one_of("rbac", "none"),
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
                convert=one_of("wait", "refuse"),
                default="wait",
                doc="A run over its tenant's max_concurrent_runs waits, or is refused.",
            ),
            ConfigKey(
                name="tenancy.fair_share",
                convert=boolean,
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
                convert=boolean,
                doc="Run this task in its tenant's worker processes.",
            ),
            TaskOption(
                name="resource_limits",
                convert=_limits,
                doc="Limits of this task's worker: {cpu_cores, memory_gb, wall_seconds}.",
            ),
        )

    @hookimpl
    def register_run_options(self) -> Iterable[RunOption]:
        return (
            RunOption(
                name="isolation_mode",
                convert=one_of(*ISOLATION_MODES),
                doc="'tenant': each tenant's tasks run in its own worker processes; 'none'.",
            ),
            RunOption(
                name="resource_limits",
                convert=_limits,
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
        return (
            CliCommand(
                name="tenants",
                help="inspect tenants, roles and bindings; check a principal's permission",
                add_arguments=_cli_arguments,
                run=_cli_run,
            ),
        )

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
        self._policy = None
        if config.get("tenancy.policy_file"):
            from ._policy import Policy, read_policy_file

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
        if inline or base is not None:
            from ._policy import Policy

            try:
                self.policy = Policy.parse(inline, base=base)
            except ValueError as exc:
                raise ConfigError(f"tenancy: {exc}", key="tenancy") from exc
        fair = config.get("tenancy.fair_share")
        if fair is None:
            fair = self.multi_tenant
        default_tasks = config.get("tenancy.max_concurrent_tasks")
        default_runs = config.get("tenancy.max_concurrent_runs")
        tenants: Mapping[str, TenantSpec] = self._policy.tenants if self._policy else {}
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
                return None if default_tasks is None else int(default_tasks)

            def run_cap(tenant: str) -> int | None:
                spec = tenants.get(tenant)
                if spec is not None and spec.max_concurrent_runs is not None:
                    return spec.max_concurrent_runs
                return None if default_runs is None else int(default_runs)

            from ._gate import TenantGate

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
            from ._runtime import Runtime

            runtime = Runtime(self)
            self.manager.register(runtime, name="tenancy.runtime")
            self._runtime = runtime

    @hookimpl
    def prepare_run(
        self, manager: Any, pipeline: Any, tasks: tuple[Any, ...], options: Mapping[str, Any]
    ) -> None:
        """Isolation asked by a run option or a task option turns the runtime on."""
        if self._runtime is not None:
            return
        if (
            "isolation_mode" in options
            or "resource_limits" in options
            or any("isolate" in t.options or "resource_limits" in t.options for t in tasks)
        ):
            self.activate()

    @hookimpl
    def resolve_principal(self, principal: str | None, config: Any) -> str | None:
        """Under RBAC the principal is the one given, else the configured default, else the
        OS user; without access control nothing is resolved."""
        if self.access_control != "rbac":
            return None
        return self.principal_of(principal)

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

        def decorator(f: Callable[..., Any]) -> Callable[..., Any]:
            return with_options(f, options)

        return decorator(fn) if fn is not None else decorator

    # -- decisions ---------------------------------------------------------------------------

    def principal_of(self, given: str | None) -> str:
        """The effective principal: the one given, else the configured default, else OS user."""
        if given or self.default_principal:
            return given or self.default_principal  # type: ignore[return-value]
        from ._policy import os_user

        return os_user()

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
        """The run's tasks grouped by tenant (cached per pipeline version and run tenant)."""
        cached = self._plans.get(run.pipeline)
        if cached is not None and cached[0] is run.tasks:
            found: dict[str | None, tuple[str, ...]] | None = cached[1].get(run.tenant_id)
            if found is not None:
                return found
        groups: dict[str | None, list[str]] = {}
        for task in run.tasks:
            groups.setdefault(run.tenant_of(task), []).append(task.name)
        out = {k: tuple(v) for k, v in groups.items()}
        with self._lock:
            entry = self._plans.get(run.pipeline)
            if entry is None or entry[0] is not run.tasks:
                entry = self._plans[run.pipeline] = (run.tasks, {})
            entry[1][run.tenant_id] = out
        return out

    def pool_for(self, tenant: str | None, limits: ResourceLimits) -> tuple[Any, ...]:
        """The worker-pool key of a tenant: the tuple ``("tenant", tenant, limits)``.

        Structured, never a joined string: no tenant id can name another tenant's pool.
        (The process executor adds the tenant and limits to its own key as well.)
        """
        return ("tenant", tenant, limits)


def _cli_arguments(parser: Any) -> None:
    """The command's arguments (its module is imported when the command is chosen)."""
    from ._cli import _add_arguments

    _add_arguments(parser)


def _cli_run(args: Any) -> int:
    from ._cli import _run

    return int(_run(args))
