"""Crypto-shredding: one tenant's data becomes unreadable, others stay, the shred is audited."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from xlib_pipeline_encryption import shred_tenant

from xlib_pipeline import (
    DataShreddedError,
    PayloadRef,
    Pipeline,
    PipelineManager,
    SecurityError,
)
from xlib_pipeline.cli import main


def _pipeline() -> Pipeline:
    p = Pipeline("billing")

    @p.task(tenant_id="acme")
    def acme_rows() -> list[str]:
        return ["acme secret"]

    @p.task(tenant_id="globex")
    def globex_rows() -> list[str]:
        return ["globex data"]

    @p.task(tenant_id="acme")
    def acme_fails() -> None:
        raise ValueError("card 4111 1111 1111 1111 rejected")

    return p


def _config(tmp_path: Path) -> dict[str, object]:
    pytest.importorskip(
        "xlib_pipeline_audit", reason="the shred is audited: needs xlib-pipeline-audit"
    )
    return {
        "store": {"path": str(tmp_path / "runs.sqlite")},
        "security": {"encryption_at_rest": True},
        "audit": {"path": str(tmp_path / "audit.jsonl")},
    }


def _read(pm: PipelineManager, run_id: str, task: str) -> object:
    rec, tasks = pm.read_run(run_id)
    assert task in tasks, (task, sorted(tasks), run_id)
    tr = tasks[task]
    from xlib_pipeline import PayloadRef

    ref = PayloadRef(run_id=run_id, pipeline=rec.pipeline, task=task, tenant=tr.tenant)
    import pickle

    data = pm.hooks.decrypt(data=bytes(tr.output), ref=ref)
    return pickle.loads(data)


def test_shred_makes_one_tenant_unreadable_and_is_audited(tmp_path: Path) -> None:
    config = _config(tmp_path)
    with PipelineManager(config) as pm:
        run_id = pm.execute_pipeline(_pipeline()).run_id
        assert _read(pm, run_id, "acme_rows") == ["acme secret"]
        report = shred_tenant(pm, "acme")
        assert report.shredded == 1 and report.audited and report.texts_erased >= 2
        with pytest.raises(DataShreddedError, match="crypto-shredded") as err:
            _read(pm, run_id, "acme_rows")
        assert isinstance(err.value, SecurityError)
        assert _read(pm, run_id, "globex_rows") == ["globex data"]  # others stay readable
        rec, tasks = pm.read_run(run_id)
        failed = tasks["acme_fails"]
        for text, kind in ((failed.error, "error"), (failed.traceback, "traceback")):
            assert isinstance(text, bytes), "error texts are stored sealed"
            ref = PayloadRef(
                run_id=run_id, pipeline=rec.pipeline, task="acme_fails", tenant="acme", kind=kind
            )
            with pytest.raises(DataShreddedError):
                pm.hooks.decrypt(data=text, ref=ref)
    with PipelineManager(config) as pm:  # a fresh process-like manager: no cached key
        with pytest.raises(DataShreddedError):
            _read(pm, run_id, "acme_rows")
        again = shred_tenant(pm, "acme")  # idempotent: the output and its texts are gone
        assert again.shredded == 0 and again.texts_erased == 0 and again.already >= 3
    trail = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    shred = [r for r in trail if r.get("action") == "keys.shred"]
    assert len(shred) == 2 and shred[0]["outcome"] == "succeeded"
    assert shred[0]["details"]["tenant"] == "acme"
    assert shred[0]["details"]["outputs_shredded"] == 1
    assert shred[1]["details"]["already_shredded"] >= 1


def test_keys_shred_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    with PipelineManager(config) as pm:
        run_id = pm.execute_pipeline(_pipeline()).run_id
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(config))
    assert main(["keys", "shred", "--tenant", "acme", "--config", str(cfg)]) == 0
    assert "1 data key(s) destroyed" in capsys.readouterr().out
    with PipelineManager(config) as pm, pytest.raises(DataShreddedError):
        _read(pm, run_id, "acme_rows")


def test_shred_without_a_tenant_is_refused(tmp_path: Path) -> None:
    with PipelineManager(_config(tmp_path)) as pm:
        with pytest.raises(ValueError, match="the tenant to shred"):
            shred_tenant(pm, "")
        with pytest.raises(ValueError, match="the tenant to shred"):
            shred_tenant(pm, "../etc")


def test_clear_error_texts_of_the_tenant_are_erased(tmp_path: Path) -> None:
    """Without encryption at rest, outputs and error texts are stored in clear: shredding
    erases them (nothing to shred cryptographically), and other tenants keep theirs."""
    config = {"store": {"path": str(tmp_path / "runs.sqlite")}}
    with PipelineManager(config) as pm:
        p = _pipeline()

        @p.task(tenant_id="globex")
        def globex_fails() -> None:
            raise ValueError("globex keeps this")

        run_id = pm.execute_pipeline(p).run_id
        report = shred_tenant(pm, "acme")
        assert report.plaintext_erased == 1 and report.texts_erased >= 1
        assert not report.audited
        _, tasks = pm.read_run(run_id)
        # The card number with its spaces: a bare "4111" also occurs in float timestamps.
        assert "4111 1111" not in str(tasks["acme_fails"].error)
        assert tasks["acme_fails"].traceback is None
        events = json.dumps([list(map(str, e)) for e in pm.store.get_events(run_id)])
        assert "4111 1111" not in events
        assert "globex keeps this" in str(tasks["globex_fails"].error)
        with pytest.raises(DataShreddedError):
            _read(pm, run_id, "acme_rows")


def test_shredding_needs_manage_keys_when_access_control_is_on(tmp_path: Path) -> None:
    from xlib_pipeline import hookimpl

    class Deny:
        @hookimpl
        def check_access(self, principal, permission, tenant, action):  # type: ignore[no-untyped-def]
            if permission == "manage_keys":
                raise SecurityError(f"{principal} may not {action}")

    with PipelineManager(_config(tmp_path)) as pm:
        run_id = pm.execute_pipeline(_pipeline()).run_id
        pm.register(Deny(), name="deny")
        with pytest.raises(SecurityError, match="keys shred --tenant acme"):
            shred_tenant(pm, "acme", principal="mallory")
    with PipelineManager(_config(tmp_path)) as pm:
        assert _read(pm, run_id, "acme_rows") == ["acme secret"]  # nothing was shredded


def test_large_outputs_in_the_blob_store_are_shredded_too(tmp_path: Path) -> None:
    """A tenant's output past store.blobs.threshold lives in a blob whose header holds its
    own wrapped data key: shredding destroys that key too, so the blob cannot be opened even
    with every master key and the blob file; another tenant's blob stays readable."""
    from xlib_pipeline_encryption import generate_key_file

    from xlib_pipeline.store import BlobRef

    keyfile = tmp_path / "secrets" / "ring.json"
    generate_key_file(keyfile)
    config = {
        "store": {"path": str(tmp_path / "runs.sqlite"), "blobs": {"threshold": 10_000}},
        "security": {"encryption_at_rest": True},
        "encryption": {"keyring": {"file": str(keyfile)}},
    }
    p = Pipeline("lake")

    @p.task(tenant_id="acme")
    def acme_big() -> bytes:
        return b"ACME-ROW " * 5_000

    @p.task(tenant_id="globex")
    def globex_big() -> bytes:
        return b"GLOBEX-ROW " * 5_000

    def output(pm: PipelineManager, run_id: str, task: str) -> object:
        rec, tasks = pm.read_run(run_id)
        tr = tasks[task]
        ref = PayloadRef(run_id=run_id, pipeline=rec.pipeline, task=task, tenant=tr.tenant)
        assert pm.store is not None
        blob = BlobRef.decode(pm.hooks.decrypt(data=bytes(tr.output), ref=ref))
        assert blob is not None, "a large output is stored as a blob reference"
        return pm.store.blobs.load(
            blob, lambda header: pm.hooks.decrypt_stream(header=header, ref=ref)
        )

    with PipelineManager(config) as pm:
        run_id = pm.execute_pipeline(p).run_id
        assert pm.store is not None
        assert len(pm.store.blob_names()) == 2
        before = {n: (tmp_path / "runs.blobs" / n).read_bytes() for n in pm.store.blob_names()}
        report = shred_tenant(pm, "acme")
        assert report.blobs_shredded == 1
        assert output(pm, run_id, "globex_big") == b"GLOBEX-ROW " * 5_000
    # A fresh manager with the same keyring: the acme blob reference row is shredded, and
    # so is the blob itself (read straight from the blob store, bypassing the row).
    with PipelineManager(config) as pm:
        with pytest.raises(DataShreddedError):
            output(pm, run_id, "acme_big")
        assert pm.store is not None
        changed = [
            n
            for n in pm.store.blob_names()
            if (tmp_path / "runs.blobs" / n).read_bytes() != before[n]
        ]
        assert len(changed) == 1
        name = changed[0]
        ref = PayloadRef(run_id=run_id, pipeline="lake", task="acme_big", tenant="acme")
        size = len(before[name])
        blob = BlobRef(name=name, size=size)  # the reference the shredded row held
        with pytest.raises(DataShreddedError, match="crypto-shredded"):
            pm.store.blobs.load(
                blob, lambda header: pm.hooks.decrypt_stream(header=header, ref=ref)
            )
        again = shred_tenant(pm, "acme")
        assert again.blobs_shredded == 0 and again.already >= 2
