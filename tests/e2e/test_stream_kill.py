"""Exactly-once for real: SIGKILL ``xlib-pipeline stream`` at 10 seeded points, restart it.

After every kill the same command continues from the last checkpoint; in the end the sink
holds every record's result exactly once, in input order, and the store is intact.
"""

from __future__ import annotations

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

pytestmark = pytest.mark.slow

PIPELINE = textwrap.dedent(
    """
    import time

    from xlib_pipeline import Pipeline

    pipeline = Pipeline("killable")

    @pipeline.task("parse")
    def parse(batch):
        # 20 ms a batch: the 200 batches take 4 s or more on any machine, so the ten kills
        # (0-0.6 s after the first output) land while batches are still being committed.
        time.sleep(SLEEP)
        return [r for r in batch if r["id"] % 7 != 3]

    @pipeline.task("score", depends_on=["parse"])
    def score(rows):
        return [{"id": r["id"], "score": (r["id"] * 31) % 1000} for r in rows]
    """
)

RECORDS = 100_000


def expected() -> list[dict[str, int]]:
    return [{"id": i, "score": (i * 31) % 1000} for i in range(RECORDS) if i % 7 != 3]


def command(tmp: Path, batch: int = 500) -> list[str]:
    return [
        sys.executable, "-m", "xlib_pipeline.cli", "stream", "pipe.py",
        "--source", "jsonl:in.jsonl", "--sink", "jsonl:out.jsonl",
        "--store", str(tmp / "runs.sqlite"), "--batch-size", str(batch), "--no-monitor",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("batch", "sleep"),
    [(500, "0.02"), (25, "0")],
    ids=["slow-batches", "fast-pipelined-batches"],
)
def test_sigkill_at_ten_seeded_points_leaves_every_result_once(
    tmp_path: Path, batch: int, sleep: str
) -> None:
    """Fast batches (no sleep, 25 records): their commits are pipelined and grouped, up to 8
    batches written past the checkpoint when the kill lands."""
    (tmp_path / "pipe.py").write_text(PIPELINE.replace("SLEEP", sleep))
    with open(tmp_path / "in.jsonl", "w") as f:
        for i in range(RECORDS):
            f.write(json.dumps({"id": i, "pad": "x" * (i % 13)}) + "\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    rng = random.Random(1313)
    kills = 0
    progress: list[int] = []
    for _ in range(10):
        proc = subprocess.Popen(
            command(tmp_path, batch), cwd=tmp_path, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        # Wait until the stream is committing batches, then kill it at a random instant.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if (tmp_path / "out.jsonl").exists() and (tmp_path / "out.jsonl").stat().st_size:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.6))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        progress.append(_committed(tmp_path))
    assert kills >= 5, "the stream finished before most kills: nothing was tested"
    final = subprocess.run(
        command(tmp_path, batch),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert final.returncode == 0, final.stderr
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == expected()
    with sqlite3.connect(tmp_path / "runs.sqlite") as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        seq, records = c.execute("SELECT seq, records FROM streams").fetchone()
    assert records == RECORDS and seq == RECORDS // batch
    assert progress == sorted(progress), "a checkpoint went backwards"


def _committed(tmp: Path) -> int:
    try:
        with sqlite3.connect(tmp / "runs.sqlite") as c:
            row = c.execute("SELECT records FROM streams").fetchone()
    except sqlite3.Error:
        return 0
    return 0 if row is None else int(row[0])
