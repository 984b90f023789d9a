"""DSSE envelopes signed with Ed25519 (``cryptography``), carrying in-toto Statements v1.

The format is the one the DSSE specification defines, nothing of our own: the signature
covers ``PAE(payloadType, payload)`` = ``"DSSEv1" SP len(type) SP type SP len(body) SP
body`` (lengths in ASCII decimal); the envelope is ``{"payload": base64(body),
"payloadType": type, "signatures": [{"keyid": ..., "sig": base64(signature)}]}``. The
``keyid`` is the hex SHA-256 of the raw 32-byte Ed25519 public key.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

#: in-toto Statement v1 ``_type``.
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
#: DSSE ``payloadType`` of an in-toto statement.
PAYLOAD_TYPE = "application/vnd.in-toto+json"


class EnvelopeError(ValueError):
    """An envelope that is malformed or whose signature does not verify."""


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding of ``payload``."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def key_id(public: Ed25519PublicKey) -> str:
    """Hex SHA-256 of the raw public key: the ``keyid`` of its signatures."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def public_pem(public: Ed25519PublicKey) -> bytes:
    """The SubjectPublicKeyInfo PEM of ``public``."""
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_pem(data: bytes, source: str) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM; EnvelopeError naming ``source`` otherwise."""
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise EnvelopeError(f"{source} is not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise EnvelopeError(f"{source} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def statement_bytes(statement: dict[str, Any]) -> bytes:
    """The payload bytes of a statement (compact JSON, sorted keys, UTF-8)."""
    return json.dumps(statement, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(statement: dict[str, Any], private: Ed25519PrivateKey) -> dict[str, Any]:
    """A DSSE envelope holding ``statement``, signed with ``private``."""
    return sign_payload(statement_bytes(statement), private)


def sign_payload(payload: bytes, private: Ed25519PrivateKey) -> dict[str, Any]:
    """A DSSE envelope holding the statement already serialised as ``payload``."""
    sig = private.sign(pae(PAYLOAD_TYPE, payload))
    return {
        "payload": base64.b64encode(payload).decode(),
        "payloadType": PAYLOAD_TYPE,
        "signatures": [
            {"keyid": key_id(private.public_key()), "sig": base64.b64encode(sig).decode()}
        ],
    }


def open_envelope(envelope: Any, public: Ed25519PublicKey) -> dict[str, Any]:
    """Verify ``envelope`` with ``public`` and return its in-toto statement.

    Raises EnvelopeError saying what is wrong: not an envelope, another payload type, no
    signature by this key, a signature that does not verify, a payload that is not a
    Statement v1.
    """
    return open_payload(envelope, public)[0]


def open_payload(envelope: Any, public: Ed25519PublicKey) -> tuple[dict[str, Any], bytes]:
    """:func:`open_envelope`, also returning the verified payload bytes."""
    if not isinstance(envelope, dict):
        raise EnvelopeError("not a DSSE envelope (expected a JSON object)")
    if envelope.get("payloadType") != PAYLOAD_TYPE:
        raise EnvelopeError(
            f"payloadType is {envelope.get('payloadType')!r}, expected {PAYLOAD_TYPE!r}"
        )
    try:
        payload = base64.b64decode(envelope["payload"], validate=True)
    except (KeyError, TypeError, ValueError):
        raise EnvelopeError("the envelope's payload is missing or not base64") from None
    kid = key_id(public)
    sigs = envelope.get("signatures")
    if not isinstance(sigs, list) or not sigs:
        raise EnvelopeError("the envelope has no signatures")
    message = pae(PAYLOAD_TYPE, payload)
    ok = False
    for entry in sigs:
        if not isinstance(entry, dict):
            continue
        if entry.get("keyid") not in (None, "", kid):
            continue
        try:
            public.verify(base64.b64decode(entry.get("sig", ""), validate=True), message)
            ok = True
            break
        except (InvalidSignature, ValueError, TypeError):
            continue
    if not ok:
        ids = ", ".join(str(e.get("keyid")) for e in sigs if isinstance(e, dict))
        raise EnvelopeError(
            f"no signature verifies with key {kid[:16]}… (signed by key id(s) {ids})"
        )
    try:
        statement = json.loads(payload)
    except ValueError as exc:
        raise EnvelopeError(f"the signed payload is not JSON ({exc})") from None
    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
        raise EnvelopeError(f"the signed payload is not an in-toto Statement v1 ({STATEMENT_TYPE})")
    return statement, payload


def unverified_statement(envelope: Any) -> dict[str, Any]:
    """The statement inside ``envelope`` without checking the signature (for display)."""
    try:
        out = json.loads(base64.b64decode(envelope["payload"]))
    except Exception as exc:
        raise EnvelopeError(f"the envelope's payload cannot be read ({exc})") from None
    if not isinstance(out, dict):
        raise EnvelopeError("the envelope's payload is not a JSON object")
    return out
