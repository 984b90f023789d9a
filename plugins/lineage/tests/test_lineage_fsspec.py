"""The file transport on an fsspec URL (here ``memory://``): the documented remote-path case.

``fsspec.open`` hands back an ``OpenFile`` (no ``write``); the transport must write to the
file object it opens, and append across runs like a local file."""

from __future__ import annotations

import json
import uuid

import pytest

from xlib_pipeline import Pipeline, PipelineManager

fsspec = pytest.importorskip("fsspec", reason="fsspec (the `fsspec` extra) is not installed")


def test_events_are_appended_to_an_fsspec_path() -> None:
    where = f"/lineage-{uuid.uuid4().hex}/events.jsonl"
    p = Pipeline("remote_lineage")
    p.add_task("a", lambda: 1)
    p.add_task("b", lambda x: x + 1, depends_on=["a"])
    config = {"lineage": {"transport": {"type": "file", "path": f"memory://{where}"}}}
    with PipelineManager(config) as pm:
        first = pm.execute_pipeline(p)
        second = pm.execute_pipeline(p)
    assert first.success and second.success
    fs = fsspec.filesystem("memory")
    try:
        events = [json.loads(x) for x in fs.cat(where).decode().splitlines()]
    finally:
        fs.rm(where)
    # 2 runs x (pipeline START/COMPLETE + 2 tasks x START/COMPLETE), whole lines, in order
    assert len(events) == 12
    runs = [e["run"]["runId"] for e in events if e["job"]["name"] == "remote_lineage"]
    assert runs[0] == runs[1] != runs[2] == runs[3]  # the first run's events, then the second's
    assert [e["eventType"] for e in events if e["job"]["name"] == "remote_lineage"] == [
        "START",
        "COMPLETE",
        "START",
        "COMPLETE",
    ]
