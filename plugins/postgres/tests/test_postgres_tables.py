"""The result cache and stream checkpoints in PostgreSQL: shared by drivers in other
processes, a clear error when a table is missing, a dropped connection mid-batch loses
nothing committed, and crash recovery of a stream killed at random points.

The backend-neutral behaviour (hits, TTL, tenants, encryption, exactly-once restarts,
windows) runs on both stores in tests/test_caching.py and tests/test_stream*.py."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from xlib_pipeline_postgres._schema import SCHEMA_VERSION

from xlib_pipeline import Pipeline, PipelineManager, Status, StoreError
from xlib_pipeline.store import CacheTable, CheckpointTable
from xlib_pipeline.streams import JsonLinesSink, JsonLinesSource, StreamError

CACHED_PIPELINE = textwrap.dedent(
    """
    import os, sys
    from xlib_pipeline import Pipeline, PipelineManager

    p = Pipeline("shared_cache")

    @p.task("load")
    def load():
        return list(range(100))

    @p.task("expensive", depends_on=["load"], cache=True)
    def expensive(rows):
        with open(os.environ["CALLS_FILE"], "a") as f:
            f.write(f"{os.getpid()}\\n")
        return sum(r * r for r in rows)

    with PipelineManager({"store": {"url": sys.argv[1]}}) as pm:
        r = pm.execute_pipeline(p, tenant_id=sys.argv[2])
    print(r.tasks["expensive"].status.value, r.final_result, os.getpid())
    """
)


def test_a_cache_hit_written_by_one_driver_is_served_to_another(
    postgres_url: str, tmp_path: Path
) -> None:
    """Two driver processes on one database (as on two hosts): the second is served the
    first's entry without running the task; another tenant is not."""
    script = tmp_path / "driver.py"
    script.write_text(CACHED_PIPELINE)
    calls = tmp_path / "calls.txt"
    env = {**os.environ, "CALLS_FILE": str(calls)}

    def driver(tenant: str) -> list[str]:
        proc = subprocess.run(
            [sys.executable, str(script), postgres_url, tenant],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split()

    first, second, other = driver("acme"), driver("acme"), driver("globex")
    assert first[:2] == ["succeeded", "328350"]
    assert second[:2] == ["cached", "328350"] and second[2] != first[2]
    assert other[0] == "succeeded"  # a tenant's entry never serves another tenant
    assert calls.read_text().split() == [first[2], other[2]]
    with PipelineManager({"store": {"url": postgres_url}}) as pm:
        table = pm.store.open_cache()  # type: ignore[union-attr]
        assert isinstance(table, CacheTable)
        assert sorted(e.tenant or "" for e in table.list()) == ["acme", "globex"]
        table.close()


def test_a_dropped_cache_table_is_named_with_its_migration(postgres_url: str) -> None:
    p = Pipeline("c")
    p.add_task("a", lambda: 1, cache=True)
    with PipelineManager({"store": {"url": postgres_url}}) as pm:
        assert pm.execute_pipeline(p).success
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP TABLE cache_entries")
    with PipelineManager({"store": {"url": postgres_url}}) as pm:
        with pytest.raises(StoreError) as info:
            pm.execute_pipeline(p)
        text = str(info.value)
        assert "'cache_entries'" in text and "migration 3" in text and postgres_url in text
        assert f"schema version {SCHEMA_VERSION}" in text  # what the database claims
        # nothing else was touched: a pipeline without cache=True still runs and records
        q = Pipeline("plain")
        q.add_task("a", lambda: 2)
        assert pm.execute_pipeline(q).success


def test_a_dropped_checkpoint_table_is_named_before_anything_is_read(
    postgres_url: str, tmp_path: Path
) -> None:
    with PipelineManager({"store": {"url": postgres_url}}) as pm:
        pm.store  # noqa: B018 - migrates
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP TABLE stream_batches")
    p = Pipeline("s")
    p.add_task("parse", lambda batch: batch)
    src = tmp_path / "in.jsonl"
    src.write_text('{"a": 1}\n')
    missing = r"no table 'stream_batches' \(stream checkpoints\)"
    with (
        PipelineManager({"store": {"url": postgres_url}}) as pm,
        pytest.raises(StoreError, match=missing),
    ):
        pm.stream(p, source=JsonLinesSource(src), sink=JsonLinesSink(tmp_path / "o.jsonl"))
    assert not (tmp_path / "o.jsonl").exists()


def rows_of(n: int) -> list[dict[str, Any]]:
    return [{"id": i, "amount": i % 17} for i in range(n)]


def doubling() -> Pipeline:
    p = Pipeline("doubling")

    @p.task("parse")
    def parse(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**r, "twice": r["amount"] * 2} for r in batch]

    return p


def test_a_connection_dropped_mid_batch_loses_nothing_committed(
    postgres_url: str, tmp_path: Path
) -> None:
    """The server drops every connection of the driver while batch 3 is being committed:
    the stream stops with an error naming the store and the first batch of the failed
    transaction; the batches before it stay committed, and a restart ends with every result
    exactly once."""
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    rows = rows_of(100)
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dropped: list[int] = []

    def drop_connections(batch: list[Any]) -> None:
        if dropped or not any("INTO stream_batches" in str(sql) and params[1] == 3
                              for sql, params in batch):  # fmt: skip
            return
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            cur = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                "current_database() AND pid <> pg_backend_pid()"
            )
            dropped.append(len(cur.fetchall()))

    with PipelineManager({"store": {"url": postgres_url}}) as pm:
        store: Any = pm.store
        ckpt = store.open_checkpoints()
        assert isinstance(ckpt, CheckpointTable)
        store.write_hook = drop_connections
        s = pm.stream(doubling(), source=JsonLinesSource(src), sink=JsonLinesSink(out),
                      batch_size=10)  # fmt: skip
        store.write_hook = None
        assert dropped and dropped[0] >= 1
        assert s.status == "failed" and isinstance(s.error, StreamError)
        text = str(s.error)
        # Pipelined commits: batches queued while one commits share its transaction, so the
        # one that failed holds batch 3 and maybe batches before it: the first is named.
        k = s.batches + 1
        assert 1 <= k <= 3 and f"batch {k} " in text and postgres_url in text
        assert f"Batches up to {k - 1} are committed" in text
        assert f"restart retries batch {k} " in text
        rec = ckpt.load("doubling")
        assert rec is not None and rec.seq >= 2  # 1-2 committed (3 too if the retry made it)
        committed = {b.seq for b in ckpt.batches("doubling")}
        assert committed == set(range(1, rec.seq + 1))
        for b in ckpt.batches("doubling"):  # a checkpoint never without its run's rows
            assert b.run_id and store.get_run(b.run_id).status == "succeeded"
        ckpt.close()
    with PipelineManager({"store": {"url": postgres_url}}) as pm:
        again = pm.stream(doubling(), source=JsonLinesSource(src), sink=JsonLinesSink(out),
                          batch_size=10)  # fmt: skip
    assert again.status == "completed", again.error
    assert again.records == 100 and again.batches == 10
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert got == [{**r, "twice": r["amount"] * 2} for r in rows]


KILLABLE = textwrap.dedent(
    """
    from xlib_pipeline import Pipeline

    pipeline = Pipeline("killable")

    @pipeline.task("parse")
    def parse(batch):
        return [r for r in batch if r["id"] % 7 != 3]

    @pipeline.task("score", depends_on=["parse"])
    def score(rows):
        return [{"id": r["id"], "score": (r["id"] * 31) % 1000} for r in rows]
    """
)
RECORDS = 40_000


@pytest.mark.slow
def test_sigkill_at_seeded_points_leaves_every_result_once(
    postgres_url: str, tmp_path: Path
) -> None:
    """Exactly-once on PostgreSQL: SIGKILL ``xlib-pipeline stream`` at seeded instants,
    restart it each time; the sink ends with every result once, in order, and the
    checkpoint never went backwards."""
    (tmp_path / "pipe.py").write_text(KILLABLE)
    with open(tmp_path / "in.jsonl", "w") as f:
        for i in range(RECORDS):
            f.write(json.dumps({"id": i, "pad": "x" * (i % 13)}) + "\n")
    command = [
        sys.executable, "-m", "xlib_pipeline.cli", "stream", "pipe.py",
        "--source", "jsonl:in.jsonl", "--sink", "jsonl:out.jsonl",
        "--store", postgres_url, "--batch-size", "250", "--no-monitor",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    rng = random.Random(1717)
    kills = 0
    progress: list[int] = []
    for _ in range(8):
        proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            out = tmp_path / "out.jsonl"
            if out.exists() and out.stat().st_size:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.5))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        progress.append(committed_records(postgres_url))
    assert kills >= 4, "the stream finished before most kills: nothing was tested"
    final = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=600)  # fmt: skip
    assert final.returncode == 0, final.stderr
    got = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert got == [{"id": i, "score": (i * 31) % 1000} for i in range(RECORDS) if i % 7 != 3]
    assert committed_records(postgres_url) == RECORDS
    assert progress == sorted(progress), "a checkpoint went backwards"
    with psycopg.connect(postgres_url) as conn:
        seq, n = conn.execute(
            "SELECT s.seq, (SELECT count(*) FROM stream_batches b WHERE b.stream = s.name) "
            "FROM streams s"
        ).fetchone()  # type: ignore[misc]
        orphans = conn.execute(  # every checkpointed batch's run is recorded whole
            "SELECT count(*) FROM stream_batches b LEFT JOIN runs r ON r.run_id = b.run_id "
            "WHERE b.run_id IS NOT NULL AND (r.run_id IS NULL OR r.status <> 'succeeded')"
        ).fetchone()
    assert seq == RECORDS // 250 and n == seq and orphans == (0,)


def committed_records(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT records FROM streams").fetchone()
    return 0 if row is None else int(row[0])


def test_status_cached_is_recorded_in_postgres(postgres_url: str) -> None:
    p = Pipeline("st")
    p.add_task("a", lambda: 5, cache=True)
    with PipelineManager({"store": {"url": postgres_url}}) as pm:
        pm.execute_pipeline(p)
        r = pm.execute_pipeline(p)
        assert r.tasks["a"].status is Status.CACHED
        assert pm.store.get_tasks(r.run_id)["a"].status == "cached"  # type: ignore[union-attr]
