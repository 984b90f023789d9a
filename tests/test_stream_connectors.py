"""The JSON-lines connectors' per-batch shortcuts: offsets without a tell(), lag without a
stat per batch (as of the last read that reached the file's end or the last stat)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xlib_pipeline import ConfigError
from xlib_pipeline.streams import JsonLinesSink, JsonLinesSource


def _lines(path: Path, rows: list[Any]) -> int:
    with open(path, "ab") as f:
        for r in rows:
            f.write((json.dumps(r) + "\n").encode())
    return os.path.getsize(path)


def _stats(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = Path.stat

    def counted(self: Path, *a: Any, **k: Any) -> Any:
        calls.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "stat", counted)
    return calls


def test_lag_is_the_size_seen_last_and_a_stat_at_most_every_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "in.jsonl"
    size = _lines(path, [{"i": i} for i in range(30)])
    src = JsonLinesSource(path)
    src.LAG_INTERVAL = 3600.0  # type: ignore[misc]
    stats = _stats(monkeypatch)
    batch = src.read(10, 0.1)
    assert batch is not None
    assert src.lag() == size - batch.end  # the size seen when the file was opened
    grown = _lines(path, [{"i": i} for i in range(30, 35)])
    batch = src.read(10, 0.1)
    assert batch is not None
    # Within the interval the lag is as of the last look at the size (no stat per batch).
    assert src.lag() == size - batch.end
    assert stats == []
    src.LAG_INTERVAL = 0.0  # type: ignore[misc]
    assert src.lag() == grown - batch.end  # re-checked with a stat
    assert len(stats) == 1
    src.LAG_INTERVAL = 3600.0  # type: ignore[misc]
    while src.read(10, 0.1) is not None:
        pass
    assert src.lag() == 0  # a read reached the end: the size is known without a stat
    assert len(stats) == 1
    src.close()


def test_lag_is_rechecked_once_the_stream_reads_past_the_size_it_knew(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    _lines(path, [{"i": i} for i in range(5)])
    src = JsonLinesSource(path, follow=True, poll_interval=0.01)
    src.LAG_INTERVAL = 3600.0  # type: ignore[misc]
    batch = src.read(10, 0.02)  # reaches the end: size known
    assert batch is not None and len(batch.records) == 5 and src.lag() == 0
    grown = _lines(path, [{"i": i} for i in range(5, 25)])
    batch = src.read(10, 0.02)
    assert batch is not None and len(batch.records) == 10
    assert src.lag() == grown - batch.end  # past the known size: stat'ed again
    src.close()


_ROW = st.one_of(
    st.integers(), st.text(max_size=8), st.dictionaries(st.text(max_size=3), st.integers())
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(st.one_of(_ROW, st.just("")), max_size=30),
    newline_at_end=st.booleans(),
    size=st.integers(1, 7),
    follow=st.booleans(),
)
def test_offsets_are_the_files_position(
    tmp_path_factory: pytest.TempPathFactory,
    rows: list[Any],
    newline_at_end: bool,
    size: int,
    follow: bool,
) -> None:
    """Each batch's end is where the file is read up to (what f.tell() said before)."""
    path = tmp_path_factory.mktemp("src") / "in.jsonl"
    text = "\n".join("" if r == "" else json.dumps(r) for r in rows)
    if rows and newline_at_end:
        text += "\n"
    path.write_bytes(text.encode())
    src = JsonLinesSource(path, follow=follow, poll_interval=0.001 if follow else None)
    src.LAG_INTERVAL = 3600.0  # type: ignore[misc]
    pos = 0
    seen: list[Any] = []
    for _ in range(len(rows) + 3):
        batch = src.read(size, 0.0)
        if batch is None:
            break
        assert batch.start == pos
        assert batch.end == src._f.tell()
        progressed = batch.end != pos
        pos = batch.end
        seen.extend(batch.records)
        if not progressed:
            break
    complete = text if not follow else text[: text.rfind("\n") + 1] if "\n" in text else ""
    want = [json.loads(line) for line in complete.splitlines() if line.strip()]
    assert seen == want
    assert pos == len(complete.encode())
    assert src.lag() == len(text.encode()) - pos  # every read ended at the file's end
    src.close()


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(_JSON)
def test_checkpoint_json_is_json_dumps_sorted(value: Any) -> None:
    """The checkpoint columns' encoder (a shortcut for ints and None) writes what
    ``json.dumps(value, sort_keys=True)`` writes."""
    from xlib_pipeline.streams._checkpoint import _j

    assert _j(value) == json.dumps(value, sort_keys=True)


@pytest.mark.parametrize(
    ("text", "bad_line"),
    [
        ('{"id": 1}, {"id": 2}\n{"id": 3}\n', 1),  # two values on one line
        ('{"id": 0}\n[1\n2]\n', 2),  # one value over two lines
    ],
)
def test_a_line_holding_other_than_one_json_value_is_refused(
    tmp_path: Path, text: str, bad_line: int
) -> None:
    """The batch's lines are parsed joined as one array first (fast); a line that holds
    two values, or a value split over lines, parses that way too, and must still be named
    as a line that is not JSON (not read as two records, or one)."""
    from xlib_pipeline.streams import StreamError

    path = tmp_path / "in.jsonl"
    path.write_text(text)
    src = JsonLinesSource(path)
    with pytest.raises(StreamError, match=rf"in\.jsonl: line {bad_line} \(byte \d+\) is not JSON"):
        src.read(100, 0.0)
    src.close()


def test_an_output_record_that_is_not_json_names_its_type(tmp_path: Path) -> None:
    from xlib_pipeline.streams import Checkpoint, IterableSource, JsonLinesSink, StreamError

    sink = JsonLinesSink(tmp_path / "out.jsonl")
    sink.open(None)
    with pytest.raises(StreamError, match=r"out\.jsonl: batch 4 .*not JSON-serializable") as exc:
        sink.write([{"ok": 1}, {"at": {"4111-1111"}}], Checkpoint(seq=4, offset=0, position=0),
                   IterableSource([]))  # fmt: skip
    assert "Object of type set is not JSON serializable" in str(exc.value)
    assert "4111" not in str(exc.value)  # the type, never the value (stored in clear)
    assert "NoneType" not in str(exc.value)
    sink.close()
    assert (tmp_path / "out.jsonl").read_bytes() == b""  # nothing of the batch written


def test_an_idle_followed_file_is_polled_every_poll_interval_with_timeout_0(
    tmp_path: Path,
) -> None:
    """batch_timeout=0 on a followed file read in a busy loop while it was idle (a CPU
    each); the source still polls every poll_interval then. A bound on the reads while
    idle, not a timing: a slower machine only reads fewer times."""
    from xlib_pipeline import Pipeline, PipelineManager

    path = tmp_path / "in.jsonl"
    path.write_text("")
    src = JsonLinesSource(path, follow=True, poll_interval=0.1)
    reads: list[int] = []
    real = src.read

    def counted(max_records: int, timeout: float) -> Any:
        reads.append(1)
        return real(max_records, timeout)

    src.read = counted  # type: ignore[method-assign]
    p = Pipeline("idle")
    p.add_task("keep", lambda batch: batch)
    config = {"store": {"path": str(tmp_path / "r.sqlite")}}
    with PipelineManager(config, entry_points=False) as pm:
        s = pm.stream(p, source=src, sink=None, batch_timeout=0, idle_timeout=0.5)
    assert s.status == "stopped"
    assert len(reads) <= 20, len(reads)  # 0.5 s / 0.1 s: about 5; busy: tens of thousands


@pytest.mark.parametrize("how", ["truncate", "replace"])
def test_a_followed_file_truncated_or_replaced_stops_the_stream(tmp_path: Path, how: str) -> None:
    """Log rotation under a followed file: truncated (copytruncate) or replaced at its path,
    the stream waited forever on what it would never read again, status running, lag 0.
    It now fails, naming the file and what happened; what it committed stays committed."""
    import time

    from xlib_pipeline import Pipeline, PipelineManager

    path = tmp_path / "in.jsonl"
    _lines(path, [{"i": i} for i in range(10)])
    p = Pipeline("tail")
    p.add_task("keep", lambda batch: batch)
    config = {"store": {"path": str(tmp_path / "r.sqlite")}}
    with PipelineManager(config, entry_points=False) as pm:
        s = pm.stream(p, source=JsonLinesSource(path, follow=True, poll_interval=0.01),
                      sink=None, batch_timeout=0.05, wait=False)  # fmt: skip
        for _ in range(2000):
            if s.records == 10:
                break
            time.sleep(0.01)
        if how == "truncate":
            path.write_text("")
        else:
            path.rename(tmp_path / "in.jsonl.1")
            _lines(path, [{"i": 0}])
        ended = s.wait(30)
        s.stop()  # (if it kept waiting on the rotated file)
        s.wait()
    assert ended, "the stream kept waiting on a rotated file"
    assert s.status == "failed" and s.records == 10 and s.batches == 1
    want = "was truncated to 0 bytes" if how == "truncate" else "another file replaced it"
    assert want in str(s.error) and "in.jsonl" in str(s.error)


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"poll_interval": 0.2}, "poll_interval applies only to a followed file (follow=true"),
        ({"follow": True, "poll_interval": 0}, "poll_interval must be seconds > 0, got 0"),
        ({"follow": True, "poll_interval": "fast"}, "poll_interval must be seconds > 0"),
        ({"follow": True, "poll_interval": True}, "poll_interval must be seconds > 0"),
        ({"follow": "yes"}, "follow must be true or false, got 'yes'"),
    ],
)
def test_jsonl_source_options_that_cannot_take_effect_are_refused(
    tmp_path: Path, options: dict[str, Any], says: str
) -> None:
    """poll_interval was accepted and never used without follow (an unfollowed file is
    read to its end, never polled); a non-number raised a bare ValueError, and
    follow='yes' was truthy. Refused at construction, naming the source."""
    path = tmp_path / "in.jsonl"
    with pytest.raises(ConfigError, match=re.escape(says)) as info:
        JsonLinesSource.from_url(f"jsonl:{path}", options)
    assert f"jsonl:{path}" in str(info.value) and info.value.key in options
    assert not path.exists()
    with pytest.raises(ConfigError, match=re.escape(says)):
        JsonLinesSource(path, **options)
    followed = JsonLinesSource.from_url(f"jsonl:{path}", {"follow": True, "poll_interval": 1})
    assert (followed.follow, followed.poll_interval) == (True, 1.0)
    assert JsonLinesSource(path).poll_interval == 0.05  # the default, used only when followed


def test_cli_poll_interval_without_follow_exits_2_before_the_store_is_touched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from xlib_pipeline.cli import main

    (tmp_path / "pipe.py").write_text(
        "from xlib_pipeline import Pipeline\np = Pipeline('tail')\np.add_task('k', lambda b: b)\n"
    )
    src, store = tmp_path / "in.jsonl", tmp_path / "runs.sqlite"
    _lines(src, [{"id": 1}])
    args = ["stream", str(tmp_path / "pipe.py"), "--source", f"jsonl:{src}", "--store", str(store)]
    args += ["--no-monitor", "--source-option", "poll_interval=0.2"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "poll_interval applies only to a followed file" in err and "Traceback" not in err
    assert not store.exists()
    assert main([*args, "--follow", "--max-records", "1"]) == 0


@pytest.mark.parametrize("value", ["no", 1, None])
def test_jsonl_sink_fsync_must_be_a_bool(tmp_path: Path, value: Any) -> None:
    """fsync='no' (--sink-option fsync=no) was truthy: the sink synced every batch."""
    url = f"jsonl:{tmp_path / 'out.jsonl'}"
    with pytest.raises(ConfigError, match=re.escape(f"fsync must be true or false, got {value!r}")):
        JsonLinesSink.from_url(url, {"fsync": value})
    assert JsonLinesSink.from_url(url, {"fsync": False}).fsync is False
    assert JsonLinesSink.from_url(url, {}).fsync is False
