"""A stream's OpenLineage run: its file stays open from START to the end event (not opened
per micro-batch), yet every RUNNING event is in the file when its batch is committed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from xlib_pipeline import Pipeline, PipelineManager


def _pipeline() -> Pipeline:
    p = Pipeline("lin_stream")
    p.add_task("parse", lambda batch: batch)
    return p


def _types(path: Path) -> list[str]:
    return [json.loads(x)["eventType"] for x in path.read_text().splitlines()]


def test_running_events_are_in_the_file_as_batches_commit(tmp_path: Path) -> None:
    path = tmp_path / "lineage.jsonl"
    config = {
        "store": {"path": str(tmp_path / "runs.sqlite")},
        "lineage": {"transport": {"type": "file", "path": str(path)}},
    }
    seen: list[list[str]] = []
    opened: list[int] = []
    with PipelineManager(config, entry_points=False, plugins=_plugins()) as pm:
        recorder: Any = pm.get_plugin("lineage.recorder")

        def on_batch(stream: Any) -> None:
            seen.append(_types(path))
            batch = recorder.streams.get(stream)
            opened.append(id(batch.f) if batch is not None and batch.f is not None else 0)

        s = pm.stream(_pipeline(), source=list(range(30)), batch_size=10, on_batch=on_batch)
        assert s.status == "completed", s.error
        # The stream ended: its file is closed and forgotten.
        assert len(recorder.streams) == 0
    assert seen == [["START", *["RUNNING"] * n] for n in (1, 2, 3)]
    # One file object for the stream's batches, not one per batch.
    assert len(set(opened)) == 1 and opened[0] != 0
    assert _types(path) == ["START", "RUNNING", "RUNNING", "RUNNING", "COMPLETE"]


def test_a_failed_write_reopens_the_file(tmp_path: Path) -> None:
    """A write that fails closes the stream's file; the next event opens it again."""
    path = tmp_path / "lineage.jsonl"
    config = {
        "store": {"path": str(tmp_path / "runs.sqlite")},
        "lineage": {"transport": {"type": "file", "path": str(path)}},
    }
    with PipelineManager(config, entry_points=False, plugins=_plugins()) as pm:
        recorder: Any = pm.get_plugin("lineage.recorder")
        broke: list[bool] = []

        def on_batch(stream: Any) -> None:
            batch = recorder.streams.get(stream)
            if not broke and batch is not None and batch.f is not None:
                batch.f.close()  # the next write on it fails (a file open for reading)
                batch.f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by the batch
                broke.append(True)

        s = pm.stream(_pipeline(), source=list(range(30)), batch_size=10, on_batch=on_batch)
        # The failing RUNNING event fails the stream (as a failed write always did), after
        # its batch was committed; the end event is still written, on a new file object.
        assert s.status == "failed" and "lineage" in str(s.error)
        assert len(recorder.streams) == 0
    assert _types(path) == ["START", "RUNNING", "FAIL"]


def _plugins() -> list[Any]:
    from xlib_pipeline_lineage import LineagePlugin

    return [LineagePlugin()]
