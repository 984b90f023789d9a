"""Signed audit checkpoints: detect a rollback of the trail and its head to an older copy.

A trail and its ``.head`` anchor rolled back together to an older, consistent state verify
on their own: nothing inside them says records are missing. With ``audit.checkpoint_key_file``
(an Ed25519 private key, PEM; ``xlib-pipeline evidence keygen`` writes one) the plugin signs a
*checkpoint* at every run end and every ``audit.checkpoint_every`` records, into
``audit.checkpoints_dir`` (default ``<trail>.checkpoints/`` beside the trail; keep it on other
storage, or ship it elsewhere, so one rollback cannot take both). Each checkpoint is a DSSE
envelope (payload type :data:`PAYLOAD_TYPE`, Ed25519 over the DSSE PAE) of::

    {"v": 1, "trail": PATH, "seq": N, "head": HASH_OF_RECORD_N,
     "previous": SHA256_OF_THE_PREVIOUS_CHECKPOINT_FILE, "time": ISO-8601}

``audit verify TRAIL --checkpoints DIR`` checks the signatures, that the checkpoints chain,
and that the trail still holds each checkpointed record with the same hash: a trail that
ends before the newest checkpoint's ``seq`` was rolled back.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from xlib_pipeline import ConfigError
from xlib_pipeline.files import check_private_file

from ._canonical import GENESIS
from ._segments import series_files

PAYLOAD_TYPE = "application/vnd.xlib-pipeline.audit-checkpoint+json"
SUFFIX = ".checkpoint.json"


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def _key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def load_signing_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """The checkpoint signing key; refused when missing, readable by others or not Ed25519."""
    file = Path(path).expanduser()
    try:
        st = file.stat()
        data = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"audit.checkpoint_key_file {str(file)!r} does not exist (create an Ed25519 key "
            f"with 'xlib-pipeline evidence keygen {file}' or openssl genpkey -algorithm ed25519)",
            key="audit.checkpoint_key_file",
        ) from None
    check_private_file(file, st, "audit.checkpoint_key_file")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"audit.checkpoint_key_file {str(file)!r} is not a PEM private key ({exc})",
            key="audit.checkpoint_key_file",
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(
            f"audit.checkpoint_key_file {str(file)!r} is not an Ed25519 key",
            key="audit.checkpoint_key_file",
        )
    return key


def default_dir(trail: Path) -> Path:
    """``<trail>.checkpoints/`` beside the trail."""
    return trail.with_name(trail.name + ".checkpoints")


class Checkpointer:
    """Writes signed checkpoints of one trail; thread-safe."""

    def __init__(self, trail: Path, folder: Path, key: Ed25519PrivateKey, every: int) -> None:
        self.trail = trail
        self.folder = folder
        self.key = key
        self.every = every
        self._lock = threading.Lock()
        folder.mkdir(parents=True, exist_ok=True)
        pub = folder / "public-key.pem"
        pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if not pub.exists() or pub.read_bytes() != pem:
            pub.write_bytes(pem)
        last = latest(folder)
        self.last_seq = last[0] if last else 0
        self._previous = hashlib.sha256(last[1].read_bytes()).hexdigest() if last else GENESIS

    def due(self, seq: int) -> bool:
        """Whether ``every`` records were written since the last checkpoint."""
        return seq - self.last_seq >= self.every

    def write(self, seq: int, head: str) -> Path | None:
        """Sign a checkpoint of record ``seq`` whose hash is ``head`` (``None``: nothing new)."""
        with self._lock:
            if seq <= self.last_seq:
                return None
            body = {
                "v": 1,
                "trail": str(self.trail),
                "seq": seq,
                "head": head,
                "previous": self._previous,
                "time": datetime.now(UTC).isoformat(timespec="microseconds"),
            }
            payload = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
            envelope = {
                "payload": base64.b64encode(payload).decode(),
                "payloadType": PAYLOAD_TYPE,
                "signatures": [
                    {
                        "keyid": _key_id(self.key.public_key()),
                        "sig": base64.b64encode(self.key.sign(pae(PAYLOAD_TYPE, payload))).decode(),
                    }
                ],
            }
            data = (json.dumps(envelope, sort_keys=True) + "\n").encode()
            file = self.folder / f"{seq:012d}{SUFFIX}"
            tmp = file.with_name(file.name + ".tmp")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, file)
            self.last_seq = seq
            self._previous = hashlib.sha256(data).hexdigest()
            return file


def latest(folder: Path) -> tuple[int, Path] | None:
    """The newest checkpoint in ``folder`` as ``(seq, file)``."""
    files = sorted(folder.glob(f"*{SUFFIX}")) if folder.is_dir() else []
    if not files:
        return None
    return int(files[-1].name[: -len(SUFFIX)]), files[-1]


def verify_checkpoints(
    trail: str | os.PathLike[str], folder: str | os.PathLike[str], public_key: Any
) -> tuple[list[str], int]:
    """Problems found checking the checkpoints in ``folder`` against ``trail`` (empty when
    all hold) and how many checkpoints were checked. ``public_key`` is a PEM file path."""
    root = Path(folder)
    pub_file = Path(public_key) if public_key else root / "public-key.pem"
    try:
        pub = serialization.load_pem_public_key(pub_file.read_bytes())
    except (OSError, ValueError) as exc:
        return [f"cannot read the checkpoint public key {pub_file}: {exc}"], 0
    if not isinstance(pub, Ed25519PublicKey):
        return [f"{pub_file} is not an Ed25519 public key"], 0
    files = sorted(root.glob(f"*{SUFFIX}")) if root.is_dir() else []
    if not files:
        return [f"no checkpoint in {root}"], 0
    problems: list[str] = []
    wanted: dict[int, tuple[str, str]] = {}
    previous = GENESIS
    for file in files:
        raw = file.read_bytes()
        try:
            env = json.loads(raw)
            payload = base64.b64decode(env["payload"], validate=True)
            if env.get("payloadType") != PAYLOAD_TYPE:
                raise ValueError(f"payloadType {env.get('payloadType')!r}")
            ok = False
            for s in env.get("signatures", []):
                try:
                    pub.verify(base64.b64decode(s["sig"]), pae(PAYLOAD_TYPE, payload))
                    ok = True
                except (InvalidSignature, KeyError, ValueError):
                    continue
            if not ok:
                raise ValueError("no signature verifies with the public key")
            body = json.loads(payload)
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(f"checkpoint {file.name}: {exc}")
            previous = hashlib.sha256(raw).hexdigest()
            continue
        if body.get("previous") != previous:
            problems.append(
                f"checkpoint {file.name}: does not chain to the checkpoint before it "
                "(a checkpoint was removed or replaced)"
            )
        previous = hashlib.sha256(raw).hexdigest()
        wanted[int(body["seq"])] = (str(body["head"]), f"{file.name} ({body.get('time')})")
    found: dict[int, str] = {}
    last_seq = 0
    for file in series_files(Path(trail)):  # a rotated trail: every segment, oldest first
        with open(file, "rb") as fh:
            for line in fh:
                if not line.endswith(b"\n"):
                    break
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                seq = rec.get("seq")
                if isinstance(seq, int):
                    last_seq = seq
                    if seq in wanted:
                        found[seq] = str(rec.get("hash"))
    for seq, (head, name) in sorted(wanted.items()):
        if seq not in found:
            problems.append(
                f"ROLLBACK: the trail ends at seq {last_seq} but checkpoint {name} saw seq "
                f"{seq}: records {last_seq + 1}..{seq} (at least) were removed"
            )
            break
        if found[seq] != head:
            problems.append(
                f"the record at seq {seq} is not the one checkpoint {name} signed (the trail "
                "was rewritten from there)"
            )
    return problems, len(files)
