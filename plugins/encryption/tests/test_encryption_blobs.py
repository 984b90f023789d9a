"""Large outputs in the blob store, sealed chunk by chunk (STREAM): round trips, truncation,
reordering, wrong keys, tenants, rotation of the header only, and prune."""

from __future__ import annotations

import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from xlib_pipeline_encryption import Keyring, add_key, generate_key_file, rotate_store
from xlib_pipeline_encryption._stream import Opener, Sealer, scope_for

from xlib_pipeline import PayloadRef, Pipeline, PipelineManager, SecurityError, StoreError
from xlib_pipeline.store import BlobRef, BlobStore

MARKER = b"BLOB-MARKER-5ec2e7"
CHUNK = 4096
_HEAD = struct.Struct(">7sBII")


def ref(tenant: str | None = "acme", task: str = "big") -> PayloadRef:
    return PayloadRef(run_id="r1", pipeline="p", task=task, tenant=tenant)


def sealed_blob(tmp_path: Path, kms: Any, payload: bytes, tenant: str | None = "acme") -> Any:
    blobs = BlobStore(str(tmp_path / "blobs"), threshold=0, chunk_size=CHUNK)
    r = ref(tenant)
    out = blobs.dump(payload, lambda: Sealer(kms, r, scope_for(r, False)))
    assert isinstance(out, BlobRef)
    return blobs, out


def load(blobs: BlobStore, out: BlobRef, kms: Any, tenant: str | None = "acme") -> Any:
    return blobs.load(out, lambda header: Opener(lambda: kms, header, ref(tenant)))


def chunks_of(path: Path) -> tuple[bytes, list[bytes]]:
    data = path.read_bytes()
    _, _, chunk, hlen = _HEAD.unpack_from(data)
    head = data[: _HEAD.size + hlen]
    body = data[len(head) :]
    size = chunk + 16
    return head, [body[k : k + size] for k in range(0, len(body), size)]


@pytest.fixture
def kms(tmp_path: Path) -> Keyring:
    generate_key_file(tmp_path / "keys" / "ring.json")
    return Keyring.from_file(tmp_path / "keys" / "ring.json")


def test_round_trip_leaves_no_plaintext(tmp_path: Path, kms: Keyring) -> None:
    payload = MARKER * 3000
    blobs, out = sealed_blob(tmp_path, kms, payload)
    assert out.name.startswith("t-acme/")
    raw = (tmp_path / "blobs" / out.name).read_bytes()
    assert MARKER not in raw
    assert load(blobs, out, kms) == payload


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(size=st.integers(0, 5 * CHUNK), data=st.data())
def test_any_truncation_or_reordering_is_detected(
    tmp_path: Path, kms: Keyring, size: int, data: st.DataObject
) -> None:
    payload = bytes((i * 131 + size) % 251 for i in range(size))
    where = Path(tempfile.mkdtemp(dir=tmp_path))
    blobs, out = sealed_blob(where, kms, payload)
    path = where / "blobs" / out.name
    assert load(blobs, out, kms) == payload
    head, chunks = chunks_of(path)
    original = path.read_bytes()
    attack = data.draw(st.sampled_from(["cut_chunks", "cut_bytes", "swap", "flip", "append"]))
    if attack == "cut_chunks" and len(chunks) > 1:
        keep = data.draw(st.integers(1, len(chunks) - 1))
        path.write_bytes(head + b"".join(chunks[:keep]))
    elif attack == "swap" and len(chunks) > 1:
        i = data.draw(st.integers(0, len(chunks) - 2))
        chunks[i], chunks[i + 1] = chunks[i + 1], chunks[i]
        path.write_bytes(head + b"".join(chunks))
    elif attack == "append":
        path.write_bytes(original + chunks[-1])
    elif attack == "cut_bytes":
        cut = data.draw(st.integers(1, len(original) - len(head)))
        path.write_bytes(original[:-cut])
    else:
        pos = data.draw(st.integers(len(head), len(original) - 1))
        flipped = bytearray(original)
        flipped[pos] ^= 0x01
        path.write_bytes(bytes(flipped))
    if path.read_bytes() == original:
        return
    with pytest.raises((SecurityError, StoreError)):
        load(blobs, out, kms)


def test_a_wrong_key_or_another_tenant_fails(tmp_path: Path, kms: Keyring) -> None:
    payload = os.urandom(3 * CHUNK)
    blobs, out = sealed_blob(tmp_path, kms, payload)
    generate_key_file(tmp_path / "other" / "ring.json")
    other = Keyring.from_file(tmp_path / "other" / "ring.json")
    with pytest.raises(SecurityError, match="missing from the keyring"):
        load(blobs, out, other)
    with pytest.raises(SecurityError, match="another tenant"):
        load(blobs, out, kms, tenant="globex")


def test_chunk_keys_differ_per_blob(tmp_path: Path, kms: Keyring) -> None:
    """Each blob has its own data key and salt: equal chunks seal differently."""
    r = ref()
    a = Sealer(kms, r, "t-acme")
    b = Sealer(kms, r, "t-acme")
    chunk = memoryview(b"\0" * 64)
    assert a.seal(chunk, 0, True) != b.seal(chunk, 0, True)
    assert a.seal(chunk, 0, True) != a.seal(chunk, 1, True) != a.seal(chunk, 0, False)


def config(tmp_path: Path, keyfile: Path, **extra: Any) -> dict[str, Any]:
    return {
        "store": {"path": str(tmp_path / "runs.sqlite"), "blobs": {"threshold": 10_000}},
        "security": {"encryption_at_rest": True},
        "encryption": {"keyring": {"file": str(keyfile)}, **extra},
    }


def build(flaky: dict[str, bool], payload: bytes) -> Pipeline:
    p = Pipeline("blobby")

    @p.task("big", tenant_id="acme")
    def big() -> bytes:
        return payload

    @p.task("use", depends_on=["big"])
    def use(data: bytes) -> int:
        if flaky["fail"]:
            raise RuntimeError("transient")
        return len(data)

    return p


def test_rotation_rewrites_only_the_header_and_old_runs_resume(tmp_path: Path) -> None:
    keyfile = tmp_path / "secrets" / "ring.json"
    generate_key_file(keyfile)
    payload = MARKER * 10_000
    flaky = {"fail": True}
    with PipelineManager(config(tmp_path, keyfile)) as pm:
        failed = pm.execute_pipeline(build(flaky, payload))
        assert pm.store is not None
        (name,) = pm.store.blob_names()
    path = tmp_path / "runs.blobs" / name
    assert MARKER not in path.read_bytes()
    head_before, chunks_before = chunks_of(path)
    second = add_key(keyfile)
    with PipelineManager(config(tmp_path, keyfile)) as pm:
        report = rotate_store(pm)
    assert report.rewrapped >= 2  # the blob reference row and the blob header
    head_after, chunks_after = chunks_of(path)
    assert head_after != head_before and second.id.encode() in head_after
    assert chunks_after == chunks_before  # sealed chunks untouched
    # Retire the old key: the blob still opens.
    import json

    ring = json.loads(keyfile.read_text())
    ring["keys"] = [k for k in ring["keys"] if k["id"] == second.id]
    keyfile.write_text(json.dumps(ring))
    flaky["fail"] = False
    with PipelineManager(config(tmp_path, keyfile)) as pm:
        resumed = pm.execute_pipeline(build(flaky, payload), resume=failed.run_id)
        again = rotate_store(pm)
    assert resumed.success and resumed.final_result == len(payload)
    assert again.rewrapped == 0


def test_a_plaintext_blob_is_refused_when_encryption_is_required(tmp_path: Path) -> None:
    keyfile = tmp_path / "secrets" / "ring.json"
    generate_key_file(keyfile)
    payload = os.urandom(20_000)
    flaky = {"fail": True}
    plain = {"store": {"path": str(tmp_path / "runs.sqlite"), "blobs": {"threshold": 10_000}}}
    with PipelineManager(plain, entry_points=False) as pm:
        failed = pm.execute_pipeline(build(flaky, payload))
    flaky["fail"] = False
    with (
        PipelineManager(config(tmp_path, keyfile)) as pm,
        pytest.raises(SecurityError, match="not encrypted although encryption is required"),
    ):
        pm.execute_pipeline(build(flaky, payload), resume=failed.run_id)
    with PipelineManager(config(tmp_path, keyfile, allow_plaintext_reads=True)) as pm:
        resumed = pm.execute_pipeline(build(flaky, payload), resume=failed.run_id)
    assert resumed.success


def test_per_run_keys_give_each_run_its_own_blob(tmp_path: Path) -> None:
    keyfile = tmp_path / "secrets" / "ring.json"
    generate_key_file(keyfile)
    payload = os.urandom(20_000)
    with PipelineManager(config(tmp_path, keyfile, per_run_keys=True)) as pm:
        pm.execute_pipeline(build({"fail": False}, payload))
        pm.execute_pipeline(build({"fail": False}, payload))
        assert pm.store is not None
        names = pm.store.blob_names()
    assert len(names) == 2 and all(".r-" in n for n in names)
