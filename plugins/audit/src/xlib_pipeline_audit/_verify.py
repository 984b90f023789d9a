"""Verifying and reading a trail. Needs only the trail and its ``.head`` file (and the key)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

from ._canonical import ALG_HMAC, ALG_SHA256, GENESIS, canonical, record_hash, split_line
from ._trail import head_path, read_head


@attrs.frozen(kw_only=True)
class VerifyReport:
    """What :func:`verify` found. ``ok`` is true only for an intact trail and head.

    On failure ``line`` and ``seq`` name the first bad record (1-based line; ``seq`` is
    the sequence number expected there) and ``reason`` says why.
    """

    path: str
    ok: bool
    records: int
    last_seq: int
    last_hash: str
    alg: str
    head_seq: int | None = None
    line: int | None = None
    seq: int | None = None
    reason: str | None = None
    unanchored: int = 0

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        if self.ok:
            tail = (
                f"; {self.unanchored} record(s) after the head anchor (written since its last sync)"
                if self.unanchored
                else ""
            )
            return (
                f"OK {self.path}: {self.records} record(s), chain intact ({self.alg}), "
                f"head anchor at seq {self.head_seq}{tail}"
            )
        where = f"line {self.line}" if self.line is not None else "head anchor"
        seq = f" (seq {self.seq})" if self.seq is not None else ""
        return f"TAMPERED {self.path}: {where}{seq}: {self.reason}"

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON data."""
        return attrs.asdict(self)


def _key_bytes(key: bytes | str | None) -> bytes | None:
    if key is None:
        return None
    return key.encode() if isinstance(key, str) else bytes(key)


def verify(
    path: str | os.PathLike[str],
    key: bytes | str | None = None,
    *,
    head: str | os.PathLike[str] | None = None,
    require_head: bool = True,
) -> VerifyReport:
    """Check every record of the trail at ``path`` and its head anchor.

    Detects any changed byte, deleted, inserted or reordered record and truncation (against
    the head anchor ``<path>.head``, or ``head``). ``key`` is the HMAC key of a keyed trail.
    Returns a :class:`VerifyReport` naming the first bad record; raises ``FileNotFoundError``
    when the trail itself does not exist.
    """
    p = Path(path)
    hp = Path(head) if head is not None else head_path(p)
    kb = _key_bytes(key)
    data = p.read_bytes()
    alg = ALG_HMAC if kb is not None else ALG_SHA256
    records = 0
    last_seq = 0
    last_hash = GENESIS

    def bad(line: int | None, seq: int | None, reason: str, head_seq: int | None = None):
        return VerifyReport(
            path=str(p),
            ok=False,
            records=records,
            last_seq=last_seq,
            last_hash=last_hash,
            alg=alg,
            head_seq=head_seq,
            line=line,
            seq=seq,
            reason=reason,
        )

    used_default = False  # the key came from the default key file, not the caller

    # The head first: it says whether the trail is keyed.
    head_doc: dict[str, Any] | None = None
    head_problem: str | None = None
    try:
        head_doc = read_head(hp)
    except (ValueError, UnicodeDecodeError) as exc:
        head_problem = f"head anchor {hp} is not valid JSON ({exc})"
    if head_doc is None and head_problem is None and require_head:
        head_problem = f"head anchor {hp} is missing (it must be copied with the trail)"
    if head_doc is not None:
        head_alg = head_doc.get("alg")
        if head_alg == ALG_HMAC and kb is None:
            from ._keys import default_key, default_key_path

            kb = default_key(create=False)  # a trail keyed by default: the local key file
            alg = ALG_HMAC
            used_default = kb is not None
            if kb is None:
                return bad(
                    None,
                    None,
                    "the trail is HMAC-protected (head says hmac-sha256): give its key "
                    f"(--key / --key-env / --key-file; the default key file "
                    f"{str(default_key_path())!r} does not exist here)",
                )
        if head_alg == ALG_SHA256 and kb is not None:
            return bad(
                None,
                None,
                "a key was given but the head says the trail is not HMAC-protected "
                "(sha256): it was written without a key, or re-chained by someone without it",
            )
        check = dict(head_doc)
        given = check.pop("check", None)
        if record_hash(canonical(check), kb) != given:
            head_problem = f"head anchor {hp} does not match its check hash (edited)"

    offsets: dict[int, int] = {}
    hashes: dict[int, str] = {}
    want_head = head_doc.get("seq") if head_doc is not None else None
    expected = 1
    prev = GENESIS
    pos = 0
    lines = data.split(b"\n")
    complete = lines[:-1]
    for lineno, raw in enumerate(complete, 1):
        pos += len(raw) + 1
        if not raw:
            return bad(lineno, expected, "empty line (a record was cut or a newline inserted)")
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            return bad(lineno, expected, "non-ASCII byte in the record (a byte was changed)")
        try:
            rec, given, body = split_line(text)
        except ValueError as exc:
            return bad(lineno, expected, str(exc))
        seq = rec.get("seq")
        if seq != expected:
            return bad(
                lineno,
                expected,
                f"expected seq {expected}, found {seq!r}: records were deleted, inserted or "
                "reordered",
            )
        if rec.get("prev") != prev:
            return bad(
                lineno,
                expected,
                "prev does not match the hash of the previous record (a record was replaced)",
            )
        if expected == 1 and kb is None and head_doc is None:
            # No head to say whether the trail is keyed: a first record that is not plain
            # SHA-256 but verifies with the default HMAC key tells.
            from ._keys import default_key

            dk = default_key(create=False) if record_hash(body, None) != given else None
            if dk is not None and record_hash(body, dk) == given:
                kb, alg, used_default = dk, ALG_HMAC, True
        if record_hash(body, kb) != given:
            hint = " or the key is wrong" if kb is not None else ""
            if used_default:
                hint += (
                    " (checked with the default HMAC key file; if the trail was written "
                    "with another key, give it with --key / --key-env / --key-file)"
                )
            return bad(lineno, expected, f"hash mismatch: the record was edited{hint}")
        prev = given
        records += 1
        last_seq, last_hash = seq, given
        if want_head is not None and seq == want_head:
            offsets[seq] = pos
            hashes[seq] = given
        expected += 1
    if lines[-1]:
        return bad(
            len(complete) + 1,
            expected,
            "incomplete last record (no newline): the trail was truncated or a write was torn",
        )
    if head_problem is not None:
        return bad(None, None, head_problem)
    if head_doc is None:  # not required
        return VerifyReport(
            path=str(p),
            ok=True,
            records=records,
            last_seq=last_seq,
            last_hash=last_hash,
            alg=alg,
        )
    hseq = head_doc.get("seq")
    if not isinstance(hseq, int) or hseq < 0:
        return bad(None, None, f"head anchor has an invalid seq {hseq!r}")
    if hseq > last_seq:
        return bad(
            len(complete) + 1,
            last_seq + 1,
            f"truncated: the head anchor records seq {hseq} but the trail ends at seq "
            f"{last_seq} ({hseq - last_seq} record(s) missing at the end)",
            head_seq=hseq,
        )
    if hseq == 0:
        if head_doc.get("hash") != GENESIS or head_doc.get("size") != 0:
            return bad(None, 0, "head anchor at seq 0 does not hold the genesis hash", hseq)
    else:
        if hashes.get(hseq) != head_doc.get("hash"):
            return bad(
                hseq,
                hseq,
                f"record seq {hseq} does not match the hash in the head anchor (the trail "
                "was rewritten from here or earlier)",
                hseq,
            )
        if offsets.get(hseq) != head_doc.get("size"):
            return bad(
                hseq,
                hseq,
                f"record seq {hseq} does not end at byte {head_doc.get('size')} as the head "
                "anchor says (bytes were added or removed before it)",
                hseq,
            )
    return VerifyReport(
        path=str(p),
        ok=True,
        records=records,
        last_seq=last_seq,
        last_hash=last_hash,
        alg=alg,
        head_seq=hseq,
        unanchored=last_seq - hseq,
    )


def _parse_time(value: str | datetime | None) -> datetime | None:
    dt = value if value is None or isinstance(value, datetime) else datetime.fromisoformat(value)
    if dt is not None and dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt


def read(
    path: str | os.PathLike[str],
    *,
    run: str | None = None,
    task: str | None = None,
    tenant: str | None = None,
    action: str | None = None,
    outcome: str | None = None,
    since: str | datetime | None = None,
    until: str | datetime | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield the records of a trail matching every filter given (no verification).

    ``run`` matches a run-id prefix; ``task`` matches the task or the called function;
    ``action`` matches exactly or as a prefix ending in a dot (``"task."``); ``since`` and
    ``until`` are ISO-8601 times (naive means UTC), inclusive.
    """
    lo, hi = _parse_time(since), _parse_time(until)
    with open(path, "rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break  # torn last line
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(rec, dict):
                continue
            if run is not None and not str(rec.get("run_id") or "").startswith(run):
                continue
            if task is not None and task not in (rec.get("task"), rec.get("function")):
                continue
            if tenant is not None and rec.get("tenant") != tenant:
                continue
            if outcome is not None and rec.get("outcome") != outcome:
                continue
            if action is not None:
                act = str(rec.get("action") or "")
                if not (act == action or (action.endswith(".") and act.startswith(action))):
                    continue
            if lo is not None or hi is not None:
                try:
                    ts = _parse_time(rec.get("ts"))
                except (TypeError, ValueError):
                    continue
                if ts is None or (lo is not None and ts < lo) or (hi is not None and ts > hi):
                    continue
            yield rec
