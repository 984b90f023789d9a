"""Streams: micro-batches as runs, embedded connectors, checkpoints, restart, backpressure.

Every test taking ``pm`` (or ``store_backend``) runs against each run store backend: the
embedded SQLite file and a real PostgreSQL server (tests/conftest.py)."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from xlib_pipeline import ConfigError, DefinitionError, Pipeline, PipelineManager
from xlib_pipeline.streams import (
    CallbackSink,
    CheckpointStore,
    IterableSource,
    JsonLinesSink,
    JsonLinesSource,
    StreamError,
)


def screening() -> Pipeline:
    p = Pipeline("screening")

    @p.task("parse")
    def parse(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in batch if r["amount"] > 0]

    @p.task("screen", depends_on=["parse"])
    def screen(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**r, "flag": r["amount"] > 100} for r in rows]

    return p


def write_jsonl(path: Path, n: int, start: int = 0) -> list[dict[str, Any]]:
    rows = [{"id": i, "amount": (i * 37) % 200 - 20} for i in range(start, start + n)]
    with open(path, "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return rows


def expected(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**r, "flag": r["amount"] > 100} for r in rows if r["amount"] > 0]


def read_jsonl(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def pm(store_backend: Any) -> Any:
    with store_backend.manager() as m:
        yield m


def test_file_to_file_each_batch_is_a_run(pm: PipelineManager, tmp_path: Path) -> None:
    rows = write_jsonl(tmp_path / "in.jsonl", 2500)
    s = pm.stream(
        screening(),
        source=JsonLinesSource(tmp_path / "in.jsonl"),
        sink=JsonLinesSink(tmp_path / "out.jsonl"),
        batch_size=1000,
    )
    assert (s.status, s.records, s.batches, s.error) == ("completed", 2500, 3, None)
    assert read_jsonl(tmp_path / "out.jsonl") == expected(rows)
    assert s.outputs == len(expected(rows))
    # Each batch is a recorded run of the pipeline, with the batch's offsets as params.
    runs = pm.store.list_runs(pipeline="screening")  # type: ignore[union-attr]
    assert len(runs) == 3 and {r.status for r in runs} == {"succeeded"}
    offsets = sorted(tuple(r.params["stream"]["offsets"]) for r in runs)
    assert offsets[0][0] == 0 and offsets[-1][1] == (tmp_path / "in.jsonl").stat().st_size
    assert all(a[1] == b[0] for a, b in itertools.pairwise(offsets))


def test_restart_continues_and_from_start_starts_over(pm: PipelineManager, tmp_path: Path) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    out.write_text('{"kept": "existing content"}\n')
    rows = write_jsonl(src, 1000)
    first = pm.stream(
        screening(), source=f"jsonl:{src}", sink=f"jsonl:{out}", batch_size=100, max_batches=4
    )
    assert (first.status, first.records, first.batches) == ("stopped", 400, 4)
    second = pm.stream(screening(), source=f"jsonl:{src}", sink=f"jsonl:{out}", batch_size=100)
    assert (second.status, second.records, second.batches) == ("completed", 1000, 10)
    assert read_jsonl(out) == [{"kept": "existing content"}, *expected(rows)]
    more = write_jsonl(src, 50, start=1000)
    third = pm.stream(screening(), source=f"jsonl:{src}", sink=f"jsonl:{out}", batch_size=100)
    assert (third.records, third.batches) == (1050, 11)
    assert read_jsonl(out) == [{"kept": "existing content"}, *expected(rows + more)]
    again = pm.stream(
        screening(), source=f"jsonl:{src}", sink=f"jsonl:{out}", batch_size=300, from_start=True
    )
    assert (again.records, again.batches) == (1050, 4)
    assert read_jsonl(out) == [{"kept": "existing content"}, *expected(rows + more)]


def test_sink_truncates_what_was_written_after_the_checkpoint(
    pm: PipelineManager, tmp_path: Path
) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    rows = write_jsonl(src, 500)
    pm.stream(
        screening(), source=f"jsonl:{src}", sink=f"jsonl:{out}", batch_size=100, max_batches=2
    )
    with open(out, "a") as f:  # what a crash between sink write and commit leaves behind
        f.write('{"id": 999999, "half": "written"}\n{"id": 12')
    s = pm.stream(screening(), source=f"jsonl:{src}", sink=f"jsonl:{out}", batch_size=100)
    assert s.status == "completed"
    assert read_jsonl(out) == expected(rows)


def test_checkpoint_is_one_row_per_batch_with_offsets_and_position(
    pm: PipelineManager, tmp_path: Path
) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(src, 300)
    pm.stream(screening(), source=f"jsonl:{src}", sink=f"jsonl:{out}", batch_size=100)
    ck = pm.store.open_checkpoints()  # type: ignore[union-attr]
    try:
        rec = ck.load("screening")
        assert rec is not None and rec.seq == 3 and rec.status == "completed"
        assert rec.offset == src.stat().st_size and rec.position == out.stat().st_size
        batches = ck.batches("screening")
        assert [b.seq for b in batches] == [3, 2, 1]
        assert batches[0].end_offset == rec.offset and batches[-1].start_offset == 0
        assert all(b.output is not None and b.run_id for b in batches)
    finally:
        ck.close()
    if isinstance(pm.store.path, Path):  # type: ignore[union-attr]
        assert isinstance(ck, CheckpointStore)
        with sqlite3.connect(pm.store.path) as c:  # type: ignore[union-attr]
            assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_iterable_async_iterable_and_callback_sink(pm: PipelineManager) -> None:
    rows = [{"id": i, "amount": i} for i in range(1, 251)]
    got: list[Any] = []
    s = pm.stream(screening(), source=rows, sink=got.extend, batch_size=100, name="it")
    assert (s.status, s.records, s.batches) == ("completed", 250, 3)
    assert got == expected(rows)

    async def agen() -> Any:
        for r in rows:
            if r["id"] % 50 == 0:
                await asyncio.sleep(0.001)
            yield r

    seen: list[tuple[int, int]] = []
    sink = CallbackSink(lambda recs, seq: seen.append((seq, len(recs))), with_seq=True)
    s2 = pm.stream(
        screening(),
        source=IterableSource(agen()),
        sink=sink,
        batch_size=100,
        batch_timeout=5,
        name="ait",
    )
    assert (s2.status, s2.records) == ("completed", 250)
    assert [q for q, _ in seen] == list(range(1, len(seen) + 1))
    assert sum(n for _, n in seen) == 250


def test_restart_of_a_replayable_iterable_skips_what_is_committed(pm: PipelineManager) -> None:
    rows = [{"id": i, "amount": i} for i in range(1, 101)]
    got: list[Any] = []
    pm.stream(screening(), source=rows, sink=got.extend, batch_size=10, max_batches=3, name="r")
    pm.stream(screening(), source=rows, sink=got.extend, batch_size=10, name="r")
    assert got == expected(rows)


def test_follow_tails_a_growing_file(pm: PipelineManager, tmp_path: Path) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    rows = write_jsonl(src, 10)
    s = pm.stream(
        screening(),
        source=JsonLinesSource(src, follow=True, poll_interval=0.01),
        sink=JsonLinesSink(out),
        batch_size=5,
        batch_timeout=0.05,
        wait=False,
    )
    try:
        with open(src, "a") as f:  # a half-written line is read once its newline arrives
            f.write('{"id": 10, "amo')
            f.flush()
            time.sleep(0.2)
            f.write('unt": 5}\n')
        rows.append({"id": 10, "amount": 5})
        rows += write_jsonl(src, 7, start=11)
        deadline = time.monotonic() + 30
        while s.records < len(rows) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        s.stop()
        assert s.wait(30)
    assert s.status == "stopped" and s.records == len(rows)
    assert read_jsonl(out) == expected(rows)


def test_max_in_flight_overlaps_but_commits_in_order(pm: PipelineManager) -> None:
    p = Pipeline("jitter")
    active = {"now": 0, "peak": 0}
    lock = threading.Lock()

    @p.task("work")
    def work(batch: list[int]) -> list[int]:
        with lock:
            active["now"] += 1
            active["peak"] = max(active["peak"], active["now"])
        time.sleep(random.Random(batch[0]).uniform(0, 0.03))
        with lock:
            active["now"] -= 1
        return [x * 2 for x in batch]

    got: list[int] = []
    s = pm.stream(p, source=range(400), sink=got.extend, batch_size=10, max_in_flight=4)
    assert s.status == "completed" and got == [x * 2 for x in range(400)]
    assert 1 < active["peak"] <= 4


def test_a_failing_batch_stops_the_stream_and_a_restart_retries_it(
    pm: PipelineManager, tmp_path: Path
) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    rows = write_jsonl(src, 50)
    broken = {"on": True}
    p = screening()

    @p.task("check", depends_on=["screen"])
    def check(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if broken["on"] and any(r["id"] == 25 for r in rows):
            raise ValueError("record 25 is bad")
        return rows

    s = pm.stream(p, source=f"jsonl:{src}", sink=f"jsonl:{out}", batch_size=10)
    assert s.status == "failed" and s.batches == 2
    assert isinstance(s.error, StreamError)
    assert "batch 3" in str(s.error) and "record 25 is bad" in str(s.error)
    assert read_jsonl(out) == expected(rows[:20])
    broken["on"] = False
    s = pm.stream(p, source=f"jsonl:{src}", sink=f"jsonl:{out}", batch_size=10)
    assert s.status == "completed" and read_jsonl(out) == expected(rows)


def test_a_line_that_is_not_json_is_named(pm: PipelineManager, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    write_jsonl(src, 3)
    with open(src, "a") as f:
        f.write("\n{not json}\n")
    s = pm.stream(screening(), source=f"jsonl:{src}", sink=None, batch_size=100)
    assert s.status == "failed"
    assert "in.jsonl" in str(s.error) and "line 5" in str(s.error)


def test_bad_input_is_refused_before_anything_runs(pm: PipelineManager, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no connector for scheme 'kafka'"):
        pm.stream(screening(), source="kafka://x/y")
    with pytest.raises(ConfigError, match="batch_size"):
        pm.stream(screening(), source=[], batch_size=0)
    two = screening()
    two.add_task("other", lambda rows: rows, depends_on=["parse"])
    with pytest.raises(DefinitionError, match="output_task"):
        pm.stream(two, source=[])
    none = Pipeline("none")
    none.add_task("const", lambda: 1)
    with pytest.raises(DefinitionError, match="no root task takes the batch"):
        pm.stream(none, source=[])
    with (
        PipelineManager(entry_points=False) as bare,
        pytest.raises(ConfigError, match="needs a run store"),
    ):
        bare.stream(screening(), source=[{"amount": 1}])
    other = Pipeline("other")
    other.add_task("x", lambda b: b)
    pm.stream(screening(), source=[{"id": 1, "amount": 1}], name="shared")
    s = pm.stream(other, source=[{"id": 1}], name="shared")
    assert s.status == "failed" and "belongs to pipeline 'screening'" in str(s.error)


def test_a_file_sink_shorter_than_its_checkpoint_is_refused(
    pm: PipelineManager, tmp_path: Path
) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(src, 100)
    pm.stream(screening(), source=f"jsonl:{src}", sink=f"jsonl:{out}", batch_size=10, max_batches=2)
    out.write_text("")
    s = pm.stream(screening(), source=f"jsonl:{src}", sink=f"jsonl:{out}", batch_size=10)
    assert s.status == "failed" and "--from-start" in str(s.error)


def test_window_option_outside_a_stream_is_refused(manager: PipelineManager) -> None:
    p = Pipeline("w")
    p.add_task("agg", lambda: 1, window={"size": 10, "field": "ts"})
    with pytest.raises(DefinitionError, match="applies when the pipeline runs as a stream"):
        manager.execute_pipeline(p)


def test_cli_stream_and_runs_show(tmp_path: Path, store_backend: Any) -> None:
    from xlib_pipeline.cli import main

    (tmp_path / "pipe.py").write_text(
        "from xlib_pipeline import Pipeline\n"
        "p = Pipeline('cli_stream')\n"
        "@p.task('keep')\n"
        "def keep(batch):\n"
        "    return [r for r in batch if r['amount'] > 0]\n"
    )
    src, out, store = tmp_path / "in.jsonl", tmp_path / "out.jsonl", store_backend.target
    rows = write_jsonl(src, 120)
    args = [
        *("stream", str(tmp_path / "pipe.py"), "--source", f"jsonl:{src}"),
        *("--sink", f"jsonl:{out}", "--store", str(store), "--batch-size", "50", "--no-monitor"),
    ]
    assert main([*args, "--max-batches", "1"]) == 0
    assert main(args) == 0
    assert read_jsonl(out) == [r for r in rows if r["amount"] > 0]
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["runs", "show", "cli_stream", "--store", str(store), "--json"]) == 0
    shown = json.loads(buf.getvalue())
    assert shown["records"] == 120 and shown["batches"] == 3 and shown["status"] == "completed"
    assert shown["throughput"] > 0  # records/s since the stream started, as the text says
    assert shown["checkpoint"]["offset"] == src.stat().st_size
    assert shown["checkpoint"]["position"] == out.stat().st_size
    assert [b["seq"] for b in shown["last_batches"]] == [3, 2, 1]
    from datetime import datetime

    # times are ISO-8601 in the CLI's JSON, like runs show of a run (issue 17)
    for ts in (shown["started"], shown["updated"], shown["last_batches"][0]["committed"]):
        assert datetime.fromisoformat(ts).tzinfo is not None
    assert main(["stream", str(tmp_path / "pipe.py"), "--source", "nope:x", "--store",
                 str(store)]) == 2  # fmt: skip


def test_a_batch_is_committed_with_its_checkpoint_in_one_write(
    pm: PipelineManager, tmp_path: Path
) -> None:
    """A batch's run rows and its checkpoint reach the store in one writer commit: no
    commit per task, no separate lease round trip, no second connection."""
    src = tmp_path / "in.jsonl"
    rows = write_jsonl(src, 60)
    store = pm.store
    assert store is not None
    writes: list[list[Any]] = []
    store.write_hook = lambda batch: writes.append(list(batch))
    try:
        stream = pm.stream(
            screening(),
            source=JsonLinesSource(str(src)),
            sink=JsonLinesSink(str(tmp_path / "out.jsonl")),
            batch_size=10,
        )
    finally:
        store.write_hook = None
    assert stream.batches == 6
    assert read_jsonl(tmp_path / "out.jsonl") == expected(rows)
    # Each writer commit holding checkpoints holds those batches' run rows, whole: their
    # rows queued while an earlier batch committed are not swept into its commit. Batches
    # that queued while a commit was in flight may share one (pipelined commits).
    per_batch = [w for w in writes if any("INTO stream_batches" in str(sql) for sql, _ in w)]
    assert sum(str(sql).count("INTO stream_batches") for w in per_batch for sql, _ in w) == 6
    for w in writes:
        sqls = [str(sql) for sql, _ in w]
        ckpts = {p[2] for sql, p in w if "INTO stream_batches" in str(sql)}
        started = {
            p[0]
            for sql, p in w
            if str(sql).startswith(("INSERT INTO runs", "INSERT OR REPLACE INTO runs"))
        }
        ended = {p[-1] for sql, p in w if str(sql).startswith("UPDATE runs")}
        assert ckpts == started == ended, sqls
        if not ckpts:
            continue
        if hasattr(store, "hold"):
            # A batch's run is held until its checkpoint: its lease (claimed and released
            # in that one transaction, never seen) is not queued at all.
            assert not any("leases" in s for s in sqls), sqls
        else:
            assert any("INTO leases" in s for s in sqls) or any(
                "DELETE FROM leases" in s for s in sqls
            )
    # ... and nothing else is written per batch (the stream's own start and end aside).
    assert len(writes) <= 6 + 2
    runs = store.list_runs(pipeline="screening")
    assert len(runs) == 6 and {r.status for r in runs} == {"succeeded"}
    assert all(store.lease(r.run_id) is None for r in runs)  # every batch's lease released


def test_root_tasks_taking_the_context_params_or_too_much(pm: PipelineManager) -> None:
    """A root task takes the batch as the core calls a task with one upstream result:
    with its TaskContext and params with a default (its own, the pipeline's declared ones,
    ``stream``) besides; a root task needing arguments no batch run gives is refused
    before anything runs, by name."""
    from xlib_pipeline import TaskContext

    p = Pipeline("ctx", params={"limit": 2})

    @p.task("tag")
    def tag(batch: list[int], ctx: TaskContext, stream: Any = None) -> list[Any]:
        return [(x, ctx.params["stream"]["batch"], stream["batch"]) for x in batch]

    @p.task("cut", depends_on=["tag"])
    def cut(rows: list[Any], limit: int) -> list[Any]:  # the pipeline's default: 2
        return rows[:limit]

    got: list[Any] = []
    s = pm.stream(p, source=range(6), sink=got.extend, batch_size=3)
    assert s.status == "completed", s.error
    assert got == [(0, 1, 1), (1, 1, 1), (3, 2, 2), (4, 2, 2)]

    two = Pipeline("two_params")

    @two.task("a")
    def a(batch: list[Any], other: Any) -> Any:
        return batch

    with pytest.raises(DefinitionError, match=r"root task 'a' takes a\(batch.*, other.*\)"):
        pm.stream(two, source=[1])
    mixed = Pipeline("mixed")
    mixed.add_task("a", lambda batch: batch)
    mixed.add_task("b", lambda x, y: 1)
    mixed.add_task("c", lambda a, b: a, depends_on=["a", "b"])
    with pytest.raises(DefinitionError, match=r"root task 'b' takes <lambda>\(x, y\)"):
        pm.stream(mixed, source=[1])


def test_cli_stream_stopped_by_sigterm_exits_0(tmp_path: Path) -> None:
    """docs/streams.md: the command exits 0 when the stream stopped (Ctrl-C, SIGTERM);
    it said 'interrupted' and exited 130, without its summary."""
    import os
    import signal
    import subprocess
    import sys

    (tmp_path / "pipe.py").write_text(
        "from xlib_pipeline import Pipeline\n"
        "p = Pipeline('tail')\n"
        "@p.task('keep')\n"
        "def keep(batch):\n"
        "    return batch\n"
    )
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(src, 30)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "xlib_pipeline.cli", "stream", "pipe.py", "--source",
         "jsonl:in.jsonl", "--follow", "--sink", "jsonl:out.jsonl", "--store", "runs.sqlite",
         "--batch-size", "10", "--batch-timeout", "0.05", "--no-monitor"],
        cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for _ in range(1200):  # the 30 records are through: it is tailing the file now
            if out.exists() and len(out.read_text().splitlines()) == 30:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stream tail stopped: 30 records, 3 batches, 30 outputs" in err


def test_runs_show_prints_a_broker_batchs_offsets_briefly(tmp_path: Path) -> None:
    """A broker source's offset lists the batch's entry ids (Redis); runs show printed the
    whole lists, one per batch shown and the checkpoint's (70 kB for batches of 50). The
    text shows the first, last and count, as audit records and the monitor do; --json keeps
    them whole."""
    import contextlib
    import io

    from xlib_pipeline.cli import main
    from xlib_pipeline.streams import BaseSource, SourceBatch

    class Broker(BaseSource):
        url = "broker:test"

        def __init__(self) -> None:
            self.n = 0

        def seek(self, offset: Any) -> None:
            self.n = 0 if offset is None else int(offset["last"])

        def read(self, max_records: int, timeout: float) -> SourceBatch | None:
            if self.n >= 300:
                return None
            ids = [str(i) for i in range(self.n + 1, self.n + max_records + 1)]
            start, self.n = {"ids": [], "last": str(self.n)}, self.n + max_records
            return SourceBatch(records=ids, start=start, end={"ids": ids, "last": ids[-1]})

    store = tmp_path / "runs.sqlite"
    with PipelineManager({"store": {"path": str(store)}}, entry_points=False) as pm:
        p = Pipeline("ids")
        p.add_task("keep", lambda batch: batch)
        s = pm.stream(p, source=Broker(), sink=None, batch_size=100)
        assert s.status == "completed" and s.records == 300, s.error
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["runs", "show", "ids", "--store", str(store)]) == 0
    text = buf.getvalue()
    assert "'150'" not in text, text  # no id from inside a batch
    assert "{'first': '201', 'last': '300', 'count': 100}" in text
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["runs", "show", "ids", "--store", str(store), "--json"]) == 0
    assert len(json.loads(buf.getvalue())["checkpoint"]["offset"]["ids"]) == 100


def test_a_source_that_ends_completes_with_an_idle_timeout(
    pm: PipelineManager, tmp_path: Path
) -> None:
    """idle_timeout stops an endless stream (stopped); a stream whose source ended within
    it completed, but was reported stopped whenever idle_timeout was set."""
    src = tmp_path / "in.jsonl"
    write_jsonl(src, 30)
    s = pm.stream(screening(), source=f"jsonl:{src}", sink=None, idle_timeout=30, name="ends")
    assert s.status == "completed" and s.records == 30
    s = pm.stream(screening(), source=f"jsonl:{src}", source_options={"follow": True},
                  sink=None, idle_timeout=0.2, batch_timeout=0.05, name="tails")  # fmt: skip
    assert s.status == "stopped" and s.records == 30


def test_an_unknown_executor_is_refused_before_the_stream_starts(
    pm: PipelineManager, tmp_path: Path
) -> None:
    """--executor nosuch: the stream was created, its sink opened, and it failed at its
    first batch (exit 1, a 'failed' stream in the store); it is a ConfigError up front."""
    with pytest.raises(ConfigError, match="unknown executor 'nosuch'"):
        pm.stream(screening(), source=[{"id": 1, "amount": 1}], sink=f"jsonl:{tmp_path / 'o'}",
                  executor="nosuch")  # fmt: skip
    assert not (tmp_path / "o").exists()
    ckpt = pm.store.open_checkpoints()  # type: ignore[union-attr]
    try:
        assert ckpt.load("screening") is None
    finally:
        ckpt.close()


def test_a_late_sink_without_a_windowed_task_is_refused_before_anything_is_written(
    pm: PipelineManager, tmp_path: Path
) -> None:
    """late_sink= was accepted and never written when no task is windowed (late records
    come only from windows): a ConfigError naming the setting, before the store or a
    sink is touched."""
    out, late = tmp_path / "out.jsonl", tmp_path / "late.jsonl"
    with pytest.raises(ConfigError, match=r"late_sink= \(CLI: --late-sink\).*no task of "
                       r"pipeline 'screening' is windowed.*window=") as info:  # fmt: skip
        pm.stream(screening(), source=[{"id": 1, "amount": 1}], sink=f"jsonl:{out}",
                  late_sink=f"jsonl:{late}")  # fmt: skip
    assert info.value.key == "late_sink"
    assert not out.exists() and not late.exists()
    ckpt = pm.store.open_checkpoints()  # type: ignore[union-attr]
    try:
        assert ckpt.load("screening") is None
    finally:
        ckpt.close()


def test_cli_late_sink_without_a_windowed_task_exits_2_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from xlib_pipeline.cli import main

    (tmp_path / "pipe.py").write_text(
        "from xlib_pipeline import Pipeline\n"
        "p = Pipeline('plain')\n"
        "p.add_task('keep', lambda b: b)\n"
    )
    src, out, late = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "late.jsonl"
    write_jsonl(src, 5)
    args = [
        *("stream", str(tmp_path / "pipe.py"), "--source", f"jsonl:{src}"),
        *("--sink", f"jsonl:{out}", "--store", str(tmp_path / "runs.sqlite"), "--no-monitor"),
    ]
    assert main([*args, "--late-sink", f"jsonl:{late}"]) == 2
    err = capsys.readouterr().err
    assert "ConfigError: stream 'plain': late_sink= (CLI: --late-sink) is set" in err
    assert "Traceback" not in err
    assert not out.exists() and not late.exists()
    assert main(args) == 0  # the same stream without it runs


def test_runs_show_suggests_a_mistyped_stream_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """runs show NAME said only that no run NAME is in the store, even when NAME was one
    letter off a stream's name."""
    from xlib_pipeline.cli import main

    store = str(tmp_path / "runs.sqlite")
    with PipelineManager({"store": {"path": store}}, entry_points=False) as pm:
        pm.stream(screening(), source=[{"id": 1, "amount": 1}], sink=None, name="payments")
    assert main(["runs", "show", "paymnets", "--store", store]) == 2
    err = capsys.readouterr().err
    assert "'paymnets' is not in the run store" in err
    assert "nor is a stream; did you mean stream 'payments'?" in err


def test_a_bare_path_and_an_unmakeable_sink_folder_are_named(
    pm: PipelineManager, tmp_path: Path
) -> None:
    """--source in.jsonl said "no connector for scheme ''" with no hint; a sink file in a
    folder that cannot be made failed with a bare FileNotFoundError naming neither the sink
    nor its URL."""
    with pytest.raises(ConfigError, match=r"jsonl:in\.jsonl for a JSON-lines file"):
        pm.stream(screening(), source="in.jsonl")
    blocker = tmp_path / "file"
    blocker.write_text("")
    s = pm.stream(screening(), source=[{"id": 1, "amount": 1}],
                  sink=f"jsonl:{blocker / 'sub' / 'out.jsonl'}")  # fmt: skip
    assert s.status == "failed" and isinstance(s.error, StreamError)
    assert f"sink jsonl:{blocker / 'sub' / 'out.jsonl'}: cannot open the file" in str(s.error)


def test_a_restart_on_another_source_is_logged(
    pm: PipelineManager, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The checkpoint is a byte position in the file the stream read; restarted on another
    file it silently skipped that many bytes of it. It still continues (a moved file keeps
    its stream), with a warning naming both sources."""
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_jsonl(a, 10)
    write_jsonl(b, 30)
    pm.stream(screening(), source=f"jsonl:{a}", sink=None, name="moved")
    with caplog.at_level("WARNING"):
        s = pm.stream(screening(), source=f"jsonl:{b}", sink=None, name="moved")
    assert s.status == "completed"
    warned = [r for r in caplog.records if "stream.source_changed" in r.getMessage()]
    assert len(warned) == 1, caplog.text
    assert "a.jsonl" in caplog.text and "b.jsonl" in caplog.text
