"""The head anchor: ``<trail>.head`` holds the last synced ``seq``, ``hash`` and file size.

It is replaced atomically (temporary file + ``rename``) at every sync point, so a truncated
or rewritten trail no longer reaches its anchor. :func:`check_head` is the one check of an
anchor against a trail, used by the writer (before it appends) and by ``audit verify``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from ._canonical import ALG_HMAC, ALG_SHA256, GENESIS, canonical, record_hash

HEAD_SUFFIX = ".head"
HEAD_VERSION = 1


def head_path(path: str | os.PathLike[str]) -> Path:
    """The head anchor beside trail ``path``: the trail's file name plus ``.head``."""
    p = Path(path)
    return p.with_name(p.name + HEAD_SUFFIX)


def head_document(
    *, trail: str, seq: int, last_hash: str, size: int, key: bytes | None
) -> dict[str, Any]:
    """The head anchor's content, with its ``check`` hash (HMAC with a key)."""
    doc: dict[str, Any] = {
        "alg": ALG_HMAC if key is not None else ALG_SHA256,
        "hash": last_hash,
        "seq": seq,
        "size": size,
        "trail": trail,
        "v": HEAD_VERSION,
    }
    doc["check"] = record_hash(canonical(doc), key)
    return doc


def read_head(path: Path) -> dict[str, Any] | None:
    """The parsed head anchor at ``path`` (``None`` when absent); raises ValueError if garbled."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    doc = json.loads(text.decode("ascii"))
    if not isinstance(doc, dict):
        raise ValueError("the head anchor is not a JSON object")
    return doc


@attrs.frozen
class HeadProblem:
    """Why an anchor does not match: ``kind`` is ``alg``, ``check`` or ``position``;
    ``seq`` is the record at fault (when one is); ``at_end`` means records are missing."""

    kind: str
    reason: str
    seq: int | None = None
    at_end: bool = False


def check_signature(doc: dict[str, Any], key: bytes | None) -> HeadProblem | None:
    """The anchor's algorithm matches the key, and its ``check`` hash is intact."""
    alg = doc.get("alg")
    if alg == ALG_HMAC and key is None:
        return HeadProblem(
            "alg",
            "the trail is HMAC-protected (head says hmac-sha256): give its key "
            "(--key / --key-env / --key-file, or audit.hmac_key_env / hmac_key_file)",
        )
    if alg == ALG_SHA256 and key is not None:
        return HeadProblem(
            "alg",
            "a key was given but the head says the trail is not HMAC-protected (sha256): it "
            "was written without a key, or re-chained by someone without it",
        )
    if alg not in (ALG_HMAC, ALG_SHA256):
        return HeadProblem("alg", f"the head anchor names an unknown algorithm {alg!r}")
    check = dict(doc)
    given = check.pop("check", None)
    if record_hash(canonical(check), key) != given:
        return HeadProblem(
            "check", "the head anchor does not match its check hash (edited, or another key)"
        )
    return None


def check_head(
    doc: dict[str, Any],
    key: bytes | None,
    *,
    last_seq: int,
    lookup: Callable[[int], tuple[str, int] | None],
) -> HeadProblem | None:
    """Check anchor ``doc`` against a trail whose last intact record is ``last_seq``.

    ``lookup(seq)`` gives the ``(hash, end offset)`` of record ``seq`` (``None`` when not
    found). Returns ``None`` when the anchor matches, else the first problem.
    """
    problem = check_signature(doc, key)
    if problem is not None:
        return problem
    hseq = doc.get("seq")
    if not isinstance(hseq, int) or isinstance(hseq, bool) or hseq < 0:
        return HeadProblem("position", f"the head anchor has an invalid seq {hseq!r}")
    if hseq > last_seq:
        return HeadProblem(
            "position",
            f"truncated: the head anchor records seq {hseq} but the trail ends at seq "
            f"{last_seq} ({hseq - last_seq} record(s) missing at the end)",
            seq=last_seq + 1,
            at_end=True,
        )
    if hseq == 0:
        if doc.get("hash") != GENESIS or doc.get("size") != 0:
            return HeadProblem(
                "position", "the head anchor at seq 0 does not hold the genesis hash", seq=0
            )
        return None
    found = lookup(hseq)
    if found is None or found[0] != doc.get("hash"):
        return HeadProblem(
            "position",
            f"record seq {hseq} does not match the hash in the head anchor (the trail was "
            "rewritten from here or earlier)",
            seq=hseq,
        )
    if found[1] != doc.get("size"):
        return HeadProblem(
            "position",
            f"record seq {hseq} does not end at byte {doc.get('size')} as the head anchor "
            "says (bytes were added or removed before it)",
            seq=hseq,
        )
    return None


def write_head(
    path: Path, *, trail: str, seq: int, last_hash: str, size: int, key: bytes | None, sync: bool
) -> None:
    """Replace the anchor at ``path`` atomically (0600 temporary file, then rename)."""
    doc = head_document(trail=trail, seq=seq, last_hash=last_hash, size=size, key=key)
    data = (canonical(doc) + "\n").encode("ascii")
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{id(doc)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
