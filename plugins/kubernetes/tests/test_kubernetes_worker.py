"""`xlib-pipeline worker` over real HTTP in a subprocess: health, metrics, work, SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SUCCEEDED = "xlib_pipeline_worker_tasks_succeeded_total"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:  # the server went away (shutdown after a drain)
        return 0, ""


def _metrics_when(base: str, name: str, at_least: float) -> str | None:
    text = _get(base + "/metrics")[1]
    return text if _metric(text, name) >= at_least else None


def _wait_for(predicate, timeout: float = 60.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not reached before the deadline")


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def _start(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = dict(os.environ, XLIB_PIPELINE_HOME=str(tmp_path / "home"))
    env.pop("XLIB_PIPELINE_DASK_ADDRESS", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "xlib_pipeline.cli",
            "worker",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *extra,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"

    def up():
        if proc.poll() is not None:
            raise AssertionError(f"worker exited early:\n{proc.stdout.read()}")
        try:
            return _get(base + "/health")[0] == 200
        except OSError:
            return False

    _wait_for(up)
    return proc, base


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


class TestNoQueueMode:
    def test_without_a_scheduler_it_refuses_and_says_why(self, tmp_path):
        """The file-queue mode is retired: with no scheduler the worker exits 2 at once."""
        env = dict(os.environ, XLIB_PIPELINE_HOME=str(tmp_path / "home"))
        env.pop("XLIB_PIPELINE_DASK_ADDRESS", None)
        proc = subprocess.run(
            [sys.executable, "-m", "xlib_pipeline.cli", "worker", "--port", "0"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2
        assert "no Dask scheduler to join" in proc.stderr
        assert "--scheduler" in proc.stderr and "XLIB_PIPELINE_DASK_ADDRESS" in proc.stderr

    def test_queue_flags_are_gone(self, tmp_path):
        env = dict(os.environ, XLIB_PIPELINE_HOME=str(tmp_path / "home"))
        proc = subprocess.run(
            [sys.executable, "-m", "xlib_pipeline.cli", "worker", "--queue", str(tmp_path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2 and "--queue" in proc.stderr


class TestDaskWorker:
    def test_joins_scheduler_counts_tasks_and_retires(self, tmp_path):
        """With --scheduler it is a Dask worker: runs submitted tasks, exports counts, exits 0."""
        distributed = pytest.importorskip("distributed")
        cluster = distributed.LocalCluster(
            n_workers=0,
            processes=False,
            protocol="tcp://",
            host="127.0.0.1",
            dashboard_address=None,
        )
        client = distributed.Client(cluster, set_as_default=False)
        proc = None
        try:
            proc, base = _start(tmp_path, "--scheduler", cluster.scheduler_address)
            client.wait_for_workers(1, timeout=60)
            futs = client.map(lambda x: x * 3, range(5), pure=False)
            assert client.gather(futs) == [0, 3, 6, 9, 12]
            text = _wait_for(
                lambda: _metrics_when(base, "xlib_pipeline_worker_tasks_succeeded_total", 5)
            )
            assert _metric(text, "xlib_pipeline_worker_tasks_started_total") == 5
            assert _get(base + "/health")[0] == 200
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
            _wait_for(lambda: not client.scheduler_info()["workers"], timeout=30)
        finally:
            if proc is not None:
                _stop(proc)
            client.close()
            cluster.close()
