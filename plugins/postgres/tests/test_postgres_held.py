"""A stream batch's run rows are held apart from the PostgreSQL store's writer queue until
its checkpoint commits them (xlib_pipeline_postgres._held), as on the embedded store
(tests/test_held_batches.py): no other commit takes them along, and a batch that is never
checkpointed is still recorded."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from xlib_pipeline import Pipeline, PipelineManager

Writes = list[list[tuple[str, tuple[Any, ...]]]]


def _mine(w: list[tuple[str, tuple[Any, ...]]], ids: set[str]) -> bool:
    """Whether write ``w`` holds a row of one of the runs ``ids``."""
    return any(
        str(sql) != "CALL" and any(p in ids for p in params if isinstance(p, str))
        for sql, params in w
    )


def test_a_plain_run_flushed_during_a_batch_does_not_commit_the_batchs_first_rows(
    tmp_path: Path, postgres_url: str
) -> None:
    """A plain run executed beside a stream on the same manager flushes the store while a
    batch is between its run rows and its checkpoint: the writer's queue committed the
    batch's lease, runs row and first events with it, before the checkpoint (guarantee
    (b)); now no write holds a batch's rows without its checkpoint."""
    plain = Pipeline("plain")
    plain.add_task("one", lambda: 1)
    p = Pipeline("held")
    side: list[Any] = []

    @p.task("work")
    def work(batch: list[Any]) -> list[Any]:
        # Another thread's plain run, while this batch's rows are recorded (not committed).
        t = threading.Thread(target=lambda: side.append(pm.execute_pipeline(plain)))
        t.start()
        t.join()
        return [dict(r, seen=True) for r in batch]

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i}) + "\n" for i in range(6)))
    seen: Writes = []
    with PipelineManager({"store": {"url": postgres_url}}) as pm:
        store = pm.store
        assert store is not None
        store.write_hook = lambda batch: seen.append(list(batch))
        s = pm.stream(p, source=f"jsonl:{src}", sink=f"jsonl:{tmp_path / 'o.jsonl'}",
                      batch_size=3, from_start=True)  # fmt: skip
        store.write_hook = None
        assert s.status == "completed" and s.batches == 2, s.error
        assert len(side) == 2 and all(r.success for r in side)
        runs = store.list_runs(pipeline=s.batch_pipeline.name)
        assert len(runs) == 2 and {r.status for r in runs} == {"succeeded"}
        assert {r.status for r in store.list_runs(pipeline="plain")} == {"succeeded"}
        assert not getattr(store, "_held", {})
    batch_ids = {r.run_id for r in runs}
    mine = [w for w in seen if _mine(w, batch_ids)]
    assert mine
    for w in mine:  # a batch's rows are only ever written with a checkpoint
        assert any("INTO stream_batches" in str(sql) for sql, _ in w), w


def test_a_failed_batch_is_recorded_though_never_checkpointed(
    tmp_path: Path, postgres_url: str
) -> None:
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
    with PipelineManager({"store": {"url": postgres_url}}) as pm:
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


def test_a_quarantined_batchs_runs_commit_with_its_checkpoint(postgres_url: str) -> None:
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
    seen: Writes = []
    with PipelineManager({"store": {"url": postgres_url}}) as pm:
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
    inserted = {params[0] for sql, params in w if str(sql).startswith("INSERT INTO runs")}
    assert inserted == ids
    assert [x for x in seen if x is not w and _mine(x, ids)] == []
