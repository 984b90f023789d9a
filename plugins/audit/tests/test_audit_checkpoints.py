"""Signed checkpoints detect a rollback of the trail and its head to an older copy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from xlib_pipeline import ConfigError, Pipeline, PipelineManager
from xlib_pipeline.cli import main


def _key(tmp_path: Path) -> Path:
    key = tmp_path / "keys" / "cp.pem"
    key.parent.mkdir()
    key.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key.chmod(0o600)
    return key


def _pipeline(n: int = 5) -> Pipeline:
    p = Pipeline("cp")
    for i in range(n):
        p.add_task(f"t{i}", lambda *a: 1, depends_on=[f"t{i - 1}"] if i else [])
    return p


def test_checkpoints_detect_a_rollback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trail = tmp_path / "data" / "audit.jsonl"
    cps = tmp_path / "elsewhere" / "checkpoints"
    config = {
        "audit": {
            "path": str(trail),
            "checkpoint_key_file": str(_key(tmp_path)),
            "checkpoints_dir": str(cps),
            "checkpoint_every": 4,
        }
    }
    with PipelineManager(config) as pm:
        pm.execute_pipeline(_pipeline())
        saved = tmp_path / "saved"
        saved.mkdir()
        shutil.copy(trail, saved / trail.name)
        shutil.copy(str(trail) + ".head", saved / (trail.name + ".head"))
        pm.execute_pipeline(_pipeline())
    files = sorted(cps.glob("*.checkpoint.json"))
    assert len(files) >= 4  # every 4 records and at each run end
    body = json.loads(__import__("base64").b64decode(json.loads(files[-1].read_text())["payload"]))
    assert set(body) == {"v", "trail", "seq", "head", "previous", "time"}
    args = ["audit", "verify", str(trail), "--checkpoints", str(cps)]
    assert main(args) == 0
    # roll the trail and its head back to the consistent copy taken after run 1
    shutil.copy(saved / trail.name, trail)
    shutil.copy(saved / (trail.name + ".head"), str(trail) + ".head")
    capsys.readouterr()
    assert main(["audit", "verify", str(trail)]) == 0  # undetectable without checkpoints
    assert main(args) == 1
    assert "ROLLBACK" in capsys.readouterr().err


def test_a_removed_checkpoint_breaks_the_chain(tmp_path: Path, capsys) -> None:
    trail = tmp_path / "audit.jsonl"
    cps = tmp_path / "cps"
    config = {
        "audit": {
            "path": str(trail),
            "checkpoint_key_file": str(_key(tmp_path)),
            "checkpoints_dir": str(cps),
        }
    }
    with PipelineManager(config) as pm:
        for _ in range(3):
            pm.execute_pipeline(_pipeline(2))
    files = sorted(cps.glob("*.checkpoint.json"))
    files[1].unlink()
    assert main(["audit", "verify", str(trail), "--checkpoints", str(cps)]) == 1
    assert "does not chain" in capsys.readouterr().err


def test_a_world_readable_checkpoint_key_is_refused(tmp_path: Path) -> None:
    key = _key(tmp_path)
    key.chmod(0o644)
    from xlib_pipeline import SecurityError

    with pytest.raises(SecurityError, match="chmod 600"):
        PipelineManager(
            {"audit": {"path": str(tmp_path / "a.jsonl"), "checkpoint_key_file": str(key)}}
        )
    with pytest.raises(ConfigError, match="does not exist"):
        PipelineManager(
            {
                "audit": {
                    "path": str(tmp_path / "a.jsonl"),
                    "checkpoint_key_file": str(tmp_path / "x"),
                }
            }
        )


def test_checkpoints_signed_by_another_key_fail_with_public_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trail = tmp_path / "audit.jsonl"
    cps = tmp_path / "cps"
    config = {
        "audit": {
            "path": str(trail),
            "checkpoint_key_file": str(_key(tmp_path)),
            "checkpoints_dir": str(cps),
        }
    }
    with PipelineManager(config) as pm:
        pm.execute_pipeline(_pipeline(2))
    other = tmp_path / "other.pub.pem"
    other.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    args = ["audit", "verify", str(trail), "--checkpoints", str(cps)]
    assert main([*args, "--public-key", str(cps / "public-key.pem")]) == 0
    capsys.readouterr()
    assert main([*args, "--public-key", str(other)]) == 1
    assert "no signature verifies" in capsys.readouterr().err
    # a checkpoint whose signed body was edited (seq moved back) no longer verifies either
    first = sorted(cps.glob("*.checkpoint.json"))[0]
    env = json.loads(first.read_text())
    import base64

    body = json.loads(base64.b64decode(env["payload"]))
    body["seq"] = 1
    env["payload"] = base64.b64encode(json.dumps(body).encode()).decode()
    first.write_text(json.dumps(env))
    assert main(args) == 1
    assert "no signature verifies" in capsys.readouterr().err


def test_bad_checkpoint_settings_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="checkpoint_every"):
        PipelineManager({"audit": {"path": str(tmp_path / "a.jsonl"), "checkpoint_every": 0}})


def test_checkpoints_hold_across_a_rotated_trail(tmp_path: Path) -> None:
    """Checkpointed records in closed segments are found there: no false rollback."""
    trail = tmp_path / "audit.jsonl"
    cps = tmp_path / "cps"
    config = {
        "audit": {
            "path": str(trail),
            "max_bytes": 4096,
            "checkpoint_key_file": str(_key(tmp_path)),
            "checkpoints_dir": str(cps),
        }
    }
    with PipelineManager(config) as pm:
        for _ in range(6):
            pm.execute_pipeline(_pipeline(4))
    assert list(tmp_path.glob("audit.0*.jsonl")), "the trail rotated"
    assert main(["audit", "verify", str(trail), "--checkpoints", str(cps)]) == 0
