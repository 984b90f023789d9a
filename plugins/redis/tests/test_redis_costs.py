"""Round-trips of the Redis source, and what a restart and a windowed stream record,
against a real server."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import redis
from xlib_pipeline_redis._connectors import RedisStreamSource

from xlib_pipeline import Pipeline, PipelineManager


def fill(r: redis.Redis, n: int) -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd("in", {"id": i, "amount": i})
    pipe.execute()


def outputs(r: redis.Redis) -> list[int]:
    return [int(f["id"]) for _, f in r.xrange("out")]


def scoring() -> Pipeline:
    p = Pipeline("redis_scoring")
    p.add_task("ids", lambda batch: [{"id": int(x["id"])} for x in batch])
    return p


def test_a_restart_reads_its_pending_entries_in_one_round_trip_per_batch(
    r: redis.Redis, redis_url: str, trips: list[int]
) -> None:
    """The pending entries of a restart are read in full batches, one XREADGROUP each: the
    next pending read starts after the last one, not at 0 through the batches still in
    flight (the stream reads up to 8 batches ahead of their commits)."""
    fill(r, 40)
    r.xgroup_create("in", "g", id="0")
    r.xreadgroup("g", "c", {"in": ">"}, count=30)  # delivered, never acknowledged: a crash
    src = RedisStreamSource.from_url(f"{redis_url}/in?group=g&consumer=c", {})
    try:
        batches = []
        for _ in range(3):  # none committed yet: all three in flight
            trips[0] = 0
            batch = src.read(10, 0.1)
            assert batch is not None
            batches.append(batch)
            assert trips[0] == 1  # was 1, 2, 3: each read re-read the batches before it
        assert [[int(x["id"]) for x in b.records] for b in batches] == [
            list(range(0, 10)),
            list(range(10, 20)),
            list(range(20, 30)),
        ]
        trips[0] = 0
        new = src.read(10, 0.1)  # pending exhausted: nothing to claim, then new entries
        assert new is not None and [int(x["id"]) for x in new.records] == list(range(30, 40))
        assert trips[0] == 3  # XREADGROUP (none pending left), XAUTOCLAIM, XREADGROUP >; was 6
        for b in [*batches, new]:
            src.committed(b.end)
        assert r.xpending("in", "g")["pending"] == 0
    finally:
        src.close()


def test_pending_entries_after_a_claim_are_still_read_once(r: redis.Redis, redis_url: str) -> None:
    """A dead consumer's entries claimed between our own pending reads are delivered once:
    the pending read skips them (delivered as they were claimed), before and after its
    cursor, and delivers none of ours twice."""
    fill(r, 40)
    r.xgroup_create("in", "g", id="0")
    r.xreadgroup("g", "dead", {"in": ">"}, count=5)  # ids 0-4: claimed below our cursor
    r.xreadgroup("g", "c", {"in": ">"}, count=10)  # ids 5-14: ours, left by a restart
    r.xreadgroup("g", "dead", {"in": ">"}, count=5)  # ids 15-19: claimed above it
    src = RedisStreamSource.from_url(f"{redis_url}/in?group=g&consumer=c&claim_idle_ms=0", {})
    seen: list[int] = []
    try:
        prev = None
        for _ in range(20):  # each batch committed after the next is read, as a stream does
            batch = src.read(4, 0.1)
            assert batch is not None
            seen += [int(x["id"]) for x in batch.records]
            if prev is not None:
                src.committed(prev.end)
            prev = batch
            if len(seen) >= 40:
                break
        assert prev is not None
        src.committed(prev.end)
        assert sorted(seen) == list(range(40))  # each once
        assert seen[:10] == list(range(5, 15))  # our own first, in batches of 4, 4, 2
        assert r.xpending("in", "g")["pending"] == 0
    finally:
        src.close()


def test_lag_with_other_live_consumers_is_one_round_trip(
    r: redis.Redis, redis_url: str, trips: list[int]
) -> None:
    """Another live consumer's entries in flight: the group's pending count exceeds ours,
    and lag() needs the consumers' pending counts too; both come in one round-trip."""
    fill(r, 30)
    a = RedisStreamSource.from_url(f"{redis_url}/in?group=g&consumer=a", {})
    b = RedisStreamSource.from_url(f"{redis_url}/in?group=g&consumer=b", {})
    try:
        first = a.read(5, 0.1)
        other = b.read(5, 0.1)
        assert first is not None and other is not None
        trips[0] = 0
        assert a.lag() == 20  # b's 5 are being processed, a's 5 in flight
        assert trips[0] == 1  # was 2: XINFO GROUPS, then XINFO CONSUMERS
        a.committed(first.end)
        b.committed(other.end)
        trips[0] = 0
        assert a.lag() == 20
        assert trips[0] == 1
    finally:
        a.close()
        b.close()


def test_a_catch_up_checkpoint_records_the_lag(
    r: redis.Redis, redis_url: str, tmp_path: Path, forget_batches_after: Any
) -> None:
    """A crash after the last batch's EXEC, before the store's commit: the restart adopts
    the sink's checkpoint and has nothing more to read. The stream's lag (runs show, the
    monitor) is then 0, not unknown until a next batch."""
    fill(r, 30)
    store = tmp_path / "runs.sqlite"
    args = {"source": f"{redis_url}/in?group=g&consumer=c", "sink": f"{redis_url}/out"}
    with PipelineManager({"store": {"path": str(store)}}) as pm:
        pm.stream(scoring(), batch_size=10, max_batches=3, **args)
    forget_batches_after(store, 2)
    with PipelineManager({"store": {"path": str(store)}}) as pm:
        s = pm.stream(scoring(), batch_size=10, idle_timeout=0.3, **args)
    assert s.error is None and s.batches == 3 and outputs(r) == list(range(30))
    with sqlite3.connect(store) as c:
        assert c.execute("SELECT lag FROM streams").fetchone()[0] == 0
    assert s.lag == 0


def test_a_windowed_stream_acknowledges_each_entry_once(
    r: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """Event-time windows: a Redis source never ends (read() never returns None), so the
    stream runs no empty batch to close the open windows at its end, and no batch
    acknowledges the entries of the one before again: one XACK per batch, in its EXEC."""
    for i in range(35):
        r.xadd("in", {"id": i, "ts": i})
    p = Pipeline("windows")
    p.add_task("parse", lambda batch: [{"ts": float(x["ts"])} for x in batch])
    p.add_task(
        "agg",
        lambda w: {"start": w.start, "n": len(list(w))},
        depends_on=["parse"],
        window={"size": 10, "slide": 10, "field": "ts"},
    )
    r.config_resetstat()
    with PipelineManager({"store": {"path": str(tmp_path / "runs.sqlite")}}) as pm:
        s = pm.stream(
            p,
            source=f"{redis_url}/in?group=g&consumer=c",
            sink=f"{redis_url}/out",
            batch_size=10,
            batch_timeout=0.1,
            idle_timeout=0.3,
        )
    assert s.error is None and (s.batches, s.records, s.outputs) == (4, 35, 3)
    calls = {k: v["calls"] for k, v in r.info("commandstats").items()}
    assert calls["cmdstat_xack"] == calls["cmdstat_exec"] == 4
    assert r.xpending("in", "g")["pending"] == 0
