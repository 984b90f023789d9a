"""xlib-pipeline-audit: an append-only, tamper-evident audit trail for xlib-pipeline.

Turn it on with ``PipelineManager({"audit_logging": True})`` (or an ``audit`` section);
check a trail with :func:`verify` or ``xlib-pipeline audit verify PATH``.
"""

from __future__ import annotations

from ._canonical import GENESIS, canonical, digest, record_hash
from ._head import head_path
from ._plugin import AuditPlugin
from ._recorder import AUDIT_RUN, AuditRun, Recorder
from ._registry import open_trail
from ._segments import SeriesReport
from ._settings import AuditSettings
from ._trail import AuditTrail, AuditTrailError
from ._verify import VerifyReport, read, verify, verify_series

__version__ = "0.1.0"

__all__ = [
    "AUDIT_RUN",
    "GENESIS",
    "AuditPlugin",
    "AuditRun",
    "AuditSettings",
    "AuditTrail",
    "AuditTrailError",
    "Recorder",
    "SeriesReport",
    "VerifyReport",
    "__version__",
    "canonical",
    "digest",
    "head_path",
    "open_trail",
    "read",
    "record_hash",
    "verify",
    "verify_series",
]
