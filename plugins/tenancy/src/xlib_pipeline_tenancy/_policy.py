"""Tenants, roles, bindings and the access decision (RBAC).

A *binding* gives a principal roles on a tenant (or on ``"*"``: every tenant and the
tenant-less scope); a *role* is a set of permissions; ``"*"`` as a permission means all.
With no bindings configured the *default policy* applies: the operating-system user
running the process is ``admin`` of every tenant, and nobody else holds anything.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from xlib_pipeline import (
    ConfigError,
    ResourceLimits,
    SecurityError,
    check_tenant_id,
    read_mapping_file,
)

#: Permissions the core and first-party plugins check.
PERMISSIONS = (
    "read_data",  # read stored outputs (resume, runs show)
    "process_data",  # run a tenant's tasks
    "write_results",  # store results
    "manage_keys",  # xlib-pipeline keys rotate
    "read_audit",  # read the audit trail
)
BUILTIN_ROLES: dict[str, frozenset[str]] = {
    "admin": frozenset({"*"}),
    "operator": frozenset({"read_data", "process_data", "write_results"}),
    "analyst": frozenset({"read_data"}),
    "auditor": frozenset({"read_data", "read_audit"}),
    "key_admin": frozenset({"manage_keys"}),
}
ANY = "*"
_TENANT_KEYS = {"resource_limits", "max_concurrent_tasks", "max_concurrent_runs", "description"}


def os_user() -> str:
    """The operating-system user running this process."""
    try:
        return getpass.getuser()
    except Exception:  # pragma: no cover - no user database
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


def _positive(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return value


@attrs.frozen(kw_only=True)
class TenantSpec:
    """A declared tenant: default resource limits and quotas."""

    name: str
    limits: ResourceLimits = attrs.field(factory=ResourceLimits)
    max_concurrent_tasks: int | None = None
    max_concurrent_runs: int | None = None

    @classmethod
    def parse(cls, name: str, value: Any) -> TenantSpec:
        """Build from the config form ``{"resource_limits": {...}, "max_concurrent_tasks": 2}``."""
        check_tenant_id(name, what="tenant name")
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise ValueError(f"tenant {name!r}: expected a mapping, got {value!r}")
        unknown = set(value) - _TENANT_KEYS
        if unknown:
            raise ValueError(
                f"tenant {name!r}: unknown key(s) {sorted(unknown)}; expected some of "
                f"{sorted(_TENANT_KEYS)}"
            )
        return cls(
            name=name,
            limits=ResourceLimits.from_mapping(value.get("resource_limits")),
            max_concurrent_tasks=_positive(
                value.get("max_concurrent_tasks"), f"tenant {name!r} max_concurrent_tasks"
            ),
            max_concurrent_runs=_positive(
                value.get("max_concurrent_runs"), f"tenant {name!r} max_concurrent_runs"
            ),
        )


def _names(value: Any, what: str) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset({value})
    if not isinstance(value, Iterable) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{what}: expected a list of names, got {value!r}")
    return frozenset(value)


@attrs.frozen(kw_only=True)
class Policy:
    """An access policy: tenants, roles and bindings. ``default`` marks the built-in one."""

    tenants: Mapping[str, TenantSpec] = attrs.field(factory=dict)
    roles: Mapping[str, frozenset[str]] = attrs.field(factory=lambda: dict(BUILTIN_ROLES))
    bindings: Mapping[str, Mapping[str, frozenset[str]]] = attrs.field(factory=dict)
    owner: str = attrs.field(factory=os_user)

    @property
    def default(self) -> bool:
        """True when no bindings are configured (the OS user administers every tenant)."""
        return not self.bindings

    @classmethod
    def parse(cls, data: Mapping[str, Any], *, base: Policy | None = None) -> Policy:
        """Build from ``{"tenants": ..., "roles": ..., "bindings"|"principals": ...}``."""
        unknown = set(data) - {"tenants", "roles", "bindings", "principals"}
        if unknown:
            raise ValueError(
                f"unknown policy key(s) {sorted(unknown)}; expected tenants, roles, bindings"
            )
        tenants = dict(base.tenants) if base else {}
        for name, spec in (data.get("tenants") or {}).items():
            tenants[str(name)] = TenantSpec.parse(str(name), spec)
        roles = dict(base.roles) if base else dict(BUILTIN_ROLES)
        for name, perms in (data.get("roles") or {}).items():
            roles[str(name)] = _names(perms, f"role {name!r}")
        bindings: dict[str, dict[str, frozenset[str]]] = (
            {p: dict(s) for p, s in base.bindings.items()} if base else {}
        )
        raw = {**(data.get("principals") or {}), **(data.get("bindings") or {})}
        for principal, scopes in raw.items():
            if not isinstance(scopes, Mapping):  # a plain role list applies to every tenant
                scopes = {ANY: scopes}
            entry = bindings.setdefault(str(principal), {})
            for scope, role_names in scopes.items():
                names = _names(role_names, f"binding of {principal!r} on {scope!r}")
                missing = sorted(names - set(roles))
                if missing:
                    raise ValueError(
                        f"binding of {principal!r} on {scope!r} names unknown role(s) "
                        f"{missing}; known roles: {sorted(roles)}"
                    )
                entry[str(scope)] = names
        return cls(tenants=tenants, roles=roles, bindings=bindings)

    # -- decisions ------------------------------------------------------------------------

    def permissions(self, principal: str, tenant: str | None) -> frozenset[str]:
        """Every permission ``principal`` holds on ``tenant`` (``None``: tenant-less work)."""
        if self.default:
            return frozenset({ANY}) if principal == self.owner else frozenset()
        perms: set[str] = set()
        for who in (principal, ANY):
            scopes = self.bindings.get(who)
            if not scopes:
                continue
            for scope in (tenant or ANY, ANY) if tenant else (ANY,):
                for role in scopes.get(scope, ()):
                    perms |= self.roles.get(role, frozenset())
        return frozenset(perms)

    def allows(self, principal: str, tenant: str | None, permission: str) -> bool:
        """Whether ``principal`` holds ``permission`` on ``tenant``."""
        perms = self.permissions(principal, tenant)
        return ANY in perms or permission in perms

    def check(self, principal: str, tenant: str | None, permission: str, *, action: str) -> None:
        """Raise :class:`SecurityError` unless ``principal`` may do ``action``."""
        if self.allows(principal, tenant, permission):
            return
        raise denial(self, principal, tenant, permission, action)


def denial(
    policy: Policy, principal: str, tenant: str | None, permission: str, action: str
) -> SecurityError:
    """The error for a refused action, with ``principal``/``tenant``/``permission`` set."""
    where = f"tenant {tenant!r}" if tenant else "tenant-less work (scope '*')"
    hint = (
        f"; under the default policy (no tenancy.bindings) only the OS user "
        f"{policy.owner!r} holds permissions"
        if policy.default
        else ""
    )
    err = SecurityError(
        f"access denied: principal {principal!r} lacks permission {permission!r} on "
        f"{where}, needed to {action}{hint}"
    )
    err.principal = principal  # type: ignore[attr-defined]
    err.tenant = tenant  # type: ignore[attr-defined]
    err.permission = permission  # type: ignore[attr-defined]
    return err


def read_policy_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a policy file (.json, .toml, .yaml/.yml) into a mapping."""
    try:
        return read_mapping_file(path)
    except ValueError as exc:
        raise ConfigError(f"tenancy.policy_file: {exc}", key="tenancy.policy_file") from exc
