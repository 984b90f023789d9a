"""A stream's own sealed payloads, on both stores: each batch's copy of its output is
sealed when a task is marked ``encrypt`` (encryption at rest off), and key rotation
re-wraps the copies and the window state, so a stream restarts once the old master key is
retired."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from xlib_pipeline import ENCRYPTED_MAGIC, Pipeline, PipelineManager

encryption = pytest.importorskip(
    "xlib_pipeline_encryption", reason="needs xlib-pipeline-encryption (nox -s tests installs it)"
)

MARKER = "SECRET-CARD-4111"


def payloads(pm: PipelineManager, name: str) -> tuple[list[bytes], bytes | None]:
    """The stream's batch output copies and its window state, as stored."""
    ckpt = pm.store.open_checkpoints()  # type: ignore[union-attr]
    try:
        rec = ckpt.load(name)
        batches = ckpt.batches(name, limit=1000)
    finally:
        ckpt.close()
    assert rec is not None
    return [bytes(b.output) for b in batches if b.output is not None], rec.window_state


def test_a_marked_task_seals_the_streams_copy_of_its_output(store_backend: Any) -> None:
    config = {"store": store_backend.section}
    with PipelineManager(config) as pm:
        p = Pipeline("cards")

        @p.task("mask")
        @pm.encrypt_data(tenant_id="acme")
        def mask(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [{**r, "card": MARKER} for r in batch]  # only this output holds it

        s = pm.stream(p, source=[{"id": n} for n in range(6)], sink=None, batch_size=2)
        assert s.status == "completed", s.error
        outputs, _ = payloads(pm, "cards")
    assert len(outputs) == 3
    assert all(o.startswith(ENCRYPTED_MAGIC) and MARKER.encode() not in o for o in outputs)


def windowed() -> Pipeline:
    p = Pipeline("windowed")
    p.add_task("sum", lambda w: {"start": w.start, "n": len(w)}, window={"size": 10, "field": "ts"})
    return p


def test_rotation_rewraps_a_streams_payloads(tmp_path: Path, store_backend: Any) -> None:
    keyfile = tmp_path / "secrets" / "ring.json"
    first = encryption.generate_key_file(keyfile)
    config = {
        "store": store_backend.section,
        "security": {"encryption_at_rest": True},
        "encryption": {"keyring": {"file": str(keyfile)}},
    }
    key_id = encryption.key_id_of
    rows = [{"ts": t} for t in range(25)]
    with PipelineManager(config) as pm:
        s = pm.stream(windowed(), source=rows[:15], sink=None, batch_size=5, name="w")
        assert s.status == "completed", s.error
        outputs, state = payloads(pm, "w")
    assert outputs and state is not None
    assert {key_id(b) for b in [*outputs, state]} == {first.id}
    second = encryption.add_key(keyfile)
    with PipelineManager(config) as pm:
        report = encryption.rotate_store(pm)
        outputs, state = payloads(pm, "w")
    assert report.active_key_id == second.id and state is not None
    assert {key_id(b) for b in [*outputs, state]} == {second.id}
    # Retire the old key: the stream continues from its checkpoint, its window state opened
    # with the new key alone, and only records 15..24 run.
    ring = json.loads(keyfile.read_text())
    ring["keys"] = [k for k in ring["keys"] if k["id"] == second.id]
    keyfile.write_text(json.dumps(ring))
    seen: list[Any] = []
    with PipelineManager(config) as pm:
        s = pm.stream(windowed(), source=rows, sink=seen.extend, batch_size=5, name="w")
        assert s.status == "completed", s.error
    assert sum(w["n"] for w in seen) == 10 and min(w["start"] for w in seen) >= 10
