"""xlib-pipeline-tenancy: tenants, RBAC, per-tenant quotas and tenant-isolated workers.

See docs/plugins/tenancy.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xlib_pipeline import lazy_exports

if TYPE_CHECKING:  # pragma: no cover
    from ._gate import QuotaExceededError, TenantGate
    from ._plugin import ISOLATION_MODES, TenancyPlugin, available_cores, merge_limits
    from ._policy import BUILTIN_ROLES, PERMISSIONS, Policy, TenantSpec, os_user, read_policy_file
    from ._runtime import TENANCY_RUN, TenancyRun

_LAZY = {
    "QuotaExceededError": "._gate",
    "TenantGate": "._gate",
    "ISOLATION_MODES": "._plugin",
    "TenancyPlugin": "._plugin",
    "available_cores": "._plugin",
    "merge_limits": "._plugin",
    "BUILTIN_ROLES": "._policy",
    "PERMISSIONS": "._policy",
    "Policy": "._policy",
    "TenantSpec": "._policy",
    "os_user": "._policy",
    "read_policy_file": "._policy",
    "TENANCY_RUN": "._runtime",
    "TenancyRun": "._runtime",
}

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


# Entry points load this package on every PipelineManager(): its submodules (and their
# dependencies) are imported when a name is first used, not before.
if not TYPE_CHECKING:  # mypy sees the names above, and flags a misspelt one
    __getattr__, __dir__ = lazy_exports(__name__, _LAZY)
