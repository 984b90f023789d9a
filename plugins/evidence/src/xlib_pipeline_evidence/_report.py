"""``pm.compliance_report(run_id)``: the signed facts of a stored run as typed objects.

The same facts as ``run.json`` in the run's evidence pack, read from the run-end
attestation after its signature is verified (a report is never built from unsigned data).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from xlib_pipeline import ConfigError

from . import _dsse


@attrs.frozen(kw_only=True)
class Subject:
    """A stored task output: ``<pipeline>/<task>`` and the sha256 of its stored bytes."""

    name: str
    sha256: str


@attrs.frozen(kw_only=True)
class TaskFacts:
    """One task of the run."""

    name: str
    status: str
    attempts: int
    depends_on: tuple[str, ...]
    started: str | None
    finished: str | None
    duration_seconds: float | None
    tenant: str | None
    error_type: str | None
    code_sha256: str | None
    classification: str | None = None
    pii_kinds: tuple[str, ...] = ()
    key_id: str | None = None


@attrs.frozen(kw_only=True)
class Attempt:
    """One attempt of a task (the timeline)."""

    task: str
    attempt: int
    start: str | None
    end: str | None
    outcome: str


@attrs.frozen(kw_only=True)
class AuditFacts:
    """Where the run sits in the audit chain."""

    trail: str
    alg: str
    first_seq: int
    last_seq: int
    records: int
    head_hash: str


@attrs.frozen(kw_only=True)
class LineageFacts:
    """The run's OpenLineage events."""

    events: int
    task_starts: int
    task_terminals: int
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@attrs.frozen(kw_only=True)
class Flow:
    """Data flowing from one task's output into another task, with any clearance decision."""

    source: str
    target: str
    level: str
    clearance: str | None
    decision: str | None


@attrs.frozen(kw_only=True)
class ComplianceReport:
    """Every fact of a run's evidence (``run.json``), signed by ``signer_key_id``."""

    pipeline: str
    run_id: str
    resumed_from: str | None
    status: str
    principal: str | None
    tenants: tuple[str, ...]
    started: str | None
    finished: str | None
    config_sha256: str
    python: str
    packages: Mapping[str, str]
    tasks: tuple[TaskFacts, ...]
    attempts: tuple[Attempt, ...]
    subjects: tuple[Subject, ...]
    audit: AuditFacts | None
    lineage: LineageFacts | None
    flows: tuple[Flow, ...]
    key_ids: tuple[str, ...]
    signer_key_id: str
    sections: Mapping[str, Any]

    def task(self, name: str) -> TaskFacts:
        """The facts of task ``name`` (KeyError naming the known tasks)."""
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(
            f"no task {name!r} in run {self.run_id}; tasks: {[t.name for t in self.tasks]}"
        )


def from_statement(statement: Mapping[str, Any], signer: str) -> ComplianceReport:
    """The report of a verified statement."""
    p = statement["predicate"]
    secs = p.get("sections") or {}
    cls = secs.get("classification") or {}
    enc = secs.get("encryption") or {}
    keys = enc.get("keys") or {}
    tasks = tuple(
        TaskFacts(
            name=t["name"],
            status=t["status"],
            attempts=t["attempts"],
            depends_on=tuple(t.get("dependsOn", ())),
            started=t.get("started"),
            finished=t.get("finished"),
            duration_seconds=t.get("durationSeconds"),
            tenant=t.get("tenant"),
            error_type=t.get("errorType"),
            code_sha256=(t.get("codeDigest") or {}).get("sha256"),
            classification=(cls.get("levels") or {}).get(t["name"]),
            pii_kinds=tuple((cls.get("pii") or {}).get(t["name"], ())),
            key_id=keys.get(t["name"]),
        )
        for t in p["tasks"]
    )
    a = secs.get("audit")
    audit = (
        AuditFacts(
            trail=a["trail"],
            alg=a["alg"],
            first_seq=a["firstSeq"],
            last_seq=a["lastSeq"],
            records=a["records"],
            head_hash=a["headHash"],
        )
        if a
        else None
    )
    lf = secs.get("lineage")
    lineage = (
        LineageFacts(
            events=lf["events"],
            task_starts=lf["taskStarts"],
            task_terminals=lf["taskTerminals"],
            inputs=tuple(lf["datasets"]["inputs"]),
            outputs=tuple(lf["datasets"]["outputs"]),
        )
        if lf
        else None
    )
    return ComplianceReport(
        pipeline=p["pipeline"],
        run_id=p["runId"],
        resumed_from=p.get("resumedFrom"),
        status=p["status"],
        principal=p.get("principal"),
        tenants=tuple(p.get("tenants", ())),
        started=p.get("started"),
        finished=p.get("finished"),
        config_sha256=p["config"]["sha256"],
        python=p["environment"]["python"],
        packages=dict(p["environment"]["packages"]),
        tasks=tasks,
        attempts=tuple(
            Attempt(
                task=x["task"],
                attempt=x["attempt"],
                start=x.get("start"),
                end=x.get("end"),
                outcome=x["outcome"],
            )
            for x in p.get("attempts", ())
        ),
        subjects=tuple(
            Subject(name=s["name"], sha256=s["digest"]["sha256"]) for s in statement["subject"]
        ),
        audit=audit,
        lineage=lineage,
        flows=tuple(
            Flow(
                source=f["from"],
                target=f["to"],
                level=f["level"],
                clearance=f.get("clearance"),
                decision=f.get("decision"),
            )
            for f in cls.get("flows", ())
        ),
        key_ids=tuple(enc.get("keyIds", ())),
        signer_key_id=signer,
        sections=secs,
    )


def compliance_report(manager: Any, run_id: str, *, public_key: Any = None) -> ComplianceReport:
    """The verified report of stored run ``run_id`` (a unique prefix is enough)."""
    from ._pack import load_run_attestation
    from ._plugin import public_key_of

    pub = public_key
    if isinstance(pub, str | bytes) or hasattr(pub, "__fspath__"):
        from pathlib import Path

        pub = _dsse.load_public_pem(Path(pub).read_bytes(), str(pub))
    if pub is None:
        pub = public_key_of(manager)
    if pub is None:
        raise ConfigError(
            "compliance_report needs the evidence signing key's public half: configure "
            "evidence.signing_key_file or pass public_key=PATH",
            key="evidence.signing_key_file",
        )
    rec = manager.store.get_run(run_id) if manager.store is not None else None
    if rec is not None:
        manager.check_read_access(rec)
    _, statement = load_run_attestation(manager, run_id, pub)
    return from_statement(statement, _dsse.key_id(pub))
