"""Canonical JSON, record hashing and value digests: the parts a verifier must agree on.

A record's ``hash`` is SHA-256 (or HMAC-SHA256 with a key) over the canonical JSON of the
record *without* its ``hash`` field: ``json.dumps(record, sort_keys=True,
separators=(",", ":"), ensure_ascii=True)`` encoded as ASCII (the *body*). A trail line is
that body with ``,"hash":"<hex>"`` added as its last member, then ``\\n``: the record is
serialized once. A verifier re-serializes each parsed line this way and requires byte
equality, so no byte of a line can change unnoticed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import pickle
from typing import Any

#: ``prev`` of the first record of a trail.
GENESIS = "0" * 64
ALG_SHA256 = "sha256"
ALG_HMAC = "hmac-sha256"

_encoder = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)
_encode = _encoder.encode


def canonical(record: dict[str, Any]) -> str:
    """The canonical JSON text of ``record`` (sorted keys, compact, ASCII only)."""
    return _encode(record)


def render_line(body: str, hash_hex: str) -> str:
    """The trail line (without newline) of a record whose canonical body is ``body``."""
    if body == "{}":
        return '{"hash":"' + hash_hex + '"}'
    return body[:-1] + ',"hash":"' + hash_hex + '"}'


def split_line(text: str) -> tuple[dict[str, Any], str, str]:
    """Parse a trail line into ``(record without hash, hash, body)``.

    Raises ValueError saying what is wrong when the line is not JSON, has no ``hash``, or
    is not byte-for-byte the canonical rendering of what it holds.
    """
    try:
        rec = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(rec, dict):
        raise ValueError("not a JSON object")
    given = rec.pop("hash", None)
    if not isinstance(given, str):
        raise ValueError("the record has no hash")
    body = _encode(rec)
    if render_line(body, given) != text:
        raise ValueError("not in canonical JSON form (a byte was changed)")
    return rec, given, body


def record_hash(body: str, key: bytes | None) -> str:
    """Hex SHA-256 of ``body`` (canonical JSON without ``hash``), or HMAC-SHA256 with ``key``."""
    data = body.encode("ascii")
    if key is None:
        return hashlib.sha256(data).hexdigest()
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def value_bytes(value: Any) -> bytes:
    """A stable byte form of ``value``: canonical JSON when it is JSON data, else a pickle."""
    try:
        return b"j" + _encode(value).encode("ascii")
    except (TypeError, ValueError):
        return b"p" + pickle.dumps(value, protocol=5)


def digest(value: Any, key: bytes | None = None) -> str:
    """``sha256:<hex>`` of :func:`value_bytes` (HMAC-keyed when the trail has a key).

    Keying the digest stops anyone without the key from confirming a guessed value
    (a dictionary attack on low-entropy values such as "yes"/"no"). Values that can
    neither be JSON-encoded nor pickled give ``unavailable:<TypeName>``.
    """
    try:
        data = value_bytes(value)
    except Exception:
        return f"unavailable:{type(value).__name__}"
    if key is None:
        return "sha256:" + hashlib.sha256(data).hexdigest()
    return "hmac-sha256:" + hmac.new(key, data, hashlib.sha256).hexdigest()
