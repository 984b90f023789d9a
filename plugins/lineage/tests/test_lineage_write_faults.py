"""Lineage events are never dropped silently when a write fails: real faults (EFBIG from
``RLIMIT_FSIZE`` in a subprocess) and injected ones (a file that takes part of a write,
then fails) against a model: the file holds whole lines, in order, each event once."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xlib_pipeline_lineage import read_events, run_events
from xlib_pipeline_lineage._emit import Chunk, Emitter, Sink, WriteError, report

pytestmark = pytest.mark.skipif(
    not hasattr(os, "ftruncate") or sys.platform == "win32", reason="POSIX file limits"
)

#: A chain of tasks, each slow enough that the emitter writes several batches; the
#: file may grow to ``limit`` bytes; ``heal`` lifts the limit in the last task.
SCRIPT = textwrap.dedent(
    """
    import json, logging, resource, signal, sys, time
    from xlib_pipeline import Pipeline, PipelineManager
    from xlib_pipeline_lineage import LineagePlugin

    path, limit, heal = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "heal"
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a killed process
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    logs = []

    class Keep(logging.Handler):
        def emit(self, record):
            logs.append(record.getMessage())

    logging.getLogger("xlib_pipeline").addHandler(Keep())
    logging.getLogger("xlib_pipeline").setLevel(logging.WARNING)
    p = Pipeline("faulty")
    prev = []
    for i in range(6):
        @p.task(f"step{i}", depends_on=prev)
        def step(*_):
            time.sleep(0.05)
        prev = [f"step{i}"]

    @p.task("last", depends_on=prev)
    def last(*_):
        if heal:
            resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
        time.sleep(0.05)

    pm = PipelineManager(
        {"lineage": {"transport": {"type": "file", "path": path}}},
        entry_points=False,
        plugins=[LineagePlugin()],
    )
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    result = pm.execute_pipeline(p)
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    print(json.dumps({"run_id": result.run_id, "status": str(result.status), "logs": logs}))
    """
)
TASKS = [f"step{i}" for i in range(6)] + ["last"]
ALL_EVENTS = 2 * len(TASKS) + 2


def _run(tmp_path: Path, limit: int, heal: bool) -> tuple[Path, dict[str, Any]]:
    path = tmp_path / "lineage.jsonl"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(path), str(limit), "heal" if heal else "keep"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return path, json.loads(proc.stdout.strip().splitlines()[-1])


def _check_order(events: list[dict[str, Any]]) -> None:
    """Pipeline START first and its terminal last; each task's START before its end."""
    assert events[0]["job"]["name"] == "faulty" and events[0]["eventType"] == "START"
    assert events[-1]["job"]["name"] == "faulty" and events[-1]["eventType"] == "COMPLETE"
    seen: dict[str, list[str]] = {}
    for e in events:
        seen.setdefault(e["job"]["name"], []).append(e["eventType"])
    for name in TASKS:
        assert seen[f"faulty.{name}"] == ["START", "COMPLETE"]


class TestRealFault:
    def test_events_after_a_failed_write_are_written_once_the_fault_is_gone(self, tmp_path):
        path, out = _run(tmp_path, limit=3000, heal=True)
        # a write failed (EFBIG) and the run's every event was written after all
        assert any("lineage.emit_recovered" in m for m in out["logs"]), out["logs"]
        assert not any("lineage.emit_failed" in m for m in out["logs"]), out["logs"]
        events = run_events(read_events(path), out["run_id"])  # whole lines only
        assert len(events) == ALL_EVENTS
        _check_order(events)

    def test_a_fault_to_the_end_reports_the_unwritten_events(self, tmp_path):
        path, out = _run(tmp_path, limit=3000, heal=False)
        failed = [m for m in out["logs"] if "lineage.emit_failed" in m]
        assert len(failed) == 1, out["logs"]
        written = run_events(read_events(path), out["run_id"])  # whole lines only
        assert 0 < len(written) < ALL_EVENTS
        assert path.stat().st_size <= 3000
        msg = failed[0]
        assert str(path) in msg
        assert f"'errno': {errno.EFBIG}" in msg or f"errno={errno.EFBIG}" in msg
        lost = ALL_EVENTS - len(written)
        assert f"'not_written': {lost}" in msg or f"not_written={lost}" in msg
        assert "COMPLETE faulty" in msg  # the pipeline's own terminal event is named


# -- injected faults against a model ---------------------------------------------------------


class FlakyFile(io.RawIOBase):
    """A file appending to ``disk`` that follows a script of write outcomes: an int takes
    at most that many bytes, ``"fail"`` raises ENOSPC; past the script, writes succeed."""

    def __init__(self, disk: bytearray, script: list[int | str]) -> None:
        self.disk = disk
        self.script = script

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        step = self.script.pop(0) if self.script else len(data)
        if step == "fail":
            raise OSError(errno.ENOSPC, "No space left on device")
        n = min(int(step), len(data))
        self.disk += data[:n]
        return n


class FlakySink(Sink):
    """The file sink whose transport opens a :class:`FlakyFile` on one shared disk."""

    def __init__(self, tmp_path: Path, script: list[int | str]) -> None:
        super().__init__({"type": "file", "path": str(tmp_path / "x.jsonl")})
        self.disk = bytearray()
        self.script = script
        transport = self._file

        def open_lines() -> Any:
            return FlakyFile(self.disk, self.script)

        transport.open_lines = open_lines


def _build(rec: tuple[Any, ...], out: list[str]) -> None:
    out.append(json.dumps({"eventType": "START", "job": {"name": f"t{rec[1]}"}, "pad": "x" * 50}))


def _line(i: int) -> str:
    out: list[str] = []
    _build(("e", i), out)
    return out[0]


@settings(max_examples=40, deadline=None)
@given(
    groups=st.lists(st.integers(1, 80), min_size=1, max_size=4),
    script=st.lists(st.one_of(st.just("fail"), st.integers(0, 400)), max_size=12),
)
def test_every_event_is_written_once_in_order(groups, script, tmp_path_factory):
    """Model: the file is always a prefix of every event's line in order (nothing torn
    twice, skipped or reordered), and what is missing is exactly :meth:`unwritten`."""
    sink = FlakySink(tmp_path_factory.mktemp("flaky"), list(script))
    em = Emitter(sink, _build)
    n = 0
    for size in groups:  # one emitter batch (or more) per group: each retries the queue
        for _ in range(size):
            em.put(("e", n))
            n += 1
        while not em._q.empty():
            time.sleep(0.005)
    em.finish()
    lines = [_line(i) for i in range(n)]
    expected = "".join(line + "\n" for line in lines).encode()
    disk = bytes(sink.disk)
    assert expected.startswith(disk)
    lost = em.unwritten()
    if not lost:
        assert disk == expected and em.failure is None
    else:
        whole = disk.count(b"\n")
        assert lost == lines[whole:]
        assert em.failure is not None and em.failure.errno in (errno.ENOSPC, errno.EIO)


class CutFile(io.FileIO):
    """A real file whose first write takes ``first`` bytes and whose later writes fail."""

    first = 11

    def write(self, b: Any) -> int:
        if self.first < 0:
            raise OSError(errno.EFBIG, "File too large")
        n = super().write(bytes(b)[: self.first])
        self.first = -1
        return n or 0


def test_a_write_that_stops_mid_line_is_cut_back_to_whole_lines(tmp_path):
    path = tmp_path / "cut.jsonl"
    path.write_bytes(b'{"old":1}\n')
    sink = Sink({"type": "file", "path": str(path)})
    sink._file.open_lines = lambda: CutFile(path, "ab")
    chunk = Chunk(['{"a":1}', '{"b":2}'])  # the first write stops at '{"a":1}\n{"b'
    with pytest.raises(WriteError) as info:
        sink.batch().write(chunk)
    assert info.value.errno == errno.EFBIG and str(path) in str(info.value)
    assert path.read_bytes() == b'{"old":1}\n{"a":1}\n'
    assert chunk.unwritten() == ['{"b":2}']
    sink._file.open_lines = lambda: io.FileIO(path, "ab")  # the fault is gone
    sink.batch().write(chunk)
    assert path.read_bytes() == b'{"old":1}\n{"a":1}\n{"b":2}\n'


def test_report_names_file_errno_and_events(tmp_path):
    sink = FlakySink(tmp_path, ["fail"] * 50)
    em = Emitter(sink, _build)
    for i in range(3):
        em.put(("e", i))
    em.finish()
    logged: list[tuple[str, dict[str, Any]]] = []

    class Log:
        def warning(self, event: str, **fields: Any) -> None:
            logged.append((event, fields))

    report(em, Log())
    assert logged[0][0] == "lineage.emit_failed"
    fields = logged[0][1]
    assert fields["file"] == str(tmp_path / "x.jsonl")
    assert fields["errno"] == errno.ENOSPC
    assert fields["not_written"] == 3
    assert fields["events"] == ["START t0", "START t1", "START t2"]


def test_a_long_fault_queues_a_bounded_number_of_events(tmp_path, monkeypatch):
    """Past MAX_PENDING chunks, new events are counted (and reported), not kept in memory."""
    from xlib_pipeline_lineage import _emit

    monkeypatch.setattr(_emit, "MAX_PENDING", 2)
    sink = FlakySink(tmp_path, ["fail"] * 1000)
    em = Emitter(sink, _build)
    for i in range(200):
        em.put(("e", i))
    em.finish()
    assert len(em._pending) == 2
    assert em.dropped == 200 - 2 * _emit.LINES_PER_WRITE
    logged: list[tuple[str, dict[str, Any]]] = []

    class Log:
        def warning(self, event: str, **fields: Any) -> None:
            logged.append((event, fields))

    report(em, Log())
    fields = logged[0][1]
    assert fields["not_written"] == 200 and fields["errno"] == errno.ENOSPC
    assert fields["events"] == [f"START t{i}" for i in range(_emit.REPORT_NAMES)]
