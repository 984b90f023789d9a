"""A task's plain ``task.finished`` rides in the lane's next write, and never waits while
its lane is idle (group commit without a window)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from xlib_pipeline_audit import AuditPlugin, verify
from xlib_pipeline_audit._trail import registry

from xlib_pipeline import Pipeline, PipelineManager


def records(path: Path) -> list[tuple[str, str | None]]:
    """(action, task) of every whole record in the file right now."""
    data = path.read_bytes() if path.exists() else b""
    return [
        (r["action"], r["task"])
        for r in map(json.loads, data[: data.rfind(b"\n") + 1].splitlines())
    ]


def manager(trail: Path, workers: int) -> PipelineManager:
    # The flusher's timer (which also writes what waits) set far off: what these tests see
    # is written by the recorder's own writes, not by the timer.
    audit = {"path": str(trail), "fsync": "batch", "batch_interval_ms": 600_000}
    return PipelineManager(
        {"audit": audit, "max_workers": workers},
        entry_points=False,
        plugins=[AuditPlugin()],
    )


class TestHeldFinishedRecord:
    def test_written_when_its_lane_goes_idle(self, tmp_path: Path) -> None:
        """Two lanes: 'quick' finishes while 'slow' runs, and its lane then has no work.
        'slow' waits for quick's task.finished in the file: it comes from the idle lane
        (lane_idle), not from slow's lane, the run's end or a timer."""
        trail = tmp_path / "audit.jsonl"
        slow_started = threading.Event()
        seen: list[bool] = []
        p = Pipeline("idle")

        def slow() -> None:
            slow_started.set()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if ("task.finished", "quick") in records(trail):
                    seen.append(True)
                    return
                time.sleep(0.005)
            seen.append(False)

        p.add_task("slow", slow)
        p.add_task("quick", lambda: slow_started.wait(30))
        with manager(trail, 2) as pm:
            assert pm.execute_pipeline(p).success
        assert seen == [True], "quick's task.finished waited while its lane was idle"
        assert verify(trail).ok

    def test_carried_by_the_next_started_record(self, tmp_path: Path) -> None:
        """Inline chain a -> b -> c: each task's task.finished goes out in the same
        write(2) as the next task's task.started (one write per task), and the last one
        with run.finished; every record is in the file when the run returns."""
        trail = tmp_path / "audit.jsonl"
        p = Pipeline("chain")
        p.add_task("a", lambda: 1)
        p.add_task("b", lambda x: x + 1, depends_on=["a"])
        p.add_task("c", lambda x: x + 1, depends_on=["b"])
        writes: list[list[tuple[str, str | None]]] = []

        def spy(data: bytes) -> None:
            writes.append([(r["action"], r["task"]) for r in map(json.loads, data.splitlines())])

        with manager(trail, 1) as pm:
            pm.execute_pipeline(p)  # opens the trail
            writer = registry.open[os.path.realpath(trail)]
            writer.write_hook = spy
            assert pm.execute_pipeline(p).success
            writer.write_hook = None
            assert records(trail)[-1] == ("run.finished", None)
        groups = [w for w in writes if any(a == "task.started" for a, _ in w)]
        assert [("task.finished", "a"), ("task.started", "b")] in groups
        assert [("task.finished", "b"), ("task.started", "c")] in groups
        assert writes[-1][-2:] == [("task.finished", "c"), ("run.finished", None)]
        assert verify(trail).ok


def test_run_started_is_carried_by_the_first_task_started(tmp_path: Path) -> None:
    """run.started is held for the run's first write: the first task's task.started (written
    before its body, which then sees both records in the file) carries it; a run refused
    before any task writes it with run.refused."""
    trail = tmp_path / "audit.jsonl"
    p = Pipeline("first")
    seen: list[list[tuple[str, str | None]]] = []
    p.add_task("a", lambda: seen.append(records(trail)[-2:]))
    writes: list[list[tuple[str, str | None]]] = []

    def spy(data: bytes) -> None:
        writes.append([(r["action"], r["task"]) for r in map(json.loads, data.splitlines())])

    with manager(trail, 1) as pm:
        pm.execute_pipeline(p)  # opens the trail
        writer = registry.open[os.path.realpath(trail)]
        writer.write_hook = spy
        assert pm.execute_pipeline(p).success
        writer.write_hook = None
    assert writes[0] == [("run.started", None), ("task.started", "a")]
    assert len(writes) == 2  # and task.finished with run.finished
    assert seen[-1] == [("run.started", None), ("task.started", "a")]
    assert verify(trail).ok
