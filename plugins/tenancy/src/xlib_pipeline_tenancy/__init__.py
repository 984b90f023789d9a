"""xlib-pipeline-tenancy: tenants, RBAC, per-tenant quotas and tenant-isolated workers.

See docs/plugins/tenancy.md.
"""

from __future__ import annotations

from ._gate import QuotaExceededError, TenantGate
from ._plugin import ISOLATION_MODES, TenancyPlugin, available_cores, merge_limits
from ._policy import BUILTIN_ROLES, PERMISSIONS, Policy, TenantSpec, os_user, read_policy_file
from ._runtime import TENANCY_RUN, TenancyRun

__version__ = "0.1.0"

__all__ = [
    "BUILTIN_ROLES",
    "ISOLATION_MODES",
    "PERMISSIONS",
    "TENANCY_RUN",
    "Policy",
    "QuotaExceededError",
    "TenancyPlugin",
    "TenancyRun",
    "TenantGate",
    "TenantSpec",
    "__version__",
    "available_cores",
    "merge_limits",
    "os_user",
    "read_policy_file",
]
