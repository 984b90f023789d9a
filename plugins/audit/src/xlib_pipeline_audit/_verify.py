"""Verifying and reading a trail. Needs only the trail and its ``.head`` file (and the key)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

from . import _segments
from ._canonical import ALG_HMAC, ALG_SHA256, GENESIS
from ._head import check_head, check_signature, head_path, read_head
from ._tail import Scan, scan


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
    when the trail itself does not exist. The checks are the writer's own
    (:func:`._tail.scan`, :func:`._head.check_head`).
    """
    p = Path(path)
    hp = Path(head) if head is not None else head_path(p)
    kb = _key_bytes(key)
    data = p.read_bytes()
    alg = ALG_HMAC if kb is not None else ALG_SHA256

    def report(found: Scan | None = None, **kw: Any) -> VerifyReport:
        return VerifyReport(
            path=str(p),
            records=found.records if found else 0,
            last_seq=found.last_seq if found else 0,
            last_hash=found.last_hash if found else GENESIS,
            alg=alg,
            **kw,
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
        if head_doc.get("alg") == ALG_HMAC and kb is None:
            from ._keys import default_key, default_key_path

            kb = default_key(create=False)  # a trail keyed by default: the local key file
            used_default = kb is not None
            if kb is None:
                return report(
                    ok=False,
                    reason="the trail is HMAC-protected (head says hmac-sha256): give its key "
                    "(--key / --key-env / --key-file; the default key file "
                    f"{str(default_key_path())!r} does not exist here)",
                )
            alg = ALG_HMAC
        sig = check_signature(head_doc, kb)
        if sig is not None and sig.kind == "alg":
            return report(ok=False, reason=sig.reason)
        if sig is not None:
            head_problem = f"head anchor {hp} does not match its check hash (edited)"
    want = head_doc.get("seq") if head_doc is not None else None
    mark = frozenset([want]) if isinstance(want, int) else frozenset()
    found = scan(data, kb, mark=mark)
    if not found.ok and kb is None and head_doc is None and found.seq == 1:
        # No head to say whether the trail is keyed: a first record that is not plain
        # SHA-256 but verifies with the default HMAC key tells.
        from ._keys import default_key

        dk = default_key(create=False)
        if dk is not None:
            retry = scan(data, dk, mark=mark)
            if retry.ok or (retry.seq or 0) > 1:
                kb, alg, used_default, found = dk, ALG_HMAC, True, retry
    if not found.ok:
        reason = found.reason
        if used_default and "hash mismatch" in (reason or ""):
            reason = (reason or "") + (
                " (checked with the default HMAC key file; if the trail was written "
                "with another key, give it with --key / --key-env / --key-file)"
            )
        return report(found, ok=False, line=found.line, seq=found.seq, reason=reason)
    if head_problem is not None:
        return report(found, ok=False, reason=head_problem)
    if head_doc is None:  # not required
        return report(found, ok=True)
    problem = check_head(head_doc, kb, last_seq=found.last_seq, lookup=found.marks.get)
    hseq = head_doc.get("seq")
    hseq_int = hseq if isinstance(hseq, int) else None
    if problem is not None:
        if problem.at_end:
            line: int | None = found.records + 1
        elif problem.seq:
            line = problem.seq
        else:
            line = None
        return report(
            found, ok=False, line=line, seq=problem.seq, reason=problem.reason, head_seq=hseq_int
        )
    return report(found, ok=True, head_seq=hseq_int, unanchored=found.last_seq - (hseq_int or 0))


def verify_series(
    path: str | os.PathLike[str], key: bytes | str | None = None
) -> _segments.SeriesReport:
    """Verify a rotated trail: every closed segment (``audit.000001.jsonl``, ...), the
    active file ``path``, and that each segment continues the chain where the one before
    it ends. A missing segment (first, middle or last) is named."""
    return _segments.verify_series(Path(path), key, verify)


def is_series(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is the active file of a rotated trail (closed segments beside it,
    or its first record continues one)."""
    p = Path(path)
    if _segments.segments(p):
        return True
    try:
        with open(p, "rb") as fh:
            return _segments.SEGMENT_ACTION.encode() in fh.readline()
    except FileNotFoundError:
        return False


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

    A rotated trail is read whole: its closed segments oldest first, then ``path``.

    ``run`` matches a run-id prefix; ``task`` matches the task or the called function;
    ``action`` matches exactly or as a prefix ending in a dot (``"task."``); ``since`` and
    ``until`` are ISO-8601 times (naive means UTC), inclusive.
    """
    lo, hi = _parse_time(since), _parse_time(until)
    files = [p for _, p in _segments.segments(Path(path))] + [Path(path)]
    for raw in _lines(files):
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


def _lines(files: list[Path]) -> Iterator[bytes]:
    """Every complete line of ``files``, in order (a torn last line of a file is skipped)."""
    for p in files:
        with open(p, "rb") as fh:
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break
                yield raw
