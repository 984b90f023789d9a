"""Issue 18: the audit trail is keyed by default.

The attack: a record forged with a correct SHA-256 chain hash, appended to an unkeyed trail,
passed ``verify`` and was then anchored by the next writer.
"""

from __future__ import annotations

import json
import os
import stat

import pytest
from xlib_pipeline_audit import verify
from xlib_pipeline_audit._canonical import canonical, record_hash, render_line, split_line
from xlib_pipeline_audit._keys import default_key_path

from xlib_pipeline import ConfigError, Pipeline, PipelineManager
from xlib_pipeline.cli import main


def _run(config) -> PipelineManager:
    pm = PipelineManager(config)
    p = Pipeline("p")
    p.add_task("t", lambda: 1)
    assert pm.execute_pipeline(p).success
    return pm


def _forge(path) -> None:
    """Append a record whose hash is the plain SHA-256 of its body (no key)."""
    lines = path.read_text().splitlines()
    last, last_hash, _ = split_line(lines[-1])
    forged = {k: v for k, v in last.items() if k != "hash"}
    forged.update(seq=last["seq"] + 1, prev=last_hash, action="task.finished", task="payout")
    body = canonical(forged)
    with open(path, "a") as f:
        f.write(render_line(body, record_hash(body, None)) + "\n")


def test_audit_logging_keys_the_trail_with_a_private_key_file(tmp_path, _audit_home):
    pm = _run({"audit_logging": True})
    trail = pm.get_plugin("audit").path
    pm.close()
    key_file = default_key_path()
    assert key_file.exists()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert not str(key_file).startswith(str(_audit_home))
    head = json.loads((trail.parent / (trail.name + ".head")).read_text())
    assert head["alg"] == "hmac-sha256"
    assert verify(trail).ok  # the default key file is found


def test_forged_record_fails_verify_and_the_next_writer_refuses(tmp_path):
    trail = tmp_path / "audit.jsonl"
    _run({"audit": {"path": str(trail)}}).close()
    _forge(trail)
    report = verify(trail)
    assert not report.ok
    assert report.seq is not None or report.line is not None
    from xlib_pipeline_audit import AuditTrailError

    with pytest.raises((AuditTrailError, ConfigError)):
        _run({"audit": {"path": str(trail)}}).close()


def test_unkeyed_trails_still_possible_and_forgeable(tmp_path):
    """keyed: false is the old behaviour, documented as weaker: the forgery verifies."""
    trail = tmp_path / "plain.jsonl"
    _run({"audit": {"path": str(trail), "keyed": False}}).close()
    _forge(trail)
    assert verify(trail).ok


def test_existing_unkeyed_trail_is_refused_by_name(tmp_path):
    trail = tmp_path / "old.jsonl"
    _run({"audit": {"path": str(trail), "keyed": False}}).close()
    with pytest.raises(ConfigError, match=r"written without a key.*keyed: false") as info:
        PipelineManager({"audit": {"path": str(trail)}})
    assert info.value.key == "audit.keyed"
    _run({"audit": {"path": str(trail), "keyed": False}}).close()  # the way out works


def test_keyed_false_with_a_key_is_contradictory(monkeypatch):
    monkeypatch.setenv("H18_KEY", "k")
    with pytest.raises(ConfigError, match="keyed"):
        PipelineManager({"audit": {"keyed": False, "hmac_key_env": "H18_KEY"}})


def test_world_readable_default_key_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("XLIB_PIPELINE_KEYS_DIR", str(tmp_path / "keys"))
    _run({"audit_logging": True}).close()
    key_file = tmp_path / "keys" / "audit-hmac.key"
    os.chmod(key_file, 0o644)
    from xlib_pipeline import SecurityError

    with pytest.raises(SecurityError, match="readable by other users"):
        PipelineManager({"audit_logging": True})


def test_default_key_folder_inside_the_data_folder_is_refused(monkeypatch, _audit_home):
    monkeypatch.setenv("XLIB_PIPELINE_KEYS_DIR", str(_audit_home / "keys"))
    with pytest.raises(ConfigError, match="inside the data folder"):
        PipelineManager({"audit_logging": True})


def test_cli_verify_uses_the_default_key(tmp_path, capsys):
    trail = tmp_path / "audit.jsonl"
    _run({"audit": {"path": str(trail)}}).close()
    assert main(["audit", "verify", str(trail)]) == 0
    _forge(trail)
    assert main(["audit", "verify", str(trail)]) == 1
