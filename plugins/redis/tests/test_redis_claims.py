"""Taking over a dead consumer's entries (XAUTOCLAIM) and entries deleted while pending,
against a real server."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import redis
from xlib_pipeline_redis._connectors import RedisStreamSource

from xlib_pipeline import Pipeline, PipelineManager


def fill(r: redis.Redis, n: int) -> list[str]:
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd("in", {"id": i})
    return [str(x) for x in pipe.execute()]


def test_a_steady_stream_costs_one_round_trip_per_read(
    r: redis.Redis, redis_url: str, trips: list[int]
) -> None:
    """XAUTOCLAIM runs at the first read, then at most once per claim interval: a steady
    stream without a dead consumer pays one XREADGROUP per read (it was XAUTOCLAIM +
    XREADGROUP, 2 per read)."""
    fill(r, 50)
    src = RedisStreamSource.from_url(f"{redis_url}/in?group=g&consumer=c", {})
    assert src.claim_interval == 15.0  # claim_idle_ms 30000 / 2
    try:
        trips[0] = 0
        first = src.read(10, 0.1)  # own pending (none), XAUTOCLAIM, XREADGROUP >
        assert first is not None and len(first.records) == 10
        assert trips[0] == 3
        per_read = []
        for _ in range(4):
            trips[0] = 0
            batch = src.read(10, 0.1)
            assert batch is not None and len(batch.records) == 10
            per_read.append(trips[0])
        assert per_read == [1, 1, 1, 1]  # was [2, 2, 2, 2]
        calls = {k: v["calls"] for k, v in r.info("commandstats").items()}
        assert calls["cmdstat_xautoclaim"] == 1  # was 5
        src._next_claim = 0.0  # the claim interval has passed
        trips[0] = 0
        assert src.read(10, 0.1) is not None
        assert trips[0] == 2  # XAUTOCLAIM again, then XREADGROUP >
    finally:
        src.close()


def test_a_dead_consumers_entries_behind_many_young_ones_are_taken_over(
    r: redis.Redis, redis_url: str
) -> None:
    """XAUTOCLAIM inspects at most COUNT*10 pending entries per call: the dead consumer's
    idle entries behind 110 young entries of a live consumer (COUNT 10: 100 inspected) are
    reached by continuing from the cursor Redis returns; from 0-0 every time, never."""
    fill(r, 115)
    r.xgroup_create("in", "g", id="0")
    r.xreadgroup("g", "live", {"in": ">"}, count=110)  # young: being processed
    dead = r.xreadgroup("g", "dead", {"in": ">"}, count=5)[0][1]
    dead_ids = [e[0] for e in dead]
    r.xclaim("in", "g", "dead", 0, dead_ids, idle=600_000)  # idle for 10 minutes
    src = RedisStreamSource.from_url(f"{redis_url}/in?group=g&consumer=c&claim_idle_ms=60000", {})
    seen: list[int] = []
    try:
        for _ in range(4):
            batch = src.read(10, 0.05)
            assert batch is not None
            seen += [int(x["id"]) for x in batch.records]
            src.committed(batch.end)
        assert seen == list(range(110, 115))  # was []: never reached
        pending = r.xpending("in", "g")
        assert pending["pending"] == 110 and pending["consumers"] == [
            {"name": "live", "pending": 110}
        ]
    finally:
        src.close()


def scoring(seen: list[dict[str, str]]) -> Pipeline:
    p = Pipeline("redis_deleted")

    def ids(batch: list[dict[str, str]]) -> list[dict[str, int]]:
        seen.extend(batch)
        return [{"id": int(x["id"])} for x in batch]

    p.add_task("ids", ids)
    return p


def test_pending_entries_deleted_with_xdel_never_reach_the_tasks(
    r: redis.Redis, redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A pending entry deleted with XDEL comes back from a pending read as its id with no
    fields (and from XAUTOCLAIM as a deleted id, Redis 7): it is skipped, acknowledged and
    logged with its id; the tasks received it as ``{}``."""
    ids = fill(r, 30)
    r.xgroup_create("in", "g", id="0")
    r.xreadgroup("g", "c", {"in": ">"}, count=10)  # ours, left by a crash: 0-9
    r.xreadgroup("g", "dead", {"in": ">"}, count=10)  # a dead consumer's: 10-19
    gone = [ids[3], ids[4], ids[12]]
    r.xdel("in", *gone)
    seen: list[dict[str, str]] = []
    caplog.set_level(logging.WARNING, logger="xlib_pipeline.redis")
    with PipelineManager({"store": {"path": str(tmp_path / "runs.sqlite")}}) as pm:
        s = pm.stream(
            scoring(seen),
            source=f"{redis_url}/in?group=g&consumer=c&claim_idle_ms=0",
            sink=f"{redis_url}/out",
            batch_size=4,
            batch_timeout=0.1,
            idle_timeout=0.3,
        )
    assert s.error is None
    assert {} not in seen  # was: three {} records
    assert sorted(int(x["id"]) for x in seen) == sorted(set(range(30)) - {3, 4, 12})
    assert sorted(int(f["id"]) for _, f in r.xrange("out")) == sorted(set(range(30)) - {3, 4, 12})
    assert r.xpending("in", "g")["pending"] == 0
    logged = " ".join(rec.getMessage() for rec in caplog.records)
    assert all(i in logged for i in gone)


def test_a_deleted_entry_is_counted_by_the_source(r: redis.Redis, redis_url: str) -> None:
    ids = fill(r, 6)
    r.xgroup_create("in", "g", id="0")
    r.xreadgroup("g", "c", {"in": ">"}, count=3)
    r.xreadgroup("g", "dead", {"in": ">"}, count=3)
    r.xdel("in", ids[1], ids[4])
    src = RedisStreamSource.from_url(f"{redis_url}/in?group=g&consumer=c&claim_idle_ms=0", {})
    try:
        got: list[int] = []
        for _ in range(3):
            batch = src.read(10, 0.05)
            assert batch is not None
            got += [int(x["id"]) for x in batch.records]
            src.committed(batch.end)
        assert got == [0, 2, 3, 5]
        assert src.deleted == 2
        assert r.xpending("in", "g")["pending"] == 0
    finally:
        src.close()
