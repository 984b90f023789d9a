"""No thread of ours outlives the manager that started it: with the store, the audit trail
and the lineage file transport on, a run, a direct call and a short stream, every ``xlib-``
thread (the trail's ``xlib-audit-sync`` flusher, the lease heartbeat, lineage's writers)
ends when the manager closes. No sleeps: the test waits on the threads (bounded joins)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from xlib_pipeline_audit import AuditPlugin, read, verify

from xlib_pipeline import Pipeline, PipelineManager
from xlib_pipeline.testing import assert_threads_end, our_threads


def test_a_manager_with_audit_store_and_lineage_leaves_no_thread_after_close(
    tmp_path: Path,
) -> None:
    lineage = pytest.importorskip("xlib_pipeline_lineage")
    before = set(threading.enumerate())
    seen: set[threading.Thread] = set()

    def look(*args: Any) -> Any:
        seen.update(our_threads(threading.enumerate()))
        return args[0] if args else 1

    trail = tmp_path / "audit.jsonl"
    config = {
        "store": {"path": str(tmp_path / "runs.sqlite")},
        "audit": {"path": str(trail), "fsync": "batch"},
        "lineage": {"transport": {"type": "file", "path": str(tmp_path / "lineage.jsonl")}},
        "max_workers": 2,
    }
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i}) + "\n" for i in range(6)))
    pm = PipelineManager(
        config, entry_points=False, plugins=[AuditPlugin(), lineage.LineagePlugin()]
    )
    try:
        p = Pipeline("guard")
        p.add_task("a", look)
        p.add_task("b", look, depends_on=["a"])
        assert pm.execute_pipeline(p).success

        @pm.audit_log(operation="export")
        def export() -> int:
            return look()

        assert export() == 1
        s = Pipeline("guard_stream")
        s.add_task("work", look)
        stream = pm.stream(
            s,
            source=f"jsonl:{src}",
            sink=f"jsonl:{tmp_path / 'out.jsonl'}",
            batch_size=2,
            from_start=True,
        )
        assert stream.status == "completed" and stream.batches == 3, stream.error
        seen |= our_threads(set(threading.enumerate()) - before)
    finally:
        pm.close()
    names = {t.name for t in seen}
    assert "xlib-audit-sync:audit.jsonl" in names and "xlib-lease" in names, names
    assert_threads_end(
        (seen - before) | our_threads(set(threading.enumerate()) - before), "pm.close()"
    )
    assert verify(trail).ok
    assert {"run.started", "call.finished", "stream.completed"} <= {
        r["action"] for r in read(trail)
    }
    assert (tmp_path / "lineage.jsonl").stat().st_size > 0
