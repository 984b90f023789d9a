"""Clean interruption and worker processes dying with their driver."""

from __future__ import annotations

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

SLOW = textwrap.dedent(
    """
    import os, time
    from xlib_pipeline import Pipeline

    pipeline = Pipeline("slow")

    def first():
        return 1

    def long(x):
        with open(os.environ["PID_FILE"], "w") as f:
            f.write(str(os.getpid()))
        time.sleep(60)
        return x

    pipeline.add_task("first", first)
    pipeline.add_task("long", long, depends_on=["first"])
    pipeline.add_task("after", lambda x: x, depends_on=["long"])
    """
)


def start(root: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "XLIB_PIPELINE_HOME": str(root / "home"), "PID_FILE": str(root / "pid")}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "xlib_pipeline.cli",
            "run",
            "slow.py",
            "--no-monitor",
            "--store",
            str(root / "runs.sqlite"),
            *extra,
        ],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A test runner started in the background of a shell inherits SIGINT ignored, and
        # so would the child: give it the default disposition, as a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for(path: Path, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_two_interrupts_stop_at_once_with_130_and_leave_no_run_running(tmp_path: Path) -> None:
    (tmp_path / "slow.py").write_text(SLOW)
    proc = start(tmp_path)
    wait_for(tmp_path / "pid")
    proc.send_signal(signal.SIGINT)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    while "stopping run" not in line:
        line = proc.stderr.readline()
        assert line, "the first Ctrl-C said nothing"
    assert "10 s" in line and "Ctrl-C again" in line
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 8, "the second Ctrl-C did not stop at once"
    assert proc.returncode == 130, err
    with sqlite3.connect(tmp_path / "runs.sqlite") as c:
        (status,) = c.execute("SELECT status FROM runs").fetchone()
    assert status == "cancelled"


def test_kill_9_of_the_driver_takes_its_workers_along(tmp_path: Path) -> None:
    """Process executor: after kill -9 of the driver no worker survives it."""
    (tmp_path / "slow.py").write_text(SLOW)
    proc = start(tmp_path, "--executor", "processes")
    worker = int(wait_for(tmp_path / "pid"))
    assert worker != proc.pid and alive(worker)
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(worker), "the worker outlived its driver"
    # and the run reads as interrupted: its owner is gone
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "xlib_pipeline.cli",
            "runs",
            "list",
            "--json",
            "--store",
            str(tmp_path / "runs.sqlite"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert '"interrupted"' in out.stdout, out.stdout + out.stderr
