"""`xlib-pipeline worker` over real HTTP in a subprocess: health, metrics, work, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
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


class TestQueueWorker:
    def test_health_metrics_work_and_graceful_sigterm(self, tmp_path):
        """Serves /health and /metrics, runs a queued job, drains on SIGTERM and exits 0."""
        queue = tmp_path / "queue"
        proc, base = _start(tmp_path, "--queue", str(queue), "--poll", "0.1")
        try:
            status, body = _get(base + "/health")
            assert status == 200 and json.loads(body)["status"] == "ready"
            status, metrics = _get(base + "/metrics")
            assert status == 200
            assert "# TYPE xlib_pipeline_worker_tasks_started_total counter" in metrics
            assert "# TYPE xlib_pipeline_worker_task_duration_seconds histogram" in metrics
            assert "# TYPE xlib_pipeline_worker_queue_depth gauge" in metrics
            assert _get(base + "/nope")[0] == 404

            flow = tmp_path / "flow.py"
            marker = tmp_path / "started.txt"
            flow.write_text(
                textwrap.dedent(
                    f"""
                    import pathlib, time
                    from xlib_pipeline import Pipeline
                    flow = Pipeline("queued_flow")

                    @flow.task("a")
                    def a():
                        return 2

                    @flow.task("slow", depends_on=["a"])
                    def slow(x):
                        pathlib.Path({str(marker)!r}).write_text("go")
                        time.sleep(3)
                        return x * 21

                    @flow.task("bad")
                    def bad():
                        raise RuntimeError("expected failure")
                    """
                )
            )
            incoming = queue / "incoming"
            incoming.mkdir(parents=True, exist_ok=True)
            job = {"target": f"{flow}:flow"}
            (incoming / "job1.json.tmp").write_text(json.dumps(job))
            (incoming / "job1.json.tmp").rename(incoming / "job1.json")

            _wait_for(marker.exists)
            proc.send_signal(signal.SIGTERM)  # while the slow task runs
            draining = _wait_for(lambda: _get(base + "/health")[0] == 503 or None, timeout=10)
            assert draining
            assert json.loads(_get(base + "/health")[1])["status"] == "draining"
            code = proc.wait(timeout=60)
            out = proc.stdout.read()
            assert code == 0, out
            failed = queue / "failed" / "job1.result.json"
            summary = json.loads(failed.read_text())  # the run finished (one task failed)
            assert summary["status"] == "failed" and summary["failed_task"] == "bad"
            allowed = {"job", "started", "finished", "run_id", "pipeline", "status"}
            assert set(summary) <= allowed | {"failed_task", "error"}  # never payloads
        finally:
            _stop(proc)

    def test_metrics_count_tasks(self, tmp_path):
        """Task counters and the duration histogram move when jobs run."""
        queue = tmp_path / "queue"
        flow = tmp_path / "ok.py"
        flow.write_text(
            "from xlib_pipeline import Pipeline\n"
            "ok = Pipeline('ok_flow')\n"
            "ok.add_task('a', lambda: 1)\n"
            "ok.add_task('b', lambda x: x + 1, depends_on=['a'])\n"
        )
        (queue / "incoming").mkdir(parents=True)
        (queue / "incoming" / "j.json").write_text(json.dumps({"target": str(flow)}))
        proc, base = _start(tmp_path, "--queue", str(queue), "--poll", "0.1")
        try:
            text = _wait_for(
                lambda: _metrics_when(base, "xlib_pipeline_worker_tasks_succeeded_total", 2)
            )
            assert _metric(text, "xlib_pipeline_worker_tasks_started_total") == 2
            assert _metric(text, "xlib_pipeline_worker_tasks_failed_total") == 0
            assert _metric(text, "xlib_pipeline_worker_task_duration_seconds_count") == 2
            assert (queue / "done" / "j.json").exists()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        finally:
            _stop(proc)


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
