"""xlib-pipeline-audit: an append-only, tamper-evident audit trail for xlib-pipeline.

Turn it on with ``PipelineManager({"audit_logging": True})`` (or an ``audit`` section);
check a trail with :func:`verify` or ``xlib-pipeline audit verify PATH``.
"""

from __future__ import annotations

from ._canonical import GENESIS, canonical, digest, record_hash
from ._head import head_path
from ._plugin import AuditPlugin, AuditSettings
from ._registry import open_trail
from ._trail import AuditTrail, AuditTrailError
from ._verify import VerifyReport, read, verify

__version__ = "0.1.0"

__all__ = [
    "GENESIS",
    "AuditPlugin",
    "AuditSettings",
    "AuditTrail",
    "AuditTrailError",
    "VerifyReport",
    "__version__",
    "canonical",
    "digest",
    "head_path",
    "open_trail",
    "read",
    "record_hash",
    "verify",
]
