"""Issue 18: a lost key is never replaced, and key problems are named as what they are."""

from __future__ import annotations

import json
import os

import pytest
from xlib_pipeline_encryption import generate_key_file

from xlib_pipeline import ConfigError, Pipeline, PipelineManager, SecurityError


def _pipeline(fail: dict[str, bool]) -> Pipeline:
    p = Pipeline("secure")

    @p.task("extract", tenant_id="acme")
    def extract():
        return {"rows": [1, 2, 3]}

    @p.task("load", depends_on=["extract"])
    def load(data):
        if fail["fail"]:
            raise RuntimeError("transient")
        return len(data["rows"])

    return p


def _config(tmp_path, keyfile=None):
    cfg = {
        "store": {"path": str(tmp_path / "runs.sqlite")},
        "security": {"encryption_at_rest": True},
    }
    if keyfile is not None:
        cfg["encryption"] = {"keyring": {"file": str(keyfile)}}
    return cfg


def _first_run(tmp_path, keyfile=None) -> str:
    fail = {"fail": True}
    with PipelineManager(_config(tmp_path, keyfile)) as pm:
        result = pm.execute_pipeline(_pipeline(fail))
    assert not result.success
    return result.run_id


def test_lost_default_key_is_not_replaced(tmp_path):
    """The default key file deleted: a resume used to write a brand-new master key file,
    hiding the loss. Now it refuses, naming the key id and the file."""
    rid = _first_run(tmp_path)
    key_dir = tmp_path / "keys"
    (key_file,) = list(key_dir.iterdir())
    key_id = json.loads(key_file.read_text())["keys"][0]["id"]
    key_file.unlink()
    with (
        PipelineManager(_config(tmp_path)) as pm,
        pytest.raises((ConfigError, SecurityError), match=key_id) as info,
    ):
        pm.execute_pipeline(_pipeline({"fail": False}), resume=rid)
    assert str(key_file) in str(info.value) and "restore" in str(info.value)
    assert not key_file.exists(), "a new key file was written over the loss"


def test_resume_with_a_keyring_lacking_the_key_names_it(tmp_path):
    old = tmp_path / "old.keys"
    first = generate_key_file(old)
    rid = _first_run(tmp_path, old)
    other = tmp_path / "other.keys"
    generate_key_file(other)
    with (
        PipelineManager(_config(tmp_path, other)) as pm,
        pytest.raises(SecurityError, match=f"master key '{first.id}' is missing"),
    ):
        pm.execute_pipeline(_pipeline({"fail": False}), resume=rid)


def test_world_readable_keyring_is_named_not_called_tampering(tmp_path):
    """A keyring with mode 0644 was reported as 'encrypted for another tenant, or altered'."""
    keyfile = tmp_path / "k.keys"
    generate_key_file(keyfile)
    rid = _first_run(tmp_path, keyfile)
    os.chmod(keyfile, 0o644)
    with PipelineManager(_config(tmp_path, keyfile)) as pm, pytest.raises(SecurityError) as info:
        pm.execute_pipeline(_pipeline({"fail": False}), resume=rid)
    text = str(info.value)
    assert "readable by other users" in text and "chmod 600" in text
    assert "another tenant" not in text and "altered" not in text


def test_invalid_keyring_is_named_not_called_tampering(tmp_path):
    keyfile = tmp_path / "k.keys"
    generate_key_file(keyfile)
    rid = _first_run(tmp_path, keyfile)
    keyfile.write_text("{not json")
    os.chmod(keyfile, 0o600)
    with (
        PipelineManager(_config(tmp_path, keyfile)) as pm,
        pytest.raises((SecurityError, ConfigError)) as info,
    ):
        pm.execute_pipeline(_pipeline({"fail": False}), resume=rid)
    text = str(info.value)
    assert "not valid JSON" in text
    assert "another tenant" not in text and "altered" not in text
