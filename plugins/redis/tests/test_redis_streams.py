"""Redis Streams source and sink against a real server."""

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
from typing import Any

import pytest
import redis

from xlib_pipeline import ConfigError, Pipeline, PipelineManager

PIPELINE = textwrap.dedent(
    """
    from xlib_pipeline import Pipeline

    pipeline = Pipeline("redis_scoring")

    @pipeline.task("parse")
    def parse(batch):
        return [{"id": int(r["id"]), "amount": float(r["amount"])} for r in batch]

    @pipeline.task("score", depends_on=["parse"])
    def score(rows):
        return [{"id": r["id"], "flag": int(r["amount"] > 500)} for r in rows]
    """
)


def scoring() -> Pipeline:
    namespace: dict[str, Any] = {}
    exec(PIPELINE, namespace)
    p: Pipeline = namespace["pipeline"]
    return p


def fill(r: redis.Redis, n: int, stream: str = "in") -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(stream, {"id": i, "amount": (i * 37) % 1000})
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()


def outputs(r: redis.Redis) -> list[int]:
    return [int(f["id"]) for _, f in r.xrange("out")]


def test_group_source_to_stream_sink(r: redis.Redis, redis_url: str, tmp_path: Path) -> None:
    fill(r, 2500)
    with PipelineManager({"store": {"path": str(tmp_path / "runs.sqlite")}}) as pm:
        s = pm.stream(
            scoring(),
            source=f"{redis_url}/in?group=g&consumer=c1",
            sink=f"{redis_url}/out",
            batch_size=1000,
            batch_timeout=0.2,
            idle_timeout=0.5,
        )
    assert s.status == "stopped" and s.error is None and s.records == 2500
    assert outputs(r) == list(range(2500))
    first = r.xrange("out", count=1)[0][1]
    assert first == {"id": "0", "flag": "0"}
    assert r.xpending("in", "g")["pending"] == 0
    assert json.loads(r.get("xlib-pipeline:checkpoint:out"))["seq"] == s.batches


def test_a_dead_consumers_pending_entries_are_claimed(
    r: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    fill(r, 300)
    r.xgroup_create("in", "g", id="0")
    taken = r.xreadgroup("g", "dead", {"in": ">"}, count=120)  # then it dies, never acks
    assert len(taken[0][1]) == 120
    with PipelineManager({"store": {"path": str(tmp_path / "runs.sqlite")}}) as pm:
        s = pm.stream(
            scoring(),
            source=f"{redis_url}/in?group=g&consumer=alive&claim_idle_ms=0",
            sink=f"{redis_url}/out",
            batch_size=50,
            batch_timeout=0.1,
            idle_timeout=0.5,
        )
    assert s.error is None and s.records == 300
    assert sorted(outputs(r)) == list(range(300))
    assert r.xpending("in", "g")["pending"] == 0


def test_the_sink_ahead_of_the_store_is_not_written_twice(
    r: redis.Redis, redis_url: str, tmp_path: Path, forget_batches_after: Any
) -> None:
    """A crash after EXEC but before the store's commit: the restart adopts the sink's
    checkpoint instead of re-running the batch."""
    fill(r, 100)
    store = tmp_path / "runs.sqlite"
    with PipelineManager({"store": {"path": str(store)}}) as pm:
        pm.stream(
            scoring(),
            source=f"{redis_url}/in?group=g&consumer=c",
            sink=f"{redis_url}/out",
            batch_size=10,
            max_batches=3,
        )
    forget_batches_after(store, 2)  # the store forgets batch 3; Redis has it
    with PipelineManager({"store": {"path": str(store)}}) as pm:
        s = pm.stream(
            scoring(),
            source=f"{redis_url}/in?group=g&consumer=c",
            sink=f"{redis_url}/out",
            batch_size=10,
            idle_timeout=0.5,
        )
    assert s.error is None
    assert outputs(r) == list(range(100))
    assert r.xpending("in", "g")["pending"] == 0


def test_bad_urls_and_records_are_named(r: redis.Redis, redis_url: str, tmp_path: Path) -> None:
    with PipelineManager({"store": {"path": str(tmp_path / "runs.sqlite")}}) as pm:
        with pytest.raises(ConfigError, match=r"consumer group is required"):
            pm.stream(scoring(), source=f"{redis_url}/in")
        with pytest.raises(ConfigError, match="unknown parameter"):
            pm.stream(scoring(), source=f"{redis_url}/in?group=g&grup=x")
        with pytest.raises(ConfigError, match="--follow is for files"):
            pm.stream(scoring(), source=f"{redis_url}/in?group=g", source_options={"follow": 1})
        p = Pipeline("lists")
        p.add_task("x", lambda batch: [["4111-1111", 2] for _ in batch])
        fill(r, 3)
        s = pm.stream(
            p, source=f"{redis_url}/in?group=g", sink=f"{redis_url}/out", idle_timeout=0.2
        )
        assert s.status == "failed" and "non-empty dict" in str(s.error)
        assert "got list" in str(s.error) and "4111" not in str(s.error)  # stored in clear
        assert r.xpending("in", "g")["pending"] == 3  # nothing acknowledged, nothing lost


@pytest.mark.slow
def test_sigkill_at_ten_seeded_points(r: redis.Redis, redis_url: str, tmp_path: Path) -> None:
    n = 100_000
    fill(r, n)
    (tmp_path / "pipe.py").write_text(PIPELINE)
    cmd = [
        sys.executable, "-m", "xlib_pipeline.cli", "stream", "pipe.py",
        "--source", f"{redis_url}/in?group=g&consumer=worker",
        "--sink", f"{redis_url}/out", "--store", str(tmp_path / "runs.sqlite"),
        "--batch-size", "500", "--batch-timeout", "0.2", "--idle-timeout", "1", "--no-monitor",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    rng = random.Random(1313)
    kills = 0
    for _ in range(10):
        proc = subprocess.Popen(
            cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 120
        start = r.xlen("out")
        while time.monotonic() < deadline and proc.poll() is None and r.xlen("out") == start:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.6))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
    assert kills >= 5, "the stream finished before most kills: nothing was tested"
    final = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr
    ids = outputs(r)
    assert len(ids) == n and sorted(ids) == list(range(n))
    assert r.xpending("in", "g")["pending"] == 0
    with sqlite3.connect(tmp_path / "runs.sqlite") as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        # Each entry counted once, adopted batches included (docs/streams.md's counters).
        assert c.execute("SELECT records, outputs FROM streams").fetchone() == (n, n)


def test_pending_entries_are_not_delivered_twice_before_their_commit(
    r: redis.Redis, redis_url: str
) -> None:
    """Our own pending entries (delivered before a restart) are read in batches; the next
    batch is read while the previous one commits, before its acknowledgement."""
    from xlib_pipeline_redis._connectors import RedisStreamSource

    fill(r, 30)
    r.xgroup_create("in", "g", id="0")
    r.xreadgroup("g", "c", {"in": ">"}, count=12)  # delivered, never acknowledged: a crash
    src = RedisStreamSource.from_url(f"{redis_url}/in?group=g&consumer=c", {})
    try:
        got = []
        for _ in range(4):  # nothing committed yet: 12 pending in three batches, then new
            batch = src.read(5, 0.1)
            assert batch is not None
            got.append([int(x["id"]) for x in batch.records])
        assert got == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16]]
        src.committed({"ids": batch.end["ids"]})
    finally:
        src.close()


def test_pending_entries_to_a_file_sink_exactly_once(
    r: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """Acknowledged only after each batch's commit (not in the sink's transaction): the
    pending entries of a restart reach the file once each."""
    fill(r, 100)
    r.xgroup_create("in", "g", id="0")
    r.xreadgroup("g", "c", {"in": ">"}, count=45)
    out = tmp_path / "out.jsonl"
    with PipelineManager({"store": {"path": str(tmp_path / "runs.sqlite")}}) as pm:
        s = pm.stream(
            scoring(),
            source=f"{redis_url}/in?group=g&consumer=c",
            sink=f"jsonl:{out}",
            batch_size=10,
            batch_timeout=0.1,
            idle_timeout=0.5,
        )
    assert s.error is None and s.records == 100
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert sorted(ids) == list(range(100))
    assert r.xpending("in", "g")["pending"] == 0


def test_lag_counts_what_the_group_has_not_processed_not_the_batches_in_flight(
    r: redis.Redis, redis_url: str
) -> None:
    """Lag (docs/streams.md) is what the stream has not read yet, as a JSON-lines source's:
    entries never delivered plus pending entries no batch of this stream holds (its own,
    left by a restart, and a dead consumer's, which it will claim); the entries of the
    batches it is running are not lag."""
    from xlib_pipeline_redis._connectors import RedisStreamSource

    fill(r, 30)
    r.xgroup_create("in", "g", id="0")
    r.xreadgroup("g", "c", {"in": ">"}, count=12)  # ours before a crash: read again
    r.xreadgroup("g", "live", {"in": ">"}, count=3)  # another consumer's, running now
    src = RedisStreamSource.from_url(f"{redis_url}/in?group=g&consumer=c", {})
    try:
        assert src.lag() == 12 + 15  # 12 to re-read, 15 never delivered
        first = src.read(5, 0.1)
        assert first is not None and len(first.records) == 5
        assert src.lag() == 7 + 15  # the 5 in flight are not waiting
        second = src.read(5, 0.1)
        assert second is not None and len(second.records) == 5
        assert src.lag() == 2 + 15
        src.committed(first.end)
        assert src.lag() == 2 + 15
        rest = src.read(5, 0.1)
        assert rest is not None and len(rest.records) == 2
        assert src.lag() == 15
        src.committed(second.end)
        src.committed(rest.end)
        assert src.lag() == 15
        third = src.read(10, 0.1)
        assert third is not None and len(third.records) == 10
        assert src.lag() == 5
        src.committed(third.end)
        assert src.lag() == 5
    finally:
        src.close()
    # The other consumer died: its 3 entries will be claimed, so they are waiting too.
    time.sleep(0.05)
    src = RedisStreamSource.from_url(f"{redis_url}/in?group=g&consumer=c&claim_idle_ms=20", {})
    try:
        assert src.lag() == 3 + 5
        claimed = src.read(10, 0.1)
        assert claimed is not None and len(claimed.records) == 3
        assert src.lag() == 5
    finally:
        src.close()


@pytest.mark.parametrize("sink", ["jsonl", "redis"])
def test_a_finished_streams_lag_is_zero(
    r: redis.Redis, redis_url: str, tmp_path: Path, sink: str
) -> None:
    """Every entry processed: lag 0 on the stream and in the store (runs show), whether the
    entries are acknowledged in the sink's transaction or after the checkpoint."""
    fill(r, 100)
    target = f"jsonl:{tmp_path / 'out.jsonl'}" if sink == "jsonl" else f"{redis_url}/out"
    store = tmp_path / "runs.sqlite"
    with PipelineManager({"store": {"path": str(store)}}) as pm:
        s = pm.stream(
            scoring(),
            source=f"{redis_url}/in?group=g&consumer=c",
            sink=target,
            batch_size=10,
            batch_timeout=0.1,
            idle_timeout=0.3,
        )
    assert s.error is None and s.records == 100
    assert s.lag == 0
    with sqlite3.connect(store) as c:
        assert c.execute("SELECT lag FROM streams").fetchone()[0] == 0


def test_adopted_batches_count_their_records_and_outputs(
    r: redis.Redis, redis_url: str, tmp_path: Path, forget_batches_after: Any
) -> None:
    """A crash after two batches' EXEC but before the store's commit: the restart adopts
    the sink's checkpoint, and the counters (docs/streams.md) count the adopted batches'
    input records and the entries they wrote, as if their commits had not been lost."""
    fill(r, 100)
    store = tmp_path / "runs.sqlite"
    halve = textwrap.dedent(  # outputs differ from inputs: one entry per even id
        """
        from xlib_pipeline import Pipeline
        pipeline = Pipeline("redis_scoring")
        @pipeline.task("even")
        def even(batch):
            return [{"id": r["id"]} for r in batch if int(r["id"]) % 2 == 0]
        """
    )
    ns: dict[str, Any] = {}
    exec(halve, ns)
    args = {
        "source": f"{redis_url}/in?group=g&consumer=c",
        "sink": f"{redis_url}/out",
        "batch_size": 10,
    }
    with PipelineManager({"store": {"path": str(store)}}) as pm:
        pm.stream(ns["pipeline"], max_batches=4, **args)
    forget_batches_after(store, 2)
    with PipelineManager({"store": {"path": str(store)}}) as pm:
        s = pm.stream(ns["pipeline"], idle_timeout=0.5, **args)
    assert s.error is None
    assert sorted(outputs(r)) == list(range(0, 100, 2))
    assert (s.records, s.outputs, s.batches) == (100, 50, 10)
    with sqlite3.connect(store) as c:
        assert c.execute("SELECT records, outputs FROM streams").fetchone() == (100, 50)
        catch_up = c.execute(
            "SELECT records, outputs FROM stream_batches WHERE run_id IS NULL"
        ).fetchall()
    assert catch_up == [(20, 10)]  # batches 3 and 4, adopted as one catch-up checkpoint


def test_adopted_batches_of_another_source_count_their_outputs(
    r: redis.Redis, redis_url: str, tmp_path: Path, forget_batches_after: Any
) -> None:
    """The sink cannot know how many records another source's batch read: an adopted batch
    then counts its outputs only (docs/plugins/redis.md)."""
    store = tmp_path / "runs.sqlite"
    rows = [{"id": i, "amount": i * 10} for i in range(50)]
    args = {"sink": f"{redis_url}/out", "batch_size": 10}
    with PipelineManager({"store": {"path": str(store)}}) as pm:
        pm.stream(scoring(), source=rows, max_batches=3, **args)
    forget_batches_after(store, 2)
    with PipelineManager({"store": {"path": str(store)}}) as pm:
        s = pm.stream(scoring(), source=rows, **args)
    assert s.error is None and outputs(r) == list(range(50))
    assert (s.records, s.outputs, s.batches) == (40, 50, 5)


def test_a_password_in_the_url_is_never_stored_or_shown(
    r: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """redis://user:PASSWORD@host: the password was kept in the connectors' url, so the
    run store (the stream's source and sink), runs show, audit and lineage records and
    error messages held it in clear. It is masked; the connection still uses it."""
    r.acl_setuser("streamer", enabled=True, passwords=["+s3cret-pw"], keys=["*"],
                  commands=["+@all"])  # fmt: skip
    try:
        authed = redis_url.replace("redis://", "redis://streamer:s3cret-pw@")
        fill(r, 5)
        db = tmp_path / "runs.sqlite"
        with PipelineManager({"store": {"path": str(db)}}) as pm:
            s = pm.stream(scoring(), source=f"{authed}/in?group=g", sink=f"{authed}/out",
                          idle_timeout=0.2)  # fmt: skip
            assert s.status == "stopped" and s.outputs == 5, s.error
            with pytest.raises(ConfigError) as bad:
                pm.stream(scoring(), source=f"{authed}/in?group=g&grup=x")
        assert "s3cret-pw" not in str(bad.value) and "streamer:***@" in str(bad.value)
        with sqlite3.connect(db) as c:
            dump = "\n".join(c.iterdump())
        assert "s3cret-pw" not in dump and "streamer:***@" in dump
    finally:
        r.acl_deluser("streamer")


def test_bad_numeric_url_parameters_are_named(redis_url: str, tmp_path: Path) -> None:
    """maxlen=abc failed with a bare \"invalid literal for int()\" (no URL, no parameter);
    maxlen=0 was taken (every output trimmed away) and claim_idle_ms=-5 failed only at
    the first read (an XAUTOCLAIM DataError). All are ConfigErrors naming URL and key."""
    with PipelineManager({"store": {"path": str(tmp_path / "runs.sqlite")}}) as pm:
        for sink, why in (
            (f"{redis_url}/out?maxlen=abc", "maxlen must be an int >= 1, got 'abc'"),
            (f"{redis_url}/out?maxlen=0", "maxlen must be an int >= 1, got '0'"),
        ):
            with pytest.raises(ConfigError, match=rf"sink '{redis_url}/out\?maxlen=.*{why}"):
                pm.stream(scoring(), source=[], sink=sink)
        with pytest.raises(ConfigError, match=r"claim_idle_ms must be an int >= 0, got '-5'"):
            pm.stream(scoring(), source=f"{redis_url}/in?group=g&claim_idle_ms=-5")
