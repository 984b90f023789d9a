"""Issue 17 items 3 and 5 end to end: ``map_over`` runs items in parallel from the CLI, and
``--log-format json`` / a user's structlog config give structured events."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

pytest.importorskip("xlib_pipeline_dask")  # map_over is its task option


def cli() -> list[str]:
    script = Path(sys.executable).with_name("xlib-pipeline")
    if script.exists():
        return [str(script)]
    found = shutil.which("xlib-pipeline")
    return [found] if found else [sys.executable, "-m", "xlib_pipeline.cli"]


def run_cli(*args: str, cwd: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, XLIB_PIPELINE_HOME=str(home), NO_COLOR="1", COLUMNS="200")
    return subprocess.run(
        [*cli(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180
    )


FANOUT = textwrap.dedent(
    """
    import threading
    from xlib_pipeline import Pipeline

    fanout = Pipeline("fanout")
    # Four items can only pass this barrier together: one at a time, it breaks (20 s).
    barrier = threading.Barrier(4, timeout=20)

    @fanout.task("partitions")
    def partitions():
        return list(range(12))

    @fanout.task("work", depends_on=["partitions"], map_over=0)
    def work(x):
        barrier.wait()
        return x * 2
    """
)

DAILY = textwrap.dedent(
    """
    from xlib_pipeline import Pipeline

    daily = Pipeline("daily")

    @daily.task("extract")
    def extract(day=None):
        return day
    """
)


def test_map_over_items_run_four_at_once(tmp_path: Path, xlib_home: Path) -> None:
    (tmp_path / "fanout.py").write_text(FANOUT)
    proc = run_cli(
        "run", "fanout.py", "--max-workers", "4", "--no-monitor", cwd=tmp_path, home=xlib_home
    )
    assert proc.returncode == 0, proc.stderr
    # the final result, in item order, whatever the output's layout
    assert re.findall(r"\b\d+\b", proc.stdout.split("[", 1)[1]) == [str(2 * i) for i in range(12)]


def test_log_format_json(tmp_path: Path, xlib_home: Path) -> None:
    (tmp_path / "daily.py").write_text(DAILY)
    proc = run_cli(
        "--log-format", "json", "run", "daily.py", "--no-monitor", "--param", "day=d1",
        cwd=tmp_path, home=xlib_home,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(x) for x in proc.stderr.splitlines() if x.startswith("{")]
    done = [e for e in events if e["event"] == "task.succeeded"]
    assert len(done) == 1 and done[0]["task"] == "extract" and done[0]["pipeline"] == "daily"
    assert done[0]["level"] == "info" and done[0]["attempts"] == 1 and "run_id" in done[0]
    assert any(e["event"] == "pipeline.succeeded" for e in events)


def test_a_structlog_configured_by_the_pipeline_file_is_used(
    tmp_path: Path, xlib_home: Path
) -> None:
    (tmp_path / "daily.py").write_text(
        "import sys, structlog\n"
        "structlog.configure(processors=[structlog.processors.JSONRenderer()],\n"
        "    logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))\n" + DAILY
    )
    proc = run_cli("run", "daily.py", "--no-monitor", cwd=tmp_path, home=xlib_home)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(x) for x in proc.stderr.splitlines() if x.startswith("{")]
    assert {"event": "task.started", "pipeline": "daily", "task": "extract"}.items() <= next(
        e for e in events if e["event"] == "task.started"
    ).items()
