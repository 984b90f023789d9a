"""kill -9 at 20 seeded points of a run with the store and the audit trail, then resume.

At each point: the store passes ``PRAGMA integrity_check``; every task whose body started
has its ``task.started`` record in the trail; no task committed as finished runs again and
at most the tasks in flight re-run; after resume the trail verifies and the result equals
an uninterrupted run's.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from xlib_pipeline import PipelineManager

pytestmark = pytest.mark.slow

verify = pytest.importorskip("xlib_pipeline_audit").verify

PIPELINE = textwrap.dedent(
    """
    import os, time
    from xlib_pipeline import Pipeline

    PIPELINE_CONFIG = {"audit": {"path": "audit.jsonl"}}
    LOG = os.environ["MARKER_LOG"]
    pipeline = Pipeline("kp")

    def mark(text):
        fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(fd, (text + "\\n").encode())
        os.close(fd)

    def stage(name, delay):
        def run(*ups):
            mark(f"start {name}")
            time.sleep(delay)
            mark(f"end {name}")
            return sum(ups) + len(name)
        return run

    layers = [["a0", "a1", "a2"], ["b0", "b1", "b2", "b3"], ["c0", "c1", "c2"], ["d0", "d1"], ["z"]]
    prev = []
    for k, layer in enumerate(layers):
        for j, name in enumerate(layer):
            deps = [prev[(j + s) % len(prev)] for s in range(min(2, len(prev)))] if prev else []
            pipeline.add_task(name, stage(name, 0.04 + 0.03 * ((k + j) % 3)), depends_on=deps)
        prev = layer
    """
)
TASKS = 13
WORKERS = 2


def cli(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xlib_pipeline.cli", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def markers(log: Path) -> list[tuple[str, str]]:
    if not log.exists():
        return []
    return [tuple(line.split()) for line in log.read_text().splitlines() if line]  # type: ignore[misc]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> object:
    root = tmp_path_factory.mktemp("ref")
    (root / "kp.py").write_text(PIPELINE)
    env = {**os.environ, "XLIB_PIPELINE_HOME": str(root / "home"), "MARKER_LOG": str(root / "m")}
    out = cli(root, env, "run", "kp.py", "--no-monitor", "--store", "runs.sqlite")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.split("\n", 1)[1])


def kill_points() -> list[tuple[str, float]]:
    """20 seeded points: 7 after the n-th task start, 7 after the n-th end, 6 at random times."""
    rng = random.Random(20261202)
    points = [("start", float(rng.randint(1, TASKS))) for _ in range(7)]
    points += [("end", float(rng.randint(1, TASKS - 1))) for _ in range(7)]
    points += [("time", rng.uniform(0.05, 0.5)) for _ in range(6)]
    return points


@pytest.mark.parametrize(("kind", "at"), kill_points())
def test_kill_point(
    tmp_path: Path, reference: object, kind: str, at: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path
    (root / "kp.py").write_text(PIPELINE)
    log = root / "markers.log"
    env = {**os.environ, "XLIB_PIPELINE_HOME": str(root / "home"), "MARKER_LOG": str(log)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "xlib_pipeline.cli",
            "run",
            "kp.py",
            "--no-monitor",
            "--store",
            "runs.sqlite",
            "--max-workers",
            str(WORKERS),
        ],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    if kind == "time":
        while not log.exists() and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(at)
    else:
        while time.monotonic() < deadline:
            if sum(1 for m in markers(log) if m[0] == kind) >= at:
                break
            time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    first = markers(log)
    started = {name for what, name in first if what == "start"}

    db = root / "runs.sqlite"
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        row = c.execute("SELECT run_id, status FROM runs").fetchone()
        if row is None:  # killed before the run was recorded: nothing ran
            assert not started
            return
        run_id, status = row
        committed = {
            r[0]
            for r in c.execute(
                "SELECT task FROM tasks WHERE run_id=? AND status='succeeded'", (run_id,)
            )
        }
    trail = root / "audit.jsonl"
    records = [json.loads(x) for x in trail.read_bytes().splitlines() if x.endswith(b"}")]
    in_trail = {r["task"] for r in records if r.get("action") == "task.started"}
    assert started <= in_trail, f"bodies ran without task.started: {started - in_trail}"
    if status == "succeeded":
        return  # killed after the end
    log.write_text("")
    # Resume in this process (one interpreter start less per point), as the CLI would.
    monkeypatch.chdir(root)
    monkeypatch.setenv("MARKER_LOG", str(log))
    monkeypatch.setenv("XLIB_PIPELINE_HOME", str(root / "home"))
    spec = importlib.util.spec_from_file_location(f"kp_{abs(hash(str(root)))}", root / "kp.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = {**module.PIPELINE_CONFIG, "store": {"path": str(db)}, "max_workers": WORKERS}
    with PipelineManager(config) as pm:
        result = pm.execute_pipeline(module.pipeline, resume=run_id)
    assert result.success, result.error
    assert result.final_result == reference
    rerun = {name for what, name in markers(log) if what == "start"} & started
    assert not rerun & committed, f"committed tasks ran again: {rerun & committed}"
    assert len(rerun) <= 2 * WORKERS, f"more than the tasks in flight re-ran: {rerun}"
    report = verify(trail)
    assert report.ok, str(report)
