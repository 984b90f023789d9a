"""``evidence verify``: check a pack offline. Every failing check names its file."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import attrs

from . import _dsse

MANIFEST = "manifest.json"
ATTESTATION = "attestation.dsse.json"
_TERMINAL = ("COMPLETE", "FAIL", "ABORT")


@attrs.frozen
class Check:
    """One verification check: its name, the file it is about, whether it held, why."""

    name: str
    file: str
    ok: bool
    detail: str = ""


@attrs.frozen
class VerifyResult:
    """Every check made; true when all held."""

    checks: tuple[Check, ...]

    def __bool__(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> tuple[Check, ...]:
        """The checks that did not hold."""
        return tuple(c for c in self.checks if not c.ok)


def _load_json(folder: Path, name: str, checks: list[Check], check: str) -> Any:
    try:
        return json.loads((folder / name).read_bytes())
    except FileNotFoundError:
        checks.append(Check(check, name, False, "missing"))
    except ValueError as exc:
        checks.append(Check(check, name, False, f"not JSON ({exc})"))
    return None


def canonical_body(rec: dict[str, Any]) -> bytes:
    """The audit record hash input: sorted keys, compact, ASCII-escaped JSON."""
    return json.dumps(rec, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


_DECODER = json.JSONDecoder()
#: The decoder's C scanner: parses one value at an offset, no whitespace wrapper.
_SCAN: Any = _DECODER.scan_once  # type: ignore[attr-defined]


def check_audit(data: bytes, facts: dict[str, Any], key: bytes | None = None) -> list[str]:
    """Problems with an audit excerpt (empty when its hashes chain)."""
    import hmac

    problems: list[str] = []
    prev_hash: str | None = None
    prev_seq: int | None = None
    last: dict[str, Any] | None = None
    keyed = facts.get("alg") == "hmac-sha256"
    lines = [ln for ln in data.split(b"\n") if ln]
    if not lines:
        return ["the excerpt is empty"]
    try:  # one UTF-8 decode for the whole excerpt, then a str parse per line
        texts: list[str] | None = [t for t in data.decode("utf-8").split("\n") if t]
    except UnicodeDecodeError:
        texts = None  # json.loads reports the line that is not UTF-8
    decode = _DECODER.decode
    scan = _SCAN
    for n, line in enumerate(lines, 1):
        try:
            if texts is None:
                rec = json.loads(line)
            else:
                text = texts[n - 1]
                try:
                    rec, end = scan(text, 0)
                except StopIteration:
                    end = -1
                if end != len(text):  # whitespace around it, or not JSON: the full parser
                    rec = decode(text)
        except ValueError:
            problems.append(f"line {n}: not JSON")
            break
        if not isinstance(rec, dict):
            problems.append(f"line {n}: not a JSON object")
            break
        seq, prev, given = rec.get("seq"), rec.get("prev"), rec.get("hash")
        if prev_seq is not None and seq != prev_seq + 1:
            problems.append(f"line {n}: seq {seq} does not follow {prev_seq}")
        if prev_hash is not None and prev != prev_hash:
            problems.append(f"line {n} (seq {seq}): prev does not match the hash of line {n - 1}")
        if not rec.get("redacted"):
            # The hash input is the line without its trailing hash member: the writer
            # renders each record as its canonical body with ',"hash":"<hex>"' appended.
            suffix = b',"hash":"' + str(given).encode() + b'"}'
            if line.endswith(suffix):
                raw = line[: -len(suffix)] + b"}"
            elif line == b'{"hash":"' + str(given).encode() + b'"}':
                raw = b"{}"
            else:
                problems.append(f"line {n} (seq {seq}): not in canonical form")
                raw = canonical_body({k: v for k, v in rec.items() if k != "hash"})
            if keyed:
                got = hmac.new(key, raw, hashlib.sha256).hexdigest() if key else None
            else:
                got = hashlib.sha256(raw).hexdigest()
            if got is not None and got != given:
                problems.append(f"line {n} (seq {seq}): hash does not match the record")
            last = rec
        prev_hash, prev_seq = given, seq
    if facts:
        if last is None:
            problems.append("no record of the run in the excerpt")
        elif last.get("hash") != facts.get("headHash"):
            problems.append("the last record's hash is not the attested head hash")
        elif last.get("seq") != facts.get("lastSeq"):
            problems.append("the last record's seq is not the attested lastSeq")
    return problems


def check_lineage(data: bytes, pred: dict[str, Any]) -> list[str]:
    """Problems with the lineage events: each task needs one START and one terminal event."""
    run_id = pred["runId"]
    prefix = pred["pipeline"] + "."
    starts: dict[str, int] = {}
    ends: dict[str, int] = {}
    for n, line in enumerate(data.split(b"\n"), 1):
        if not line:
            continue
        try:
            ev = json.loads(line)
        except ValueError:
            return [f"line {n}: not JSON"]
        run = ev.get("run") or {}
        parent = ((run.get("facets") or {}).get("parent") or {}).get("run") or {}
        if parent.get("runId") != run_id:
            continue
        job = str((ev.get("job") or {}).get("name", ""))
        task = job[len(prefix) :] if job.startswith(prefix) else job
        et = ev.get("eventType")
        if et == "START":
            starts[task] = starts.get(task, 0) + 1
        elif et in _TERMINAL:
            ends[task] = ends.get(task, 0) + 1
    problems = []
    for t in pred.get("tasks", []):
        name = t["name"]
        s, e = starts.get(name, 0), ends.get(name, 0)
        if s != 1 or e != 1:
            problems.append(f"task {name!r}: {s} START and {e} terminal event(s), expected 1 and 1")
    return problems


def verify(
    folder: str | os.PathLike[str],
    *,
    public_key: str | os.PathLike[str] | None = None,
    audit_key: bytes | None = None,
) -> VerifyResult:
    """Verify the pack in ``folder`` (see VERIFY.md in every pack)."""
    root = Path(folder)
    checks: list[Check] = []
    if not root.is_dir():
        return VerifyResult((Check("pack", str(root), False, "not a folder"),))
    # 1. manifest
    manifest = _load_json(root, MANIFEST, checks, "manifest")
    listed: dict[str, str] = {}
    if isinstance(manifest, dict) and isinstance(manifest.get("files"), dict):
        listed = manifest["files"]
        for name, want in sorted(listed.items()):
            p = root / name
            if os.sep in name or name.startswith("."):
                checks.append(Check("manifest", name, False, "not a plain file name"))
            elif not p.is_file():
                checks.append(Check("manifest", name, False, "listed but missing"))
            elif hashlib.sha256(p.read_bytes()).hexdigest() != want:
                checks.append(Check("manifest", name, False, "sha256 differs from the manifest"))
            else:
                checks.append(Check("manifest", name, True))
        for p in sorted(root.iterdir()):
            if p.name not in listed and p.name not in (MANIFEST, ATTESTATION):
                checks.append(Check("manifest", p.name, False, "present but not in the manifest"))
    elif manifest is not None:
        checks.append(Check("manifest", MANIFEST, False, "no 'files' mapping"))
    # 2. signature
    key_file = Path(public_key) if public_key is not None else root / "public-key.pem"
    statement: dict[str, Any] | None = None
    pub = None
    try:
        pub = _dsse.load_public_pem(key_file.read_bytes(), str(key_file))
    except FileNotFoundError:
        checks.append(Check("signature", str(key_file.name), False, "public key missing"))
    except _dsse.EnvelopeError as exc:
        checks.append(Check("signature", str(key_file.name), False, str(exc)))
    envelope = _load_json(root, ATTESTATION, checks, "signature")
    if pub is not None and envelope is not None:
        try:
            statement = _dsse.open_envelope(envelope, pub)
            checks.append(Check("signature", ATTESTATION, True, f"key {_dsse.key_id(pub)}"))
        except _dsse.EnvelopeError as exc:
            checks.append(Check("signature", ATTESTATION, False, str(exc)))
    run_json = _load_json(root, "run.json", checks, "subjects")
    if statement is not None:
        subj = {s.get("name"): (s.get("digest") or {}).get("sha256") for s in statement["subject"]}
        mpath = root / MANIFEST
        if mpath.is_file() and subj.get(MANIFEST) == hashlib.sha256(mpath.read_bytes()).hexdigest():
            checks.append(Check("signature", MANIFEST, True, "bound by the attestation"))
        else:
            checks.append(Check("signature", MANIFEST, False, "its sha256 is not the attested one"))
    # 5. subjects (and the predicate) agree between the attestation, run.json and the
    # run-end attestation embedded in run.json.
    pred: dict[str, Any] | None = None
    if statement is not None and isinstance(run_json, dict):
        outputs = [s for s in statement["subject"] if s.get("name") != MANIFEST]
        problems = []
        if outputs != run_json.get("subjects"):
            problems.append("the attested subjects differ from run.json's")
        if statement.get("predicate") != run_json.get("predicate"):
            problems.append("the attested predicate differs from run.json's")
        checks.append(Check("subjects", "run.json", not problems, "; ".join(problems)))
        pred = statement["predicate"]
    elif statement is not None:
        checks.append(Check("subjects", "run.json", False, "missing or not JSON"))
    # 3. audit chain
    if pred is not None:
        facts = (pred.get("sections") or {}).get("audit")
        apath = root / "audit.jsonl"
        if facts is None:
            checks.append(Check("audit chain", "audit.jsonl", True, "skipped: audit was off"))
        elif not apath.is_file():
            checks.append(Check("audit chain", "audit.jsonl", False, "missing"))
        else:
            probs = check_audit(apath.read_bytes(), facts, audit_key)
            note = ""
            if not probs and facts.get("alg") == "hmac-sha256" and audit_key is None:
                note = "keyed trail: links checked, hashes need --audit-key"
            checks.append(Check("audit chain", "audit.jsonl", not probs, "; ".join(probs) or note))
        # 4. lineage
        lfacts = (pred.get("sections") or {}).get("lineage")
        lpath = root / "lineage.jsonl"
        if lfacts is None:
            checks.append(Check("lineage", "lineage.jsonl", True, "skipped: lineage was off"))
        elif not lpath.is_file():
            checks.append(Check("lineage", "lineage.jsonl", False, "missing"))
        else:
            probs = check_lineage(lpath.read_bytes(), pred)
            shown = "; ".join(probs[:5]) + (f" (+{len(probs) - 5} more)" if len(probs) > 5 else "")
            checks.append(Check("lineage", "lineage.jsonl", not probs, shown))
    return VerifyResult(tuple(checks))
