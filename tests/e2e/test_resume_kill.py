"""Crash and resume for real: kill -9 a running ``xlib-pipeline run`` and resume it."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

PIPELINE = textwrap.dedent(
    """
    import os, time
    from xlib_pipeline import Pipeline

    LOG = os.environ["MARKER_LOG"]
    pipeline = Pipeline("stages")

    def stage(name, delay):
        def run(*ups):
            with open(LOG, "a") as f:
                f.write(f"start {name}\\n")
            time.sleep(delay)
            value = {"name": name, "sum": sum(u["sum"] for u in ups) + len(name)}
            with open(LOG, "a") as f:
                f.write(f"end {name}\\n")
            return value
        return run

    pipeline.add_task("extract", stage("extract", 0.15))
    for part in ("a", "b", "c"):
        pipeline.add_task(f"clean_{part}", stage(f"clean_{part}", 0.25), depends_on=["extract"])
        pipeline.add_task(
            f"enrich_{part}", stage(f"enrich_{part}", 0.25), depends_on=[f"clean_{part}"]
        )
    pipeline.add_task("join", stage("join", 0.15), depends_on=[f"enrich_{p}" for p in "abc"])
    pipeline.add_task("publish", stage("publish", 0.15), depends_on=["join"])
    """
)


def cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xlib_pipeline.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def start_run(store: Path, *, env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    """Start ``xlib-pipeline run stages.py`` on 2 workers, recording into ``store``."""
    args = ["run", "stages.py", "--no-monitor", "--store", str(store), "--max-workers", "2"]
    return subprocess.Popen(
        [sys.executable, "-m", "xlib_pipeline.cli", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def final_json(stdout: str) -> object:
    return json.loads(stdout.split("\n", 1)[1])


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    (tmp_path / "stages.py").write_text(PIPELINE)
    env = {**os.environ, "XLIB_PIPELINE_HOME": str(tmp_path / "home")}
    return tmp_path, env


def test_uninterrupted_reference(project: tuple[Path, dict[str, str]]) -> None:
    """The pipeline file runs through the CLI and prints its run id and result."""
    root, env = project
    env["MARKER_LOG"] = str(root / "ref.log")
    out = cli("run", "stages.py", "--no-monitor", "--store", "ref.sqlite", env=env, cwd=root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("run_id: ")
    assert final_json(out.stdout) == {"name": "publish", "sum": 77}


@pytest.mark.parametrize("kill_after", [1, 3, 5, 7])
def test_kill_and_resume(project: tuple[Path, dict[str, str]], kill_after: int) -> None:
    """After SIGKILL, resume re-runs nothing that finished and ends with the same result."""
    root, env = project
    log = root / "markers.log"
    env["MARKER_LOG"] = str(log)
    store = root / "runs.sqlite"
    proc = start_run(store, env=env, cwd=root)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ends = log.read_text().count("end ") if log.exists() else 0
        if ends >= kill_after:
            break
        time.sleep(0.01)
    time.sleep(0.02)  # some tasks just finished, others just started
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    with sqlite3.connect(store) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        run_id, status = c.execute("SELECT run_id, status FROM runs").fetchone()
        finished = {
            r[0]
            for r in c.execute(
                "SELECT task FROM tasks WHERE run_id=? AND status='succeeded'", (run_id,)
            )
        }
    assert status == "running"  # the kill left it unfinished (it reads as interrupted)
    assert finished, "some tasks were recorded before the kill"

    out = cli("resume", run_id, "--no-monitor", "--store", str(store), env=env, cwd=root)
    assert out.returncode == 0, out.stderr
    assert final_json(out.stdout) == {"name": "publish", "sum": 77}
    starts = [line.split()[1] for line in log.read_text().splitlines() if line.startswith("start")]
    for task in finished:
        assert starts.count(task) == 1, f"{task} finished before the kill but ran again"
    with sqlite3.connect(store) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        resumed = c.execute("SELECT status FROM runs WHERE resumed_from=?", (run_id,)).fetchone()
    assert resumed == ("succeeded",)


def test_sigterm_cancels_and_resume_finishes(project: tuple[Path, dict[str, str]]) -> None:
    """SIGTERM lets running tasks finish, marks the run cancelled, and resume completes it."""
    root, env = project
    log = root / "markers.log"
    env["MARKER_LOG"] = str(log)
    store = root / "runs.sqlite"
    proc = start_run(store, env=env, cwd=root)
    while not (log.exists() and "end extract" in log.read_text()):
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err  # one exit code for an interrupt
    assert "stopping run" in err
    with sqlite3.connect(store) as c:
        run_id, status = c.execute("SELECT run_id, status FROM runs").fetchone()
    assert status == "cancelled"
    text = log.read_text()
    assert text.count("start ") == text.count("end "), "running tasks were given their grace"
    out = cli("resume", run_id, "--no-monitor", "--store", str(store), env=env, cwd=root)
    assert out.returncode == 0, out.stderr
    assert final_json(out.stdout) == {"name": "publish", "sum": 77}
