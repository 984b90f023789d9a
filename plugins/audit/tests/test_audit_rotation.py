"""Trail rotation: segments that form one chain, verified as a series; gaps named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from xlib_pipeline_audit import AuditTrail, read, verify, verify_series
from xlib_pipeline_audit import _segments as segments_mod

from xlib_pipeline import ConfigError, Pipeline, PipelineManager

KEY = b"r" * 32


def write(path: Path, n: int, *, sync_every: int = 10, **kw: Any) -> None:
    trail = AuditTrail(path, key=KEY, **kw)
    try:
        for i in range(n):
            trail.append({"action": "test.record", "outcome": "success", "i": i})
            if (i + 1) % sync_every == 0:
                trail.sync()
    finally:
        trail.close()


def closed(path: Path) -> list[Path]:
    return [p for _, p in segments_mod.segments(path)]


def test_size_rotation_keeps_one_chain_across_segments(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 300, max_bytes=4096)
    segs = closed(path)
    assert len(segs) >= 5
    assert [p.name for p in segs][:2] == ["audit.000001.jsonl", "audit.000002.jsonl"]
    report = verify_series(path, KEY)
    assert report.ok, str(report)
    # Every segment also verifies on its own, with its own head anchor.
    for p in [*segs, path]:
        assert verify(p, KEY).ok
        assert (p.parent / (p.name + ".head")).exists()
    # Read whole: the series is one sequence 1..N; each segment after the first starts
    # with the record naming the one before it.
    recs = list(read(path))
    assert [r["seq"] for r in recs] == list(range(1, len(recs) + 1))
    assert [r["i"] for r in recs if r["action"] == "test.record"] == list(range(300))
    starts = [r for r in recs if r["action"] == segments_mod.SEGMENT_ACTION]
    assert [s["previous_segment"] for s in starts] == [p.name for p in segs]
    assert all(os.stat(p).st_mode & 0o777 == 0o600 for p in segs)
    # A writer reopening the rotated trail goes on in the active segment.
    write(path, 5, max_bytes=4096)
    assert verify_series(path, KEY).ok


def test_missing_middle_first_and_last_segments_are_named(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 200, max_bytes=4096)
    segs = closed(path)
    assert len(segs) >= 4
    hidden = tmp_path / "hidden"
    hidden.mkdir()

    def without(p: Path) -> str | None:
        p.rename(hidden / p.name)
        try:
            rep = verify_series(path, KEY)
            assert not rep.ok
            return rep.reason
        finally:
            (hidden / p.name).rename(p)

    assert "audit.000002.jsonl missing" in (without(segs[1]) or "")
    assert "audit.000001.jsonl missing" in (without(segs[0]) or "")
    # The newest closed segment gone: the active file names what it continues.
    reason = without(segs[-1]) or ""
    assert segs[-1].name in reason
    assert verify_series(path, KEY).ok


def test_an_edited_or_swapped_segment_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 120, max_bytes=4096)
    segs = closed(path)
    lines = segs[1].read_bytes().splitlines(keepends=True)
    rec = json.loads(lines[3])
    rec["i"] = 99999
    lines[3] = (json.dumps(rec, separators=(",", ":"), sort_keys=True) + "\n").encode()
    original = segs[1].read_bytes()
    segs[1].write_bytes(b"".join(lines))
    rep = verify_series(path, KEY)
    assert not rep.ok and segs[1].name in (rep.reason or "")
    segs[1].write_bytes(original)
    # Two segments swapped by name: each verifies alone, the series does not.
    a, b = segs[1], segs[2]
    tmp = tmp_path / "swap"
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)
    for suffix in (".head",):
        ha, hb = a.with_name(a.name + suffix), b.with_name(b.name + suffix)
        ha.rename(tmp)
        hb.rename(ha)
        tmp.rename(hb)
    assert not verify_series(path, KEY).ok


def _at_a_rotation_point(tmp_path: Path) -> tuple[Path, int, Path]:
    """A rotated trail brought by hand to the point where its active file is closed: the
    next segment's anchor written, the active head at its last record. Returns the trail,
    the number of closed segments and the next segment's path."""
    from xlib_pipeline_audit._head import head_path, write_head

    path = tmp_path / "audit.jsonl"
    write(path, 30, max_bytes=4096)
    before = len(closed(path))
    trail = AuditTrail(path, key=KEY)
    trail.append({"action": "test.last"})
    trail.sync()
    trail.close()
    nxt = segments_mod.segment_path(path, before + 1)
    head = json.loads((path.parent / (path.name + ".head")).read_text())
    write_head(
        head_path(nxt),
        trail=nxt.name,
        seq=head["seq"],
        last_hash=head["hash"],
        size=head["size"],
        key=KEY,
        sync=False,
    )
    return path, before, nxt


def test_a_rotation_cut_by_a_crash_is_finished_on_open(tmp_path: Path) -> None:
    """Killed after renaming the active file, before its successor's first record."""
    # The closed segment anchored, the active head still at its last record.
    path, before, nxt = _at_a_rotation_point(tmp_path)
    path.rename(nxt)
    # Reopening finishes the rotation and goes on.
    write(path, 3)
    rep = verify_series(path, KEY)
    assert rep.ok, str(rep)
    assert len(closed(path)) == before + 1


def test_a_rotation_cut_between_link_and_rename_is_finished_on_open(tmp_path: Path) -> None:
    """Killed after the active file got its closed-segment name, before its successor
    was renamed into place (a half-written ``.next`` file is left behind)."""
    path, before, nxt = _at_a_rotation_point(tmp_path)
    os.link(path, nxt)
    path.with_name(path.name + ".next").write_bytes(b'{"half":')
    rep = verify_series(path, KEY)
    assert not rep.ok and "rotation was cut short" in (rep.reason or "")
    write(path, 3)
    rep = verify_series(path, KEY)
    assert rep.ok, str(rep)
    assert len(closed(path)) == before + 1
    assert not path.with_name(path.name + ".next").exists()
    recs = [r for r in read(path) if r["action"] == "test.last"]
    assert len(recs) == 1


def test_a_writer_opening_during_another_writers_rotation_waits_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race CI once hit: a second writer opened the trail while the first was between
    closing its segment and starting the next, and both wrote a segment record."""
    import threading

    path = tmp_path / "audit.jsonl"
    a = AuditTrail(path, key=KEY, multiprocess=True, max_bytes=4096)
    b = AuditTrail(path, key=KEY, multiprocess=True, max_bytes=4096)
    in_rotation = threading.Event()
    real_sync_dir = segments_mod._sync_dir
    paused: list[bool] = []

    def slow_sync_dir(folder: Path) -> None:
        real_sync_dir(folder)
        if not paused and threading.current_thread() is threading.main_thread():
            paused.append(True)
            in_rotation.set()
            time.sleep(0.5)  # b opens and appends meanwhile

    monkeypatch.setattr(segments_mod, "_sync_dir", slow_sync_dir)
    done: list[BaseException | None] = []

    def second_writer() -> None:
        in_rotation.wait(30)
        try:
            b.append({"action": "test.b"})
            b.close()
            done.append(None)
        except BaseException as exc:  # reported below
            done.append(exc)

    t = threading.Thread(target=second_writer)
    t.start()
    i = 0
    while not paused:
        a.append({"action": "test.a", "i": i})
        i += 1
        a.sync()
    t.join(60)
    a.append({"action": "test.a", "i": i})
    a.close()
    assert done == [None]
    rep = verify_series(path, KEY)
    assert rep.ok, str(rep)
    recs = list(read(path))
    assert [r["seq"] for r in recs] == list(range(1, len(recs) + 1))
    assert [r["action"] for r in recs].count("test.b") == 1


def test_time_rotation_closes_the_segment_when_its_hour_is_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.jsonl"
    trail = AuditTrail(path, key=KEY, rotate="hourly")
    trail.append({"action": "test.a"})
    trail.sync()
    assert closed(path) == []
    real = segments_mod.time.time
    monkeypatch.setattr(segments_mod.time, "time", lambda: real() + 3600)
    trail.append({"action": "test.b"})
    trail.sync()
    trail.close()
    assert len(closed(path)) == 1
    assert verify_series(path, KEY).ok


def test_config_keys_and_their_errors(tmp_path: Path) -> None:
    p = Pipeline("rot")
    for i in range(60):
        p.add_task(f"t{i}", lambda: None)
    path = tmp_path / "audit.jsonl"
    (tmp_path / "k").write_bytes(KEY)
    with PipelineManager(
        {"audit": {"path": str(path), "max_bytes": 8192, "hmac_key_file": str(tmp_path / "k")}}
    ) as pm:
        for _ in range(3):
            assert pm.execute_pipeline(p).success
    assert closed(path)
    assert verify_series(path, KEY).ok, str(verify_series(path, KEY))
    with pytest.raises(ConfigError, match=r"audit\.max_bytes.*at least 4096"):
        PipelineManager({"audit": {"path": str(path), "max_bytes": 10}})
    with pytest.raises(ConfigError, match=r"audit\.rotate.*'daily'.*did you mean 'daily'"):
        PipelineManager({"audit": {"path": str(path), "rotate": "dayly"}})


def test_cli_verifies_the_series(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 80, max_bytes=4096)
    key_file = tmp_path / "key"
    key_file.write_bytes(KEY)
    cmd = [sys.executable, "-m", "xlib_pipeline.cli", "audit", "verify", str(path)]
    ok = subprocess.run([*cmd, "--key-file", str(key_file)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "OK series" in ok.stdout and "audit.000001.jsonl" in ok.stdout
    closed(path)[0].unlink()
    bad = subprocess.run([*cmd, "--key-file", str(key_file)], capture_output=True, text=True)
    assert bad.returncode == 1
    assert "audit.000001.jsonl missing" in bad.stderr


WRITER = textwrap.dedent(
    """
    import sys
    from xlib_pipeline_audit import AuditTrail
    t = AuditTrail(sys.argv[1], key=b"r" * 32, multiprocess=True, max_bytes=4096)
    for i in range(int(sys.argv[3])):
        t.append({"action": "test.proc", "who": sys.argv[2], "i": i})
        if i % 7 == 0:
            t.sync()
    t.close()
    """
)


def test_two_processes_rotating_one_trail(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    script = tmp_path / "w.py"
    script.write_text(WRITER)
    procs = [
        subprocess.Popen([sys.executable, str(script), str(path), who, "150"], text=True)
        for who in ("a", "b")
    ]
    for proc in procs:
        assert proc.wait(timeout=300) == 0
    rep = verify_series(path, KEY)
    assert rep.ok, str(rep)
    recs = [r for r in read(path) if r["action"] == "test.proc"]
    for who in ("a", "b"):
        assert [r["i"] for r in recs if r["who"] == who] == list(range(150))
    assert len(closed(path)) >= 3


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("append"), st.integers(1, 30)),
            st.tuples(st.just("sync"), st.just(0)),
            st.tuples(st.just("reopen"), st.just(0)),
        ),
        max_size=25,
    ),
    max_bytes=st.sampled_from([4096, 6000, 20000]),
)
def test_any_history_of_appends_syncs_and_reopens_verifies(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int]], max_bytes: int
) -> None:
    path = tmp_path_factory.mktemp("h") / "audit.jsonl"
    trail = AuditTrail(path, key=KEY, max_bytes=max_bytes)
    trail.append({"action": "test.h", "n": 0, "pad": ""})
    n = 1
    try:
        for op, k in ops:
            if op == "append":
                for _ in range(k):
                    trail.append({"action": "test.h", "n": n, "pad": "x" * 80})
                    n += 1
            elif op == "sync":
                trail.sync()
            else:
                trail.close()
                trail = AuditTrail(path, key=KEY, max_bytes=max_bytes)
    finally:
        trail.close()
    rep = verify_series(path, KEY)
    assert rep.ok, str(rep)
    recs = list(read(path))
    assert [r["seq"] for r in recs] == list(range(1, len(recs) + 1))
    assert [r["n"] for r in recs if r["action"] == "test.h"] == list(range(n))
    for p in closed(path):
        assert p.stat().st_size >= max_bytes  # closed only once full
