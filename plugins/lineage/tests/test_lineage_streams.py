"""A stream's OpenLineage run: its file stays open from START to the end event (not opened
per micro-batch); its events are written several per write, each within HOLD_S + TICK_S
of its batch's commit, and every one by the end event."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from xlib_pipeline import Pipeline, PipelineManager


def _pipeline() -> Pipeline:
    p = Pipeline("lin_stream")
    p.add_task("parse", lambda batch: batch)
    return p


def _types(path: Path) -> list[str]:
    return [json.loads(x)["eventType"] for x in path.read_text().splitlines()]


def _config(path: Path, tmp_path: Path) -> dict[str, Any]:
    return {
        "store": {"path": str(tmp_path / "runs.sqlite")},
        "lineage": {"transport": {"type": "file", "path": str(path)}},
    }


def _wait_for(path: Path, n: int) -> list[str]:
    """The file's event types once it holds ``n`` events (at most 5 s)."""
    deadline = time.monotonic() + 5.0
    while True:
        types = _types(path) if path.exists() else []
        if len(types) >= n or time.monotonic() > deadline:
            return types
        time.sleep(0.005)


def test_running_events_are_held_and_written_within_a_tick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's RUNNING event is not written by its commit: it is held (several go in one
    write), and written within HOLD_S + TICK_S even when no other event comes."""
    from xlib_pipeline_lineage import _stream_writer

    clock = [100.0]
    monkeypatch.setattr(_stream_writer, "_clock", lambda: clock[0])
    path = tmp_path / "lineage.jsonl"
    seen: list[list[str]] = []
    files: list[int] = []
    with PipelineManager(_config(path, tmp_path), entry_points=False, plugins=_plugins()) as pm:
        recorder: Any = pm.get_plugin("lineage.recorder")

        def on_batch(stream: Any) -> None:
            seen.append(_types(path) if path.exists() else [])
            if len(seen) == 2:  # time passes and no event comes: the timer writes them
                clock[0] += 1.0
                seen.append(_wait_for(path, 3))
                files.append(id(recorder.streams[stream]._batch.f))
            elif len(seen) == 4:
                files.append(id(recorder.streams[stream]._batch.f))

        s = pm.stream(_pipeline(), source=list(range(30)), batch_size=10, on_batch=on_batch)
        assert s.status == "completed", s.error
        # The stream ended: its file is closed and forgotten, its timer thread stopped.
        assert len(recorder.streams) == 0
    # held at their commits; START and two RUNNING written by the timer; the rest at the end
    assert seen == [[], [], ["START", "RUNNING", "RUNNING"], ["START", "RUNNING", "RUNNING"]]
    # One file object for the stream, not one per write.
    assert len(set(files)) == 1 and files[0] != id(None)
    assert _types(path) == ["START", "RUNNING", "RUNNING", "RUNNING", "COMPLETE"]
    assert not [t for t in threading.enumerate() if t.name == "xlib-lineage-stream"]


def test_events_are_written_several_per_write(tmp_path: Path) -> None:
    """Events held within HOLD_S of each other go in one write."""
    from xlib_pipeline_lineage import _emit

    writes: list[int] = []
    real = _emit.Sink.write_chunk

    def counting(self: Any, batch: Any, chunk: Any) -> None:
        writes.append(len(chunk.lines))
        real(self, batch, chunk)

    path = tmp_path / "lineage.jsonl"
    with PipelineManager(_config(path, tmp_path), entry_points=False, plugins=_plugins()) as pm:
        _emit.Sink.write_chunk = counting  # type: ignore[method-assign]
        try:
            s = pm.stream(_pipeline(), source=list(range(200)), batch_size=2)
        finally:
            _emit.Sink.write_chunk = real  # type: ignore[method-assign]
        assert s.status == "completed", s.error
    assert _types(path) == ["START", *["RUNNING"] * 100, "COMPLETE"]
    assert sum(writes) == 102 and len(writes) < 102


def test_a_failed_write_fails_the_stream_and_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed write fails the stream (as it always did); the events it did not write stay
    held and the end event writes them first, so none is lost or written twice."""
    from xlib_pipeline_lineage import _emit, _stream_writer

    monkeypatch.setattr(_stream_writer, "HOLD_S", 0.0)  # every event writes at once
    path = tmp_path / "lineage.jsonl"
    real = _emit.Sink.write_chunk
    calls: list[int] = []

    def flaky(self: Any, batch: Any, chunk: Any) -> None:
        calls.append(1)
        if len(calls) == 2:  # the first RUNNING event's write
            raise _emit.WriteError(str(path), OSError(28, "No space left on device"))
        real(self, batch, chunk)

    monkeypatch.setattr(_emit.Sink, "write_chunk", flaky)
    with PipelineManager(_config(path, tmp_path), entry_points=False, plugins=_plugins()) as pm:
        recorder: Any = pm.get_plugin("lineage.recorder")
        s = pm.stream(_pipeline(), source=list(range(30)), batch_size=10)
        assert s.status == "failed" and "lineage" in str(s.error)
        assert len(recorder.streams) == 0
        committed = s.batches
    types = _types(path)
    assert types[0] == "START" and types[-1] == "FAIL" and set(types[1:-1]) == {"RUNNING"}
    # the failed write's event was written once, after all; every committed batch's too
    runs = [json.loads(x) for x in path.read_text().splitlines()][1:-1]
    numbers = [e["run"]["facets"]["xlibPipeline_stream"]["batch"] for e in runs]
    assert numbers == sorted(set(numbers)) and len(numbers) == committed


def _plugins() -> list[Any]:
    from xlib_pipeline_lineage import LineagePlugin

    return [LineagePlugin()]


def test_a_failed_timer_write_is_raised_by_the_next_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The timer thread's failed write fails the stream at its next event; nothing is lost."""
    from xlib_pipeline_lineage import _emit, _stream_writer

    clock = [0.0]
    monkeypatch.setattr(_stream_writer, "_clock", lambda: clock[0])
    monkeypatch.setattr(_stream_writer, "TICK_S", 0.005)
    path = tmp_path / "l.jsonl"
    failing = [True]
    real = _emit.Sink.write_chunk

    def flaky(self: Any, batch: Any, chunk: Any) -> None:
        if failing[0]:
            raise _emit.WriteError(str(path), OSError(28, "No space left on device"))
        real(self, batch, chunk)

    monkeypatch.setattr(_emit.Sink, "write_chunk", flaky)
    sink = _emit.Sink({"type": "file", "path": str(path)})
    writer = _stream_writer.StreamWriter(sink, str)
    writer.add('{"n": 1}')  # held
    clock[0] += 1.0  # the timer writes it, and fails
    deadline = time.monotonic() + 5.0
    while writer.failure is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert writer.failure is not None and writer.held == ['{"n": 1}']
    failing[0] = False
    with pytest.raises(_emit.WriteError):
        writer.add('{"n": 2}')
    writer.close()
    assert [json.loads(x)["n"] for x in path.read_text().splitlines()] == [1, 2]


def test_a_held_event_keeps_its_commit_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A RUNNING event is built when written, but its eventTime is its batch's commit."""
    from datetime import datetime

    from xlib_pipeline_lineage import _stream_writer

    monkeypatch.setattr(_stream_writer, "_clock", lambda: 0.0)  # held until the end
    path = tmp_path / "lineage.jsonl"
    seen: list[float] = []

    def on_batch(stream: Any) -> None:
        seen.append(time.time())
        time.sleep(0.2)  # the end event writes it at least 0.2 s later

    with PipelineManager(_config(path, tmp_path), entry_points=False, plugins=_plugins()) as pm:
        s = pm.stream(_pipeline(), source=list(range(20)), batch_size=10, on_batch=on_batch)
        assert s.status == "completed", s.error
    events = [json.loads(x) for x in path.read_text().splitlines()]
    running = [e for e in events if e["eventType"] == "RUNNING"]
    times = [datetime.fromisoformat(e["eventTime"]).timestamp() for e in running]
    assert len(times) == 2 and all(t <= s for t, s in zip(times, seen, strict=True))
    assert [e["run"]["facets"]["xlibPipeline_stream"]["batch"] for e in running] == [1, 2]


def test_streams_one_after_another_each_get_their_own_writer(tmp_path: Path) -> None:
    """The writer of the last event's stream is reused for its next event only: a stream
    run after another (and interleaved with a plain run) writes its own START..COMPLETE,
    and nothing is left held, open or running; plain runs leave no per-run state behind
    (their per-task hooks find it by run id) and stream batches add none."""
    path = tmp_path / "lineage.jsonl"
    with PipelineManager(_config(path, tmp_path), entry_points=False, plugins=_plugins()) as pm:
        recorder: Any = pm.get_plugin("lineage.recorder")
        sizes: list[int] = []

        def on_batch(stream: Any) -> None:
            sizes.append(len(recorder.runs))

        first = pm.stream(_pipeline(), source=list(range(20)), batch_size=10, on_batch=on_batch)
        plain = Pipeline("lin_plain")
        plain.add_task("a", lambda: [1])
        plain.add_task("b", lambda a: a, depends_on=["a"])
        result = pm.execute_pipeline(plain)
        assert result.status == "succeeded"
        other = Pipeline("lin_stream2")
        other.add_task("parse", lambda batch: batch)
        second = pm.stream(other, source=list(range(30)), batch_size=10, on_batch=on_batch)
        assert first.status == second.status == "completed"
        assert first.stream_run_id != second.stream_run_id
        assert len(recorder.streams) == 0 and recorder._last is None
        assert recorder.runs == {} and sizes == [0] * 5
    events = [json.loads(x) for x in path.read_text().splitlines()]
    by_run: dict[str, list[str]] = {}
    for e in events:
        by_run.setdefault(e["run"]["runId"], []).append(e["eventType"])
    assert by_run[str(first.stream_run_id)] == ["START", "RUNNING", "RUNNING", "COMPLETE"]
    assert by_run[str(second.stream_run_id)] == ["START", *["RUNNING"] * 3, "COMPLETE"]
    # the plain run's task events were recorded through the per-run state
    assert by_run[result.run_id] == ["START", "COMPLETE"]
    tasks = sorted(
        (e["job"]["name"], e["eventType"])
        for e in events
        if e["run"]["runId"]
        not in (result.run_id, str(first.stream_run_id), str(second.stream_run_id))
    )
    assert tasks == [
        ("lin_plain.a", "COMPLETE"),
        ("lin_plain.a", "START"),
        ("lin_plain.b", "COMPLETE"),
        ("lin_plain.b", "START"),
    ], tasks
    assert not [t for t in threading.enumerate() if t.name == "xlib-lineage-stream"]
