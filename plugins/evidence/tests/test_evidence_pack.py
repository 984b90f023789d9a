"""Signed attestations, packs, offline verification and tampering."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from xlib_pipeline_evidence import (
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    build,
    generate,
    key_id,
    load_private,
    open_envelope,
    pae,
    predicate_schema,
    verify,
)
from xlib_pipeline_evidence._dsse import load_public_pem

from xlib_pipeline import ConfigError, PipelineManager, SecurityError
from xlib_pipeline.cli import main


def _attestation(config: dict[str, Any], run_id: str) -> Path:
    return Path(config["store"]["path"]).parent / "evidence" / f"{run_id}.dsse.json"


def _build(config: dict[str, Any], run_id: str, out: Path, key: Path) -> Path:
    cfg = dict(config)
    cfg["evidence"] = {**config["evidence"], "enabled": False}
    with PipelineManager(cfg) as pm:
        return build(pm, run_id, out, load_private(key))


class TestAttestation:
    def test_run_end_attestation_is_a_signed_in_toto_statement(self, recorded, key_file) -> None:
        config, run_id = recorded
        env = json.loads(_attestation(config, run_id).read_text())
        assert env["payloadType"] == PAYLOAD_TYPE
        pub = load_private(key_file).public_key()
        st_ = open_envelope(env, pub)
        assert st_["_type"] == STATEMENT_TYPE
        assert st_["predicateType"] == PREDICATE_TYPE
        names = {s["name"] for s in st_["subject"]}
        assert names == {"claims/extract", "claims/clean", "claims/report"}
        p = st_["predicate"]
        assert p["runId"] == run_id and p["principal"] == "alice"
        clean = next(t for t in p["tasks"] if t["name"] == "clean")
        assert clean["attempts"] == 2 and clean["codeDigest"]["of"] == "source"
        assert [a["outcome"] for a in p["attempts"] if a["task"] == "clean"] == [
            "failed",
            "succeeded",
        ]
        secs = p["sections"]
        assert set(secs) == {"audit", "lineage", "classification", "encryption"}
        assert secs["audit"]["firstSeq"] <= secs["audit"]["lastSeq"]
        assert secs["classification"]["levels"]["report"] == "confidential"
        assert set(secs["encryption"]["keys"]) == {"extract", "clean", "report"}
        assert secs["lineage"]["taskStarts"] == 3
        assert "warehouse.claims_raw" in " ".join(secs["lineage"]["datasets"]["outputs"])

    def test_predicate_matches_the_shipped_schema(self, recorded, key_file) -> None:
        jsonschema = pytest.importorskip("jsonschema")
        config, run_id = recorded
        env = json.loads(_attestation(config, run_id).read_text())
        pred = open_envelope(env, load_private(key_file).public_key())["predicate"]
        jsonschema.validate(pred, json.loads(predicate_schema()))

    def test_the_signature_covers_the_dsse_pae(self, recorded, key_file) -> None:
        import base64

        config, run_id = recorded
        env = json.loads(_attestation(config, run_id).read_text())
        pub = load_private(key_file).public_key()
        payload = base64.b64decode(env["payload"])
        pub.verify(base64.b64decode(env["signatures"][0]["sig"]), pae(PAYLOAD_TYPE, payload))
        assert env["signatures"][0]["keyid"] == key_id(pub)

    def test_secrets_never_reach_the_config_digest(self, tmp_path, key_file) -> None:
        from xlib_pipeline_evidence._predicate import config_digest

        a = config_digest({"audit": {"hmac_key": "s3cret", "hmac_key_file": "/k"}})
        b = config_digest({"audit": {"hmac_key": "other", "hmac_key_file": "/k"}})
        assert a == b and a["redacted"] == ["audit.hmac_key"]

    def test_a_missing_key_is_refused_when_the_manager_is_built(self, tmp_path) -> None:
        with pytest.raises(ConfigError, match="evidence keygen"):
            PipelineManager({"store": True, "evidence": {"signing_key_file": str(tmp_path / "x")}})

    def test_a_world_readable_key_is_refused(self, tmp_path, key_file) -> None:
        key_file.chmod(0o644)
        with pytest.raises(SecurityError, match="chmod 600"):
            PipelineManager({"store": True, "evidence": {"signing_key_file": str(key_file)}})

    def test_keys_inside_the_data_folder_are_refused(self, tmp_path) -> None:
        with pytest.raises(ConfigError, match="inside the data folder"):
            generate(tmp_path / "home" / "k.pem")

    def test_keygen_writes_0600_and_refuses_to_overwrite(self, tmp_path) -> None:
        target = tmp_path / "keys" / "ev.pem"
        assert main(["evidence", "keygen", str(target)]) == 0
        assert target.stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "keys" / "ev.pub.pem").exists()
        with pytest.raises(ConfigError, match="already exists"):
            generate(target)


class TestPack:
    def test_build_and_verify_round_trip(self, recorded, key_file, tmp_path) -> None:
        config, run_id = recorded
        out = _build(config, run_id, tmp_path / "pack", key_file)
        names = {p.name for p in out.iterdir()}
        assert {
            "index.html",
            "attestation.dsse.json",
            "run.json",
            "audit.jsonl",
            "lineage.jsonl",
            "public-key.pem",
            "manifest.json",
        } <= names
        res = verify(out, public_key=key_file.with_name("signing.pub.pem"))
        assert res, [c for c in res.failures]
        html = (out / "index.html").read_text()
        assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert "https://" not in html

    def test_cli_build_and_verify(self, recorded, key_file, tmp_path, capsys) -> None:
        config, run_id = recorded
        cfg = tmp_path / "config.json"
        cfg.write_text(json.dumps(config))
        out = tmp_path / "pack-cli"
        assert main(["evidence", "build", run_id, "-o", str(out), "--config", str(cfg)]) == 0
        pub = str(key_file.with_name("signing.pub.pem"))
        assert main(["evidence", "verify", str(out), "--public-key", pub]) == 0
        (out / "run.json").write_text("{}")
        capsys.readouterr()
        assert main(["evidence", "verify", str(out), "--public-key", pub]) == 1
        err = capsys.readouterr()
        assert "run.json" in err.err and "manifest" in err.err

    def test_build_from_the_store_alone_finds_the_recorded_trails(
        self, recorded, key_file, tmp_path
    ) -> None:
        config, run_id = recorded
        out = tmp_path / "pack2"
        store = config["store"]["path"]
        assert (
            main(
                [
                    "evidence",
                    "build",
                    run_id,
                    "-o",
                    str(out),
                    "--store",
                    store,
                    "--key",
                    str(key_file),
                ]
            )
            == 0
        )
        assert (out / "audit.jsonl").exists() and (out / "lineage.jsonl").exists()
        assert verify(out)

    @pytest.mark.parametrize(
        "name",
        [
            "index.html",
            "run.json",
            "audit.jsonl",
            "lineage.jsonl",
            "public-key.pem",
            "manifest.json",
            "attestation.dsse.json",
            "VERIFY.md",
        ],
    )
    def test_tampering_with_any_file_fails_naming_it(
        self, recorded, key_file, tmp_path, name
    ) -> None:
        config, run_id = recorded
        out = _build(config, run_id, tmp_path / "pack", key_file)
        p = out / name
        data = bytearray(p.read_bytes())
        i = len(data) // 2
        data[i] = (data[i] + 1) % 256 or 1
        p.write_bytes(bytes(data))
        res = verify(out, public_key=key_file.with_name("signing.pub.pem"))
        assert not res
        assert name in {c.file for c in res.failures}, res.failures

    def test_an_extra_file_fails(self, recorded, key_file, tmp_path) -> None:
        config, run_id = recorded
        out = _build(config, run_id, tmp_path / "pack", key_file)
        (out / "extra.txt").write_text("x")
        res = verify(out)
        assert not res and "extra.txt" in {c.file for c in res.failures}

    def test_a_pack_signed_by_another_key_fails_with_public_key(
        self, recorded, key_file, tmp_path
    ) -> None:
        config, run_id = recorded
        out = _build(config, run_id, tmp_path / "pack", key_file)
        other, other_pub, _ = generate(tmp_path / "keys" / "other.pem")
        res = verify(out, public_key=other_pub)
        assert not res
        assert "attestation.dsse.json" in {c.file for c in res.failures}
        # a forger who re-signs everything with their own key still fails with --public-key
        forged = tmp_path / "forged"
        shutil.copytree(out, forged)
        from xlib_pipeline_evidence._dsse import open_envelope as op
        from xlib_pipeline_evidence._dsse import sign

        pub = load_private(key_file).public_key()
        st_ = op(json.loads((forged / "attestation.dsse.json").read_text()), pub)
        (forged / "attestation.dsse.json").write_text(json.dumps(sign(st_, load_private(other))))
        assert not verify(forged, public_key=key_file.with_name("signing.pub.pem"))

    def test_a_changed_store_output_refuses_the_build(self, recorded, key_file, tmp_path) -> None:
        import sqlite3

        config, run_id = recorded
        with sqlite3.connect(config["store"]["path"]) as c:
            c.execute(
                "UPDATE tasks SET output = ? WHERE run_id = ? AND task = 'report'",
                (b"forged", run_id),
            )
        with pytest.raises(SecurityError, match="claims/report"):
            _build(config, run_id, tmp_path / "pack", key_file)

    def test_a_run_without_attestation_says_why(self, tmp_path, key_file, make_pipeline) -> None:
        from xlib_pipeline import StoreError

        config = {"store": {"path": str(tmp_path / "home" / "runs.sqlite")}}
        with PipelineManager(config) as pm:
            rid = pm.execute_pipeline(make_pipeline()).run_id
        with PipelineManager(config) as pm, pytest.raises(StoreError, match="not on when it ran"):
            build(pm, rid, tmp_path / "pack", load_private(key_file))

    def test_a_broken_audit_chain_shows_in_the_badge_and_fails(
        self, recorded, key_file, tmp_path
    ) -> None:
        from xlib_pipeline_evidence._verify import check_audit

        config, run_id = recorded
        out = _build(config, run_id, tmp_path / "pack", key_file)
        lines = (out / "audit.jsonl").read_bytes().splitlines()
        rec = json.loads(lines[2])
        rec["outcome"] = "forged"
        lines[2] = json.dumps(rec, sort_keys=True, separators=(",", ":")).encode()
        assert check_audit(b"\n".join(lines) + b"\n", {})

    def test_a_missing_lineage_event_fails(self, recorded, key_file, tmp_path) -> None:
        from xlib_pipeline_evidence._verify import check_lineage

        config, run_id = recorded
        out = _build(config, run_id, tmp_path / "pack", key_file)
        pred = json.loads((out / "run.json").read_text())["predicate"]
        lines = (out / "lineage.jsonl").read_bytes().splitlines()

        def clean_start(line: bytes) -> bool:  # other STARTs name claims.clean as a dependency
            e = json.loads(line)
            return bool(e["eventType"] == "START" and e["job"]["name"] == "claims.clean")

        kept = [ln for ln in lines if not clean_start(ln)]
        assert len(kept) == len(lines) - 1
        probs = check_lineage(b"\n".join(kept), pred)
        assert probs and "clean" in probs[0]


def test_a_shredded_run_still_builds_and_verifies(
    tmp_path, key_file, make_pipeline, full_config
) -> None:
    from xlib_pipeline_encryption import shred_tenant

    from xlib_pipeline import DataShreddedError

    config = full_config(tmp_path, key_file)
    with PipelineManager(config) as pm:
        run_id = pm.execute_pipeline(make_pipeline(), tenant_id="acme").run_id
    with PipelineManager(config) as pm:
        assert shred_tenant(pm, "acme").shredded == 3
        with pytest.raises(DataShreddedError):
            pm.execute_pipeline(make_pipeline(), tenant_id="acme", resume=run_id)
    out = _build(config, run_id, tmp_path / "pack", key_file)
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["shredded"] == ["clean", "extract", "report"]
    assert len(run_json["subjects"]) == 3  # the digests remain
    assert verify(out, public_key=key_file.with_name("signing.pub.pem"))
    assert "(shredded)" in (out / "index.html").read_text()


class TestComplianceReport:
    def test_report_matches_run_json(self, recorded, key_file, tmp_path) -> None:
        config, run_id = recorded
        with PipelineManager(config) as pm:
            rep = pm.compliance_report(run_id)
        assert rep.run_id == run_id and rep.principal == "alice"
        assert rep.task("clean").attempts == 2
        assert rep.task("report").classification == "confidential"
        assert rep.task("report").key_id is not None
        assert rep.audit is not None and rep.audit.first_seq <= rep.audit.last_seq
        assert rep.lineage is not None and rep.lineage.task_terminals == 3
        out = _build(config, run_id, tmp_path / "pack", key_file)
        run_json = json.loads((out / "run.json").read_text())
        assert rep.signer_key_id == run_json["signer"]["keyid"]
        assert [s.name for s in rep.subjects] == [s["name"] for s in run_json["subjects"]]

    def test_report_right_after_the_run_in_the_same_manager(
        self, tmp_path, key_file, make_pipeline, full_config
    ) -> None:
        with PipelineManager(full_config(tmp_path, key_file)) as pm:
            result = pm.execute_pipeline(make_pipeline())
            rep = pm.compliance_report(result.run_id)  # waits for the background signer
            assert rep.status == "succeeded" and len(rep.tasks) == 3

    def test_a_tampered_attestation_is_refused(self, recorded) -> None:
        config, run_id = recorded
        path = _attestation(config, run_id)
        env = json.loads(path.read_text())
        env["signatures"][0]["sig"] = env["signatures"][0]["sig"][::-1]
        path.write_text(json.dumps(env))
        with PipelineManager(config) as pm, pytest.raises(SecurityError, match="does not verify"):
            pm.compliance_report(run_id)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_flipping_any_single_byte_fails_verification(recorded, key_file, tmp_path, data) -> None:
    config, run_id = recorded
    base = tmp_path / "base"
    if not base.exists():
        _build(config, run_id, base, key_file)
    pack = tmp_path / f"p{data.draw(st.integers(0, 10**9))}"
    shutil.copytree(base, pack)
    files = sorted(p.name for p in pack.iterdir())
    name = data.draw(st.sampled_from(files))
    raw = bytearray((pack / name).read_bytes())
    i = data.draw(st.integers(0, len(raw) - 1))
    bit = data.draw(st.integers(0, 7))
    raw[i] ^= 1 << bit
    (pack / name).write_bytes(bytes(raw))
    res = verify(pack, public_key=key_file.with_name("signing.pub.pem"))
    assert not res
    assert name in {c.file for c in res.failures}
    shutil.rmtree(pack)


def test_public_key_pem_roundtrip(key_file) -> None:
    pub = load_private(key_file).public_key()
    from xlib_pipeline_evidence._dsse import public_pem

    assert key_id(load_public_pem(public_pem(pub), "x")) == key_id(pub)


def test_packs_of_runs_in_a_rotated_audit_trail_verify(
    tmp_path, key_file, make_pipeline, full_config
) -> None:
    """The audit excerpt is read from the whole series once the trail has rotated."""
    config = full_config(tmp_path, key_file)
    config["audit"] = {**config["audit"], "max_bytes": 4096}
    with PipelineManager(config) as pm:
        run_ids = [pm.execute_pipeline(make_pipeline()).run_id for _ in range(4)]
    home = Path(config["audit"]["path"]).parent
    assert list(home.glob("audit.0*.jsonl")), "the trail rotated"
    pub = key_file.with_name("signing.pub.pem")
    for n, run_id in enumerate((run_ids[0], run_ids[-1])):
        out = _build(config, run_id, tmp_path / f"pack{n}", key_file)
        res = verify(out, public_key=pub)
        assert res, [c for c in res.failures]
        excerpt = (out / "audit.jsonl").read_text()
        assert run_id in excerpt and '"run.finished"' in excerpt
