"""A stream batch's run rows are held apart from the store's queue until its checkpoint
commits them (src/xlib_pipeline/_held.py): no other commit takes them along, and a batch
that is never checkpointed is still recorded."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from xlib_pipeline import Pipeline, PipelineManager


def test_a_plain_run_flushed_during_a_batch_does_not_commit_the_batchs_first_rows(
    tmp_path: Path,
) -> None:
    """A plain run executed beside a stream on the same manager flushes the store while a
    batch is between its run rows and its checkpoint: the old queue committed the batch's
    lease, runs row and first events with it, before the checkpoint (guarantee (b))."""
    plain = Pipeline("plain")
    plain.add_task("one", lambda: 1)
    p = Pipeline("held")
    side: list[Any] = []

    @p.task("work")
    def work(batch: list[Any]) -> list[Any]:
        # Another thread's plain run, while this batch's rows are queued (not committed).
        t = threading.Thread(target=lambda: side.append(pm.execute_pipeline(plain)))
        t.start()
        t.join()
        return batch

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i}) + "\n" for i in range(6)))
    with PipelineManager({"store": {"path": str(tmp_path / "r.sqlite")}}) as pm:
        store = pm.store
        assert store is not None
        seen: list[list[tuple[str, tuple[Any, ...]]]] = []
        store.write_hook = lambda batch: seen.append(list(batch))
        s = pm.stream(p, source=f"jsonl:{src}", sink=f"jsonl:{tmp_path / 'o.jsonl'}",
                      batch_size=3, from_start=True)  # fmt: skip
        store.write_hook = None
        assert s.status == "completed" and s.batches == 2, s.error
        assert len(side) == 2 and all(r.success for r in side)
        runs = store.list_runs(pipeline=s.batch_pipeline.name)
        assert len(runs) == 2 and {r.status for r in runs} == {"succeeded"}
        assert {r.status for r in store.list_runs(pipeline="plain")} == {"succeeded"}
    batch_ids = {r.run_id for r in runs}
    for w in seen:
        mine = [
            (sql, params)
            for sql, params in w
            if str(sql) != "CALL" and any(p in batch_ids for p in params if isinstance(p, str))
        ]
        if mine:  # a batch's rows are only ever written with a checkpoint
            assert any("INTO stream_batches" in str(sql) for sql, _ in w), w


def test_a_failed_batch_is_recorded_though_never_checkpointed(tmp_path: Path) -> None:
    """The failed batch's run is held (no checkpoint will take it): it is released to the
    queue and committed as a failed run, as before."""
    p = Pipeline("breaks")

    @p.task("work")
    def work(batch: list[Any]) -> list[Any]:
        if any(r["id"] == 4 for r in batch):
            raise ValueError("bad record")
        return batch

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i}) + "\n" for i in range(6)))
    with PipelineManager({"store": {"path": str(tmp_path / "r.sqlite")}}) as pm:
        s = pm.stream(p, source=f"jsonl:{src}", sink=None, batch_size=3, from_start=True)
        assert s.status == "failed" and s.batches == 1
        store = pm.store
        assert store is not None
        store.flush()  # the failed run's rows are queued, not held
        assert not getattr(store, "_held", {})
        runs = store.list_runs(pipeline=s.batch_pipeline.name)
        assert sorted(r.status for r in runs) == ["failed", "succeeded"]
        failed = next(r for r in runs if r.status == "failed")
        assert store.get_tasks(failed.run_id)["work"].status == "failed"


def test_a_quarantined_batchs_runs_commit_with_its_checkpoint(tmp_path: Path) -> None:
    """With a dead-letter sink, a failed batch runs again record by record: every one of
    its runs is committed in its checkpoint's transaction."""
    p = Pipeline("quarantine")

    @p.task("work")
    def work(batch: list[Any]) -> list[Any]:
        if any(r["id"] == 1 for r in batch):
            raise ValueError("bad record")
        return batch

    dead: list[Any] = []
    out: list[Any] = []
    seen: list[list[tuple[str, tuple[Any, ...]]]] = []
    with PipelineManager({"store": {"path": str(tmp_path / "r.sqlite")}}) as pm:
        store = pm.store
        assert store is not None
        store.write_hook = lambda batch: seen.append(list(batch))
        s = pm.stream(p, source=[{"id": i} for i in range(3)], sink=out.extend,
                      dead_letter=dead.extend, batch_size=3)  # fmt: skip
        store.write_hook = None
        assert s.status == "completed", s.error
        assert [d["record"]["id"] for d in dead] == [1] and len(out) == 2
        runs = store.list_runs(pipeline=s.batch_pipeline.name)
        assert len(runs) == 4  # the batch's, then one per record
        assert not getattr(store, "_held", {})
    ids = {r.run_id for r in runs}
    (w,) = [w for w in seen if any("INTO stream_batches" in str(sql) for sql, _ in w)]
    inserted = {
        params[0] for sql, params in w if str(sql).startswith("INSERT OR REPLACE INTO runs")
    }
    assert inserted == ids


def _checkpoint_writes(seen: list[list[tuple[str, tuple[Any, ...]]]]) -> list[int]:
    """How many batch checkpoints each write that holds one commits."""
    counts = [sum("INTO stream_batches" in str(sql) for sql, _ in w) for w in seen]
    return [c for c in counts if c]


def test_ready_full_batches_commit_several_per_transaction(tmp_path: Path) -> None:
    """While the source returns full batches at once, a pipelined stream asks for the
    commit of GROUP batches together: one transaction each (the writer committed them one
    or two at a time, as each was queued), with the same rows."""
    from xlib_pipeline.streams._pipelined import GROUP

    p = Pipeline("grouped")
    p.add_task("work", lambda batch: [dict(r, seen=True) for r in batch])
    seen: list[list[tuple[str, tuple[Any, ...]]]] = []
    out = tmp_path / "o.jsonl"
    with PipelineManager({"store": {"path": str(tmp_path / "r.sqlite")}}) as pm:
        store = pm.store
        assert store is not None
        store.write_hook = lambda batch: seen.append(list(batch))
        s = pm.stream(p, source=[{"id": i} for i in range(400)], sink=f"jsonl:{out}",
                      batch_size=10)  # fmt: skip
        store.write_hook = None
        assert s.status == "completed" and s.batches == 40 and s.records == 400, s.error
        runs = store.list_runs(pipeline=s.batch_pipeline.name, limit=100)
        assert len(runs) == 40 and {r.status for r in runs} == {"succeeded"}
        ckpt = store.open_checkpoints()
        assert [b.seq for b in ckpt.batches(s.name, limit=100)] == list(range(40, 0, -1))
        ckpt.close()
    counts = _checkpoint_writes(seen)
    assert sum(counts) == 40
    assert len(counts) <= 40 // GROUP + 1, counts
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in lines] == list(range(400)) and all(r["seen"] for r in lines)


def test_queued_batches_are_committed_once_the_source_has_nothing_ready(
    tmp_path: Path,
) -> None:
    """A batch whose commit was not asked for yet (its source returned full batches) is
    committed after at most one read that came back without a full batch: not held
    while the source waits for records."""
    from xlib_pipeline.streams._protocol import BaseSource, SourceBatch

    committed_during: list[int] = []

    class Trickle(BaseSource):
        url = "trickle"

        def __init__(self) -> None:
            self.pos = 0
            self.empty = 0

        def seek(self, offset: Any) -> None:
            self.pos = int(offset or 0)

        def read(self, max_records: int, timeout: float) -> SourceBatch | None:
            if self.pos < 20:  # two full batches, ready at once
                start, self.pos = self.pos, self.pos + max_records
                return SourceBatch(records=list(range(start, self.pos)), start=start,
                                   end=self.pos)  # fmt: skip
            self.empty += 1
            if self.empty == 3:  # two empty reads later: what is committed by now
                with sqlite3.connect(tmp_path / "r.sqlite") as c:
                    (n,) = c.execute("SELECT count(*) FROM stream_batches").fetchone()
                committed_during.append(n)
                return None
            time.sleep(0.05)  # waiting for records that do not come
            return SourceBatch(records=[], start=self.pos, end=self.pos)

    p = Pipeline("trickle")
    p.add_task("work", lambda batch: batch)
    with PipelineManager({"store": {"path": str(tmp_path / "r.sqlite")}}) as pm:
        s = pm.stream(p, source=Trickle(), sink=None, batch_size=10, batch_timeout=0.05)
        assert s.status == "completed" and s.batches == 2, s.error
    assert committed_during == [2]
