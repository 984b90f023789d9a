"""xlib-pipeline-evidence: compliance evidence an auditor can verify offline.

At the end of every stored run (config ``evidence``) an in-toto Statement v1 about the run
is signed (DSSE envelope, Ed25519) and kept beside the run store. ``xlib-pipeline evidence
build RUN_ID -o DIR`` turns it into a self-contained pack (an offline ``index.html``, the
facts, the audit and lineage excerpts, a manifest bound by the signature) and
``xlib-pipeline evidence verify DIR --public-key FILE`` checks one with nothing but the
public key. Other plugins contribute their facts through the ``collect_evidence`` hook.
See docs/plugins/evidence.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xlib_pipeline import lazy_exports

if TYPE_CHECKING:  # pragma: no cover
    from ._dsse import PAYLOAD_TYPE, STATEMENT_TYPE, EnvelopeError, key_id, open_envelope, pae, sign
    from ._keys import default_key_file, generate, load_private
    from ._pack import build
    from ._plugin import EvidencePlugin, EvidenceSettings, statement_for
    from ._predicate import PREDICATE_TYPE
    from ._report import (
        Attempt,
        AuditFacts,
        ComplianceReport,
        Flow,
        LineageFacts,
        Subject,
        TaskFacts,
        compliance_report,
    )
    from ._verify import Check, VerifyResult, verify

_LAZY = {
    "PAYLOAD_TYPE": "._dsse",
    "STATEMENT_TYPE": "._dsse",
    "EnvelopeError": "._dsse",
    "key_id": "._dsse",
    "open_envelope": "._dsse",
    "pae": "._dsse",
    "sign": "._dsse",
    "default_key_file": "._keys",
    "generate": "._keys",
    "load_private": "._keys",
    "build": "._pack",
    "EvidencePlugin": "._plugin",
    "EvidenceSettings": "._plugin",
    "statement_for": "._plugin",
    "PREDICATE_TYPE": "._predicate",
    "SCHEMA_FILE": "._predicate",
    "Attempt": "._report",
    "AuditFacts": "._report",
    "ComplianceReport": "._report",
    "Flow": "._report",
    "LineageFacts": "._report",
    "Subject": "._report",
    "TaskFacts": "._report",
    "compliance_report": "._report",
    "Check": "._verify",
    "VerifyResult": "._verify",
    "verify": "._verify",
}

__version__ = "0.1.0"


def predicate_schema() -> str:
    """The JSON Schema (draft 2020-12) of the run predicate, as shipped in the package."""
    from importlib import resources  # tempfile, shutil ...: only when asked

    from ._predicate import SCHEMA_FILE

    return resources.files(__name__).joinpath("schemas", SCHEMA_FILE).read_text()


__all__ = [
    "PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "STATEMENT_TYPE",
    "Attempt",
    "AuditFacts",
    "Check",
    "ComplianceReport",
    "EnvelopeError",
    "EvidencePlugin",
    "EvidenceSettings",
    "Flow",
    "LineageFacts",
    "Subject",
    "TaskFacts",
    "VerifyResult",
    "__version__",
    "build",
    "compliance_report",
    "default_key_file",
    "generate",
    "key_id",
    "load_private",
    "open_envelope",
    "pae",
    "predicate_schema",
    "sign",
    "statement_for",
    "verify",
]


# Entry points load this package on every PipelineManager(): its submodules (and their
# dependencies) are imported when a name is first used, not before.
if not TYPE_CHECKING:  # mypy sees the names above, and flags a misspelt one
    __getattr__, __dir__ = lazy_exports(__name__, _LAZY)
