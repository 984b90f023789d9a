"""Records plugins exchange about what happened, for monitoring: compliance events (reported
to the ``on_compliance_event`` hook) and metric samples (answered by ``collect_metrics``)."""

from __future__ import annotations

import time
from collections.abc import Mapping

import attrs

#: Kinds of :class:`ComplianceEvent` reported by the first-party plugins and the core.
COMPLIANCE_KINDS = ("run_refused", "clearance_violation", "pii_detected", "tamper_detected")


@attrs.frozen
class ComplianceEvent:
    """Something a compliance control found or refused, reported through
    :meth:`PipelineManager.report_compliance_event` to the ``on_compliance_event`` hook.

    ``kind`` is one of :data:`COMPLIANCE_KINDS` (plugins may add their own); ``detail`` is
    a short text already free of PII (detector names, levels, record numbers, never data).
    """

    kind: str
    pipeline: str | None = None
    run_id: str | None = None
    task: str | None = None
    tenant: str | None = None
    plugin: str | None = None
    detail: str = ""
    time: float = attrs.field(factory=time.time)


@attrs.frozen
class MetricSample:
    """One sample a plugin exports through the ``collect_metrics`` hook (read at scrape
    time by a metrics exporter). ``kind`` is ``"counter"`` or ``"gauge"``; ``name`` follows
    Prometheus conventions (counters end in ``_total``); ``labels`` must stay bounded (no
    run ids)."""

    name: str
    value: float
    kind: str = "counter"
    doc: str = ""
    labels: Mapping[str, str] = attrs.field(factory=dict)


__all__ = ["COMPLIANCE_KINDS", "ComplianceEvent", "MetricSample"]
