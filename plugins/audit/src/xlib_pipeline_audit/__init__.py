"""xlib-pipeline-audit: an append-only, tamper-evident audit trail for xlib-pipeline.

Turn it on with ``PipelineManager({"audit_logging": True})`` (or an ``audit`` section);
check a trail with :func:`verify` or ``xlib-pipeline audit verify PATH``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xlib_pipeline import lazy_exports

if TYPE_CHECKING:  # pragma: no cover
    from ._canonical import GENESIS, canonical, digest, record_hash
    from ._head import head_path
    from ._plugin import AuditPlugin
    from ._recorder import AUDIT_RUN, AuditRun, Recorder
    from ._registry import open_trail
    from ._segments import SeriesReport
    from ._settings import AuditSettings
    from ._trail import AuditTrail, AuditTrailError
    from ._verify import VerifyReport, read, verify, verify_series

_LAZY = {
    "GENESIS": "._canonical",
    "canonical": "._canonical",
    "digest": "._canonical",
    "record_hash": "._canonical",
    "head_path": "._head",
    "AuditPlugin": "._plugin",
    "AUDIT_RUN": "._recorder",
    "AuditRun": "._recorder",
    "Recorder": "._recorder",
    "open_trail": "._registry",
    "SeriesReport": "._segments",
    "AuditSettings": "._settings",
    "AuditTrail": "._trail",
    "AuditTrailError": "._trail",
    "VerifyReport": "._verify",
    "read": "._verify",
    "verify": "._verify",
    "verify_series": "._verify",
}

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


# Entry points load this package on every PipelineManager(): its submodules (and their
# dependencies) are imported when a name is first used, not before.
if not TYPE_CHECKING:  # mypy sees the names above, and flags a misspelt one
    __getattr__, __dir__ = lazy_exports(__name__, _LAZY)
