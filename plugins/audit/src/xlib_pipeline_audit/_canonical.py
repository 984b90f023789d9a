"""Canonical JSON, record hashing and value digests: the parts a verifier must agree on.

A record's ``hash`` is SHA-256 (or HMAC-SHA256 with a key) over the canonical JSON of the
record *without* its ``hash`` field, UTF-8 encoded (the *body*). A trail line is that body
with ``,"hash":"<hex>"`` added as its last member, then ``\\n``: the record is serialized
once. A verifier re-serializes each parsed line and requires byte equality, so no byte of
a line can change unnoticed.

The canonical form is versioned by the record's ``v`` field (inside the hashed body, so it
cannot be flipped unnoticed):

* ``"v": 2`` (every record written now): RFC 8785, the JSON Canonicalization Scheme, which a
  verifier in any language can reproduce (the ``rfc8785`` package; records that are plain
  strings, integers, booleans and nulls under ASCII keys take a fast path that produces the
  same bytes, checked by the tests against ``rfc8785``).
* no ``v`` (trails written before): ``json.dumps(record, sort_keys=True, separators=(",",
  ":"), ensure_ascii=True)``. Such trails stay verifiable.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import pickle
from typing import Any

import rfc8785

#: ``prev`` of the first record of a trail.
GENESIS = "0" * 64
ALG_SHA256 = "sha256"
ALG_HMAC = "hmac-sha256"

#: The canonical form of records written now (RFC 8785); stored as the record's ``v``.
CHAIN_VERSION = 2
_encoder = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)
_encode = _encoder.encode
_jcs_plain = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
_MAX_INT = 2**53


_SCALARS = frozenset((str, type(None), bool))


def _plain_float(v: float) -> bool:
    """A float whose RFC 8785 form is Python's ``repr``: not integral (``5.0`` is ``5``
    there) and within ``1e-4 <= |v| < 1e16``, where ``repr`` uses no exponent and its
    shortest round-trip digits are ECMAScript's (``rfc8785`` itself starts from ``str``
    and only rewrites exponents and a trailing ``.0``). A run's ``duration_ms`` is one:
    every ``run.finished`` record took the whole ``rfc8785`` walk for it."""
    return 1e-4 <= abs(v) < 1e16 and not v.is_integer()


def _plain(value: Any) -> bool:
    """JSON data whose RFC 8785 form is Python's sorted, compact, non-ASCII-escaping form:
    strings, bools, nulls, integers within ±2**53, non-integral floats of a plain decimal
    form (:func:`_plain_float`), and lists and objects of them under ASCII keys (other
    floats and exotic keys go through ``rfc8785``).

    A plain loop, not a generator per value: it runs twice per task on the audit path."""
    t = type(value)
    if t in _SCALARS:
        return True
    if t is int:
        return bool(-_MAX_INT <= value <= _MAX_INT)
    if t is float:
        return _plain_float(value)
    if t is dict:
        for k in value:
            if type(k) is not str or not k.isascii():
                return False
        items = value.values()
    elif t is list:
        items = value
    else:
        return False
    for v in items:
        tv = type(v)
        if tv in _SCALARS:
            continue
        if tv is int:
            if -_MAX_INT <= v <= _MAX_INT:
                continue
            return False
        if tv is float:
            if _plain_float(v):
                continue
            return False
        if not _plain(v):
            return False
    return True


def canonical(record: dict[str, Any]) -> str:
    """The canonical JSON text of ``record``: RFC 8785 when ``record["v"] == 2``, else the
    legacy form (sorted keys, compact, ASCII only). Raises ValueError/TypeError when the
    record is not JSON data."""
    if record.get("v") == CHAIN_VERSION:
        if _plain(record):
            return _jcs_plain(record)
        return rfc8785.dumps(record).decode("utf-8")
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
    body = canonical(rec)
    if render_line(body, given) != text:
        raise ValueError("not in canonical JSON form (a byte was changed)")
    return rec, given, body


def record_hash(body: str, key: bytes | None) -> str:
    """Hex SHA-256 of ``body`` (canonical JSON without ``hash``), or HMAC-SHA256 with ``key``."""
    return hash_bytes(body.encode("utf-8"), key)


def hash_bytes(data: bytes, key: bytes | None) -> str:
    """:func:`record_hash` of a body already encoded as UTF-8."""
    if key is None:
        return hashlib.sha256(data).hexdigest()
    pads = _pads.get(key) or hmac_pads(key)
    inner = pads[0].copy()
    inner.update(data)
    outer = pads[1].copy()
    outer.update(inner.digest())
    return outer.hexdigest()


#: Per key, SHA-256 states that have absorbed the HMAC inner and outer pads (RFC 2104):
#: copying them is a third of the cost of ``hmac.new`` per record, whose OpenSSL setup
#: dominates for records of a few hundred bytes.
_pads: dict[bytes, tuple[hashlib._Hash, hashlib._Hash]] = {}


def hmac_pads(key: bytes) -> tuple[hashlib._Hash, hashlib._Hash]:
    """SHA-256 states that absorbed ``key``'s HMAC inner and outer pads (cached per key):
    HMAC(key, m) = outer.copy().update(inner.copy().update(m).digest()).hexdigest()."""
    pads = _pads.get(key)
    if pads is not None:
        return pads
    padded = hashlib.sha256(key).digest() if len(key) > 64 else key  # SHA-256's block size
    padded = padded.ljust(64, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in padded))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in padded))
    if len(_pads) > 64:  # a process holds a handful of keys; never grow without bound
        _pads.clear()
    _pads[key] = (inner, outer)
    return inner, outer


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
