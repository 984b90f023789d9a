"""``evidence build``: the self-contained, offline-verifiable evidence pack of one run.

Files: ``index.html`` (the human view), ``run.json`` (every fact, with the run-end
attestation embedded), ``audit.jsonl`` and ``lineage.jsonl`` (contributed by the audit and
lineage plugins through ``collect_evidence``), ``public-key.pem``, ``VERIFY.md`` (how to
verify in any language), ``manifest.json`` (sha256 of every other file) and
``attestation.dsse.json``: an in-toto statement signed when the pack is built, whose
subjects are the run's stored outputs *and* ``manifest.json``, so one signature covers
every byte of the pack.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from xlib_pipeline import SecurityError, StoreError

from . import _dsse, _predicate
from ._html import render
from ._plugin import attestation_file, evidence_dir, sections_of, settings_of

MANIFEST = "manifest.json"
ATTESTATION = "attestation.dsse.json"
#: Files an evidence pack may hold besides the manifest and the attestation.
PACK_FILES = (
    "index.html",
    "run.json",
    "audit.jsonl",
    "lineage.jsonl",
    "public-key.pem",
    "VERIFY.md",
)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_run_attestation(
    manager: Any, run_id: str, public: Any, *, tasks: dict[str, Any] | None = None
) -> tuple[dict[str, Any], Any]:
    """The run-end envelope of ``run_id`` and its verified statement."""
    envelope, statement, _ = _load_attestation(manager, run_id, public, tasks)
    return envelope, statement


def _load_attestation(
    manager: Any, run_id: str, public: Any, tasks: dict[str, Any] | None
) -> tuple[dict[str, Any], Any, bytes]:
    """:func:`load_run_attestation`, also returning the verified payload bytes."""
    plugin = manager.get_plugin("evidence")
    if plugin is not None:
        plugin.wait()  # a run that just ended in this manager: its attestation is pending
    store = manager.store
    if store is None:
        raise StoreError("building evidence needs a run store (--store PATH)")
    rec = store.get_run(run_id)
    if tasks is None:
        tasks = store.get_tasks(rec.run_id)
    # Evidence names the run's tasks and tenants: a read of stored data like any other.
    manager.check_read_access(rec, tasks.values())
    folder = evidence_dir(store.path, settings_of(manager).dir)
    file = attestation_file(folder, rec.run_id)
    try:
        envelope = json.loads(file.read_bytes())
    except FileNotFoundError:
        raise StoreError(
            f"run {rec.run_id} has no attestation ({file} is missing): the evidence plugin "
            "was not on when it ran (config evidence: {signing_key_file: ...})",
            path=str(file),
        ) from None
    except ValueError as exc:
        raise SecurityError(f"run attestation {file} is not JSON ({exc})") from None
    try:
        statement, payload = _dsse.open_payload(envelope, public)
    except _dsse.EnvelopeError as exc:
        raise SecurityError(f"run attestation {file} does not verify: {exc}") from None
    return envelope, statement, payload


def check_outputs(
    manager: Any,
    statement: dict[str, Any],
    shredded: set[str],
    *,
    tasks: dict[str, Any] | None = None,
) -> None:
    """Refuse when a stored output no longer has the digest attested at run end; outputs a
    plugin reports as crypto-shredded (contents gone on purpose) keep their attested digest.
    ``tasks``: the run's task rows when already read."""
    pred = statement["predicate"]
    if tasks is None:
        tasks = manager.store.get_tasks(pred["runId"])
    now = {s["name"]: s["digest"]["sha256"] for s in _predicate.subjects(pred["pipeline"], tasks)}
    for subj in statement.get("subject", []):
        got = now.get(subj["name"])
        if subj["name"].removeprefix(pred["pipeline"] + "/") in shredded:
            continue
        if got is not None and got != subj["digest"]["sha256"]:
            raise SecurityError(
                f"the stored output {subj['name']} of run {pred['runId']} no longer matches "
                "the digest attested when the run ended (the run store was changed)"
            )


class _StoreView:
    """The run store as collectors see it during a build: ``get_tasks`` of the run being
    packed answers from the rows the build already read (a copy of the mapping); every
    other call is the store's."""

    def __init__(self, store: Any, run_id: str, tasks: dict[str, Any]) -> None:
        self._store = store
        self._run_id = run_id
        self._tasks = tasks

    def get_tasks(self, run_id: str) -> dict[str, Any]:
        if run_id == self._run_id:
            return dict(self._tasks)
        tasks: dict[str, Any] = self._store.get_tasks(run_id)
        return tasks

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class _BuildView:
    """The manager handed to ``collect_evidence`` while a pack is built: the manager itself
    in every respect but its ``store`` (a :class:`_StoreView`), so the run's task rows are
    read once per build rather than once per plugin that reports on them."""

    def __init__(self, manager: Any, run_id: str, tasks: dict[str, Any]) -> None:
        self._manager = manager
        self.store = _StoreView(manager.store, run_id, tasks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._manager, name)


def build(
    manager: Any,
    run_id: str,
    out: str | os.PathLike[str],
    key: Ed25519PrivateKey,
) -> Path:
    """Write the evidence pack of ``run_id`` into folder ``out``; return it."""
    public = key.public_key()
    store = manager.store
    if store is None:
        raise StoreError("building evidence needs a run store (--store PATH)")
    rid = store.get_run(run_id).run_id
    tasks = store.get_tasks(rid)  # the only read of the run's task rows in a build
    envelope, statement, payload = _load_attestation(manager, rid, public, tasks)
    pred = statement["predicate"]
    sections = sections_of(_BuildView(manager, rid, tasks), rid, None)
    shredded = {t for sec in sections for t in sec.facts.get("shredded", ())}
    check_outputs(manager, statement, shredded, tasks=tasks)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in (*PACK_FILES, MANIFEST, ATTESTATION):
        (folder / stale).unlink(missing_ok=True)
    files: dict[str, bytes] = {}
    for sec in sections:
        for name, data in sec.files.items():
            if name not in PACK_FILES or name in files:
                raise StoreError(f"plugin section {sec.name!r} offered an unexpected file {name!r}")
            files[name] = bytes(data)
    kid = _dsse.key_id(public)
    run_json = {
        "predicateType": statement["predicateType"],
        "predicate": pred,
        "subjects": statement["subject"],
        "signer": {"keyid": kid, "algorithm": "ed25519"},
        "runAttestation": {"sha256": hashlib.sha256(_json(envelope)).hexdigest()},
    }
    if shredded:  # contents destroyed since the run (right to erasure); digests remain
        run_json["shredded"] = sorted(shredded)
    # The predicate and subjects are the run-end statement's: their JSON is sliced from its
    # verified payload rather than serialised twice more (run.json and the pack statement).
    parts = _payload_parts(payload)
    files["run.json"] = _run_json_bytes(run_json, parts)
    files["public-key.pem"] = _dsse.public_pem(public)
    files["VERIFY.md"] = VERIFY_TEXT.encode()
    audit_ok = _audit_badge(files.get("audit.jsonl"), pred)
    files["index.html"] = render(run_json, audit_ok=audit_ok, files=files).encode()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    manifest = {
        "algorithm": "sha256",
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())},
    }
    mbytes = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()  # small
    (folder / MANIFEST).write_bytes(mbytes)
    bound = {"digest": {"sha256": hashlib.sha256(mbytes).hexdigest()}, "name": MANIFEST}
    if parts is not None:
        head, subject = parts[0], parts[2]
        sep = b"," if subject != b"[]" else b""
        pack_payload = head + subject[:-1] + sep + _dsse.statement_bytes(bound) + b"]}"
        signed = _dsse.sign_payload(pack_payload, key)
    else:
        pack_statement = {
            "_type": _dsse.STATEMENT_TYPE,
            "subject": [*statement["subject"], bound],
            "predicateType": statement["predicateType"],
            "predicate": pred,
        }
        signed = _dsse.sign(pack_statement, key)
    (folder / ATTESTATION).write_bytes(_json(signed))
    return folder


_HEAD = b'{"_type":' + json.dumps(_dsse.STATEMENT_TYPE).encode() + b',"predicate":'
_TYPE = b',"predicateType":'
_SUBJECT = b',"subject":'


def _payload_parts(payload: bytes) -> tuple[bytes, bytes, bytes] | None:
    """``(everything up to the subject list, the predicate's JSON, the subject list's JSON)``
    of a statement payload in the form :func:`_dsse.statement_bytes` writes (sorted keys:
    ``_type``, ``predicate``, ``predicateType``, ``subject``); ``None`` for any other form.

    The last ``,"predicateType":`` and ``,"subject":`` are the statement's own members:
    only subjects (``digest``/``name`` objects) follow them, and JSON strings escape
    quotes, so neither sequence can occur inside a name."""
    if not payload.startswith(_HEAD) or not payload.endswith(b"]}"):
        return None
    t = payload.rfind(_TYPE)
    s = payload.rfind(_SUBJECT)
    if t < len(_HEAD) or s < t:
        return None
    return payload[: s + len(_SUBJECT)], payload[len(_HEAD) : t], payload[s + len(_SUBJECT) : -1]


def _run_json_bytes(run_json: dict[str, Any], parts: tuple[bytes, bytes, bytes] | None) -> bytes:
    """``run.json``: :func:`_json` of ``run_json``, reusing the payload's predicate and
    subjects JSON when ``parts`` has them (same keys in the same sorted order)."""
    if parts is None:
        return _json(run_json)
    rest = {k: v for k, v in run_json.items() if k not in ("predicate", "subjects")}
    middle = _json(rest)[1:-2]  # the other members, sorted: between predicateType and subjects
    return b'{"predicate":' + parts[1] + b"," + middle + b',"subjects":' + parts[2] + b"}\n"


def _json(value: Any) -> bytes:
    """Compact, key-sorted JSON (the C encoder: a 10,000-task run's facts in milliseconds)."""
    return (json.dumps(value, sort_keys=True, separators=(",", ":")) + "\n").encode()


def _audit_badge(data: bytes | None, pred: dict[str, Any]) -> bool | None:
    """The audit excerpt's chain status for the page (``None``: no audit trail)."""
    if data is None:
        return None
    from ._verify import check_audit

    return not check_audit(data, pred.get("sections", {}).get("audit") or {})


VERIFY_TEXT = """\
# How to verify this evidence pack (any language)

1. **Manifest.** `manifest.json` lists `files`: name -> lowercase hex SHA-256 of the file's
   bytes. Every listed file must exist with that digest; no other file may be present
   except `manifest.json` and `attestation.dsse.json`.
2. **Signature.** `attestation.dsse.json` is a DSSE envelope
   (https://github.com/secure-systems-lab/dsse). Decode `payload` (base64). Build
   PAE = `"DSSEv1" SP len(payloadType) SP payloadType SP len(payload) SP payload` (lengths
   in ASCII decimal, `payloadType` = `application/vnd.in-toto+json`) and check one
   `signatures[].sig` (base64) as an Ed25519 signature of PAE with the signer's public key
   (get it from the signer, not from this folder; `public-key.pem` is a convenience).
   `keyid` is the hex SHA-256 of the raw 32-byte public key.
3. **Statement.** The payload is an in-toto Statement v1 (`_type`
   `https://in-toto.io/Statement/v1`). Its subject named `manifest.json` must carry the
   SHA-256 of `manifest.json`; its other subjects (`<pipeline>/<task>`, the SHA-256 of
   each stored task output) must equal `subjects` in `run.json`, and its `predicate` must
   equal `predicate` in `run.json`. The same statement (same subjects, same predicate)
   was signed when the run ended; `evidence build` verified that one before signing the
   pack.
4. **Audit chain.** `audit.jsonl` holds one JSON object per line, in `seq` order, each
   with `prev` equal to the previous line's `hash`. For a full record (no `"redacted":
   true`) the hash input is the line's bytes with its last member `,"hash":"<hex>"`
   removed, which is the record without `hash` in canonical form: RFC 8785 (JCS) for
   records with `"v": 2`, and for older records without `v` JSON with keys sorted, no
   whitespace, non-ASCII escaped as `\\uXXXX`. Its SHA-256 (or HMAC-SHA256 with the trail
   key when `predicate.sections.audit.alg` is `hmac-sha256`) must equal `hash`.
   Redacted lines are other runs' records: they only link. The last line's `hash` must
   equal `predicate.sections.audit.headHash`.
5. **Lineage.** `lineage.jsonl` holds OpenLineage RunEvents. Every task in
   `predicate.tasks` has exactly one `START` and exactly one terminal event (`COMPLETE`,
   `FAIL` or `ABORT`) whose `job.name` is `<pipeline>.<task>` and whose
   `run.facets.parent.run.runId` is the run id.

The reference implementation is `xlib-pipeline evidence verify DIR --public-key FILE`.
"""
