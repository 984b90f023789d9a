"""Error texts quote data: with encryption and PII detection on, an address a task put in its
exception message appears nowhere in clear: not in the store, the lineage file, the audit
trail, nor the CLI's output; `runs show` gives it back to a reader who may see the data."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ADDRESS = "cy@example.net"
PLUGINS = ("xlib_pipeline_classification", "xlib_pipeline_lineage", "xlib_pipeline_encryption")

PIPELINE = textwrap.dedent(
    f"""
    from xlib_pipeline import Pipeline

    PIPELINE_CONFIG = {{
        "security_scanning": True,
        "data_lineage": True,
        "audit_logging": True,
        "security": {{"encryption_at_rest": True}},
    }}
    p = Pipeline("leaky")

    @p.task("load")
    def load():
        return [1, 2]

    @p.task("check", depends_on=["load"])
    def check(rows):
        raise ValueError("bad record <{ADDRESS}> in row 2")
    """
)


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        XLIB_PIPELINE_HOME=str(tmp_path / "home"),
        XLIB_PIPELINE_KEYS_DIR=str(tmp_path / "keys"),
        NO_COLOR="1",
    )
    return subprocess.run(
        [sys.executable, "-m", "xlib_pipeline.cli", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_pii_in_an_error_message_leaves_no_plaintext_anywhere(tmp_path: Path) -> None:
    missing = [m for m in PLUGINS if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs {missing} (installed by `nox -s tests`)")
    (tmp_path / "leaky.py").write_text(PIPELINE)
    run = cli(tmp_path, "run", "leaky.py", "--no-monitor")
    assert run.returncode == 1, run.stdout + run.stderr
    assert ADDRESS not in run.stdout + run.stderr
    assert "task 'check' failed: ValueError: [redacted:" in run.stderr and "email" in run.stderr
    home = tmp_path / "home"
    for f in home.iterdir():
        if f.is_file():
            assert ADDRESS.encode() not in f.read_bytes(), f.name
    events = [json.loads(line) for line in (home / "lineage.jsonl").read_text().splitlines()]
    fails = [e for e in events if e["eventType"] == "FAIL"]
    assert fails
    for e in fails:
        message = e["run"]["facets"]["errorMessage"]["message"]
        assert "ValueError: [redacted:" in message and "email" in message
    run_id = run.stdout.split("run_id: ", 1)[1].split()[0]
    shown = cli(tmp_path, "runs", "show", run_id)
    assert shown.returncode == 0, shown.stderr
    assert ADDRESS in shown.stdout  # decrypted for a reader who may read the data
