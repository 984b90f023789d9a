"""xlib-pipeline-tenancy: tenants, RBAC, per-tenant quotas and tenant-isolated workers.

See docs/plugins/tenancy.md.
"""

from __future__ import annotations

from ._gate import QuotaExceededError, TenantGate
from ._plugin import ISOLATION_MODES, RunState, TenancyPlugin, available_cores, merge_limits
from ._policy import BUILTIN_ROLES, PERMISSIONS, Policy, TenantSpec, os_user, read_policy_file

__version__ = "0.1.0"

__all__ = [
    "BUILTIN_ROLES",
    "ISOLATION_MODES",
    "PERMISSIONS",
    "Policy",
    "QuotaExceededError",
    "RunState",
    "TenancyPlugin",
    "TenantGate",
    "TenantSpec",
    "__version__",
    "available_cores",
    "merge_limits",
    "os_user",
    "read_policy_file",
]
