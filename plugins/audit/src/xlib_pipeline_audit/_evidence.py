"""The audit plugin's section of a run's evidence (the ``collect_evidence`` hook).

At the end of a run: the run's first and last ``seq``, its record count and the head hash
after the run (the hash of the run's last record). When a pack is built: the same facts
plus ``audit.jsonl``, the excerpt of the chain from the record just before the run's first
record to its last. Records of other runs that fall inside that range (runs that
overlapped) are reduced to stubs ``{"seq", "prev", "hash", "redacted": true}``: the chain
still links through them, and no other run's (or tenant's) metadata leaks into the pack.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ._segments import series_files

#: How a verifier rebuilds a record's hash input (see docs/plugins/audit.md).
CANONICAL_FORM = "rfc8785 (records with v=2); json-sorted-compact-ascii (records without v)"


def _matches(data: bytes, run_id: str) -> list[tuple[int, int]]:
    """(start, end) of each line of ``data`` holding ``"run_id":"<run_id>"``, in order."""
    needle = b'"run_id":' + json.dumps(run_id).encode()
    out: list[tuple[int, int]] = []
    pos = data.find(needle)
    last_start = -1
    while pos != -1:
        start = data.rfind(b"\n", 0, pos) + 1
        end = data.find(b"\n", pos)
        if end == -1:
            end = len(data)
        if start != last_start:
            out.append((start, end))
            last_start = start
        pos = data.find(needle, end)
    return out


def _tail(path: Path, run_id: str) -> bytes:
    """The end of the trail from a line boundary before the run's ``run.started`` record
    (the whole file when it is not found): a run that just ended sits at the end, so this
    reads what the run wrote, not the whole trail."""
    needle = b'"run_id":' + json.dumps(run_id).encode()
    with path.open("rb") as f:
        size = f.seek(0, 2)
        block = 1 << 16
        while True:
            start = max(0, size - block)
            f.seek(start)
            data = f.read(size - start)
            if start == 0:
                return data
            cut = data.find(b"\n") + 1  # drop the partial first line
            data = data[cut:]
            pos = data.find(needle)
            if pos != -1:
                line_start = data.rfind(b"\n", 0, pos) + 1
                line_end = data.find(b"\n", pos)
                # keep the line before it: the excerpt links into the chain from there
                if b'"action":"run.started"' in data[line_start:line_end] and line_start > 0:
                    return data[data.rfind(b"\n", 0, line_start - 1) + 1 :]
            block *= 4


def section(path: Path, alg: str, run_id: str, *, with_files: bool) -> dict[str, Any] | None:
    """``{"facts": ..., "files": ...}`` for run ``run_id`` in the trail at ``path``.

    At the end of a run (``with_files=False``) only the active file's tail is read, unless
    the run's first record is not there (the trail rotated during the run): then, as when a
    pack is built, the whole series (closed segments oldest first, then the active file).
    """
    try:
        data = _series(path) if with_files else _tail(path, run_id)
        spans = _matches(data, run_id)
        if not with_files and (not spans or b'"run.started"' not in data[slice(*spans[0])]):
            data = _series(path)
            spans = _matches(data, run_id)
    except FileNotFoundError:
        return None
    if not spans:
        return None
    first = json.loads(data[spans[0][0] : spans[0][1]])
    last = json.loads(data[spans[-1][0] : spans[-1][1]])
    facts: dict[str, Any] = {
        "trail": str(path),
        "alg": alg,
        "canonicalForm": CANONICAL_FORM,
        "firstSeq": first["seq"],
        "lastSeq": last["seq"],
        "records": len(spans),
        "previousHash": first["prev"],
        "headHash": last["hash"],
    }
    files: dict[str, bytes] = {}
    if with_files:
        files["audit.jsonl"] = _excerpt(data, spans)
    return {"facts": facts, "files": files}


def _excerpt(data: bytes, spans: list[tuple[int, int]]) -> bytes:
    begin = spans[0][0]
    end = spans[-1][1]
    before_end = begin - 1
    lines: list[bytes] = []
    if before_end > 0:
        prev_start = data.rfind(b"\n", 0, before_end) + 1
        lines.append(_stub(data[prev_start:before_end]))
    ours = {s for s, _ in spans}
    pos = begin
    while pos < end:
        nl = data.find(b"\n", pos)
        if nl == -1 or nl > end:
            nl = end
        line = data[pos:nl]
        if line:
            lines.append(line if pos in ours else _stub(line))
        pos = nl + 1
    return b"\n".join(lines) + b"\n"


def _stub(line: bytes) -> bytes:
    rec = json.loads(line)
    stub = {
        "seq": rec.get("seq"),
        "prev": rec.get("prev"),
        "hash": rec.get("hash"),
        "redacted": True,
    }
    return json.dumps(stub, sort_keys=True, separators=(",", ":")).encode()


def _series(path: Path) -> bytes:
    """Every line of the trail's series, oldest segment first (the chain continues across)."""
    return b"".join(p.read_bytes() for p in series_files(path))
