"""A stream batch's run rows are held apart from the store's queue until its checkpoint
commits them (src/xlib_pipeline/_held.py, public as xlib_pipeline.store.HeldRuns): no other
commit takes them along, and a batch that is never checkpointed is still recorded (the
backends' shared scenarios, xlib_pipeline.testing.HeldBatchesConformance); a pipelined
stream's commits of several batches."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from xlib_pipeline import Pipeline, PipelineManager
from xlib_pipeline.testing import HeldBatchesConformance


class TestHeldBatchesSqlite(HeldBatchesConformance):
    """The shared held-batch scenarios (xlib_pipeline.testing) on the embedded store: a
    plain run flushed during a batch (fails when the store queues a batch's rows as they
    are recorded), a failed batch still recorded, a quarantined batch's runs in its
    checkpoint's write only."""

    def store_section(self, tmp_path: Path) -> dict[str, Any]:
        return {"path": str(tmp_path / "r.sqlite")}


def _checkpoint_writes(seen: list[list[tuple[str, tuple[Any, ...]]]]) -> list[int]:
    """How many batch checkpoints each write that holds one commits."""
    counts = [sum("INTO stream_batches" in str(sql) for sql, _ in w) for w in seen]
    return [c for c in counts if c]


@pytest.mark.parametrize("synchronous", ["normal", "full"])
def test_ready_full_batches_commit_several_per_transaction(
    tmp_path: Path, synchronous: str
) -> None:
    """While the source returns full batches at once, a pipelined stream asks for the
    commit of several batches together: one transaction each (the writer committed them one
    or two at a time, as each was queued), with the same rows. The whole depth (8) when the
    stream's thread writes the commit (synchronous normal), half of it when the writer
    thread does (full: the next group fills meanwhile; two may then go in one)."""
    from xlib_pipeline.streams._pipelined import DEPTH

    group = DEPTH if synchronous == "normal" else DEPTH // 2

    p = Pipeline("grouped")
    p.add_task("work", lambda batch: [dict(r, seen=True) for r in batch])
    seen: list[list[tuple[str, tuple[Any, ...]]]] = []
    out = tmp_path / "o.jsonl"
    cfg = {"store": {"path": str(tmp_path / "r.sqlite"), "synchronous": synchronous}}
    with PipelineManager(cfg) as pm:
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
    assert len(counts) <= 40 // group + 1, counts
    # The stream asks for `group` at a time; the writer thread (full) may find two groups
    # queued when it wakes and commit them together, but never more than the depth.
    assert group <= max(counts) <= DEPTH, counts
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
