"""Pipelined checkpoint commits (streams/_pipelined.py) and what a batch's transaction holds."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from xlib_pipeline import Pipeline, PipelineManager, hookimpl
from xlib_pipeline._commit import CLAIM_NEW, LOG, RELEASE, _fresh
from xlib_pipeline._store import RunStore
from xlib_pipeline.streams import StreamError


def _pipeline() -> Pipeline:
    p = Pipeline("doubling")

    @p.task("double")
    def double(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"id": r["id"], "x": r["id"] * 2} for r in batch]

    return p


def _input(path: Path, n: int) -> None:
    path.write_text("".join(json.dumps({"id": i}) + "\n" for i in range(n)))


def _ids(path: Path) -> list[int]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def test_a_new_runs_lease_and_its_release_in_one_transaction_are_not_written(
    tmp_path: Path,
) -> None:
    assert _fresh([(CLAIM_NEW, ("a",)), (LOG, ()), ("UPDATE runs", ()), (RELEASE, ("a",))]) == {
        0,
        3,
    }
    # Another holder's release, or a lease that may have replaced a row: kept.
    acquired = "INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?, ?, ?, ?)"
    assert _fresh([(CLAIM_NEW, ("a",)), (RELEASE, ("b",))]) is None
    assert _fresh([(acquired, ("a",)), (RELEASE, ("a",))]) is None
    assert _fresh([(RELEASE, ("a",)), (CLAIM_NEW, ("a",))]) is None
    store = RunStore(tmp_path / "runs.sqlite")
    try:
        seen: list[str] = []
        store._committer.connection().set_trace_callback(seen.append)
        store.claim_new("r1")
        store.add("INSERT INTO blob_refs (run_id, task, name) VALUES (?, ?, ?)", ("r1", "t", "b"))
        store.release_leases("r1")
        store.flush()
        assert not [s for s in seen if "leases" in s], seen
        assert store.lease("r1") is None
        # Claimed in one commit, released in the next: both written (readers saw the row).
        store.claim_new("r2")
        store.flush()
        assert store.lease("r2") is not None
        store.release_leases("r2")
        store.flush()
        assert store.lease("r2") is None
        assert len([s for s in seen if "leases" in s]) == 2
    finally:
        store.close()


def test_a_failed_pipelined_commit_stops_the_stream_and_a_restart_is_exactly_once(
    tmp_path: Path,
) -> None:
    src, out, db = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "runs.sqlite"
    _input(src, 200)
    with PipelineManager({"store": {"path": str(db)}}) as pm:
        store = pm.store
        assert store is not None
        failed: list[bool] = []

        def hook(batch: list[Any]) -> None:  # the transaction holding batch 5 fails, once
            if not failed and any(
                "INTO stream_batches" in str(sql) and params[1] == 5 for sql, params in batch
            ):
                failed.append(True)
                raise sqlite3.OperationalError("disk I/O error (injected)")

        store.write_hook = hook
        s = pm.stream(_pipeline(), source=f"jsonl:{src}", sink=f"jsonl:{out}", batch_size=10)
        store.write_hook = None
        assert s.status == "failed" and isinstance(s.error, StreamError)
        msg = str(s.error)
        assert "could not be committed with its checkpoint" in msg and "injected" in msg
        k = s.batches + 1  # the batch named: every batch before it is confirmed
        assert f"batch {k} " in msg and f"Batches up to {k - 1} are committed" in msg
        assert f"a restart retries batch {k}" in msg
        assert 0 <= s.batches < 5
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with PipelineManager({"store": {"path": str(db)}}) as pm:
        s = pm.stream(_pipeline(), source=f"jsonl:{src}", sink=f"jsonl:{out}", batch_size=10)
        assert s.status == "completed" and s.error is None
        assert s.records == 200 and s.batches == 20
    assert _ids(out) == list(range(200))


def test_on_batch_of_the_callers_sees_each_batch_before_the_next_is_written(
    tmp_path: Path,
) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _input(src, 100)
    seen: list[tuple[int, int]] = []
    with PipelineManager({"store": {"path": str(tmp_path / "runs.sqlite")}}) as pm:

        def on_batch(stream: Any) -> None:
            seen.append((stream.outputs, len(out.read_text().splitlines())))
            if stream.batches == 4:
                stream.stop()

        s = pm.stream(
            _pipeline(), source=f"jsonl:{src}", sink=f"jsonl:{out}", batch_size=10,
            on_batch=on_batch,
        )  # fmt: skip
    assert s.status == "stopped" and s.batches == 4
    assert seen == [(10, 10), (20, 20), (30, 30), (40, 40)]
    assert _ids(out) == list(range(40))


def test_pipelined_batches_commit_in_order_with_their_events(tmp_path: Path) -> None:
    """No on_batch: batches are written ahead of their commits, yet every batch is
    confirmed in order (the ``batch`` events, the counters) and the store has them all."""
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _input(src, 500)
    events: list[int] = []

    class Spy:
        @hookimpl
        def stream_event(self, stream: Any, event: str, info: Any) -> None:
            if event == "batch":
                events.append(info["seq"])
                assert stream.batches == info["seq"]  # counted before it is reported

    config = {"store": {"path": str(tmp_path / "runs.sqlite")}}
    with PipelineManager(config, entry_points=False, plugins=[Spy()]) as pm:
        s = pm.stream(_pipeline(), source=f"jsonl:{src}", sink=f"jsonl:{out}", batch_size=5)
        assert s._depth > 1
        assert s.status == "completed" and s.batches == 100 and s.records == 500
        rows = pm.store.open_checkpoints().batches(s.name, limit=1000)  # type: ignore[union-attr]
        assert sorted(r.seq for r in rows) == list(range(1, 101))
    assert events == list(range(1, 101))
    assert _ids(out) == list(range(500))


def test_a_checkpoint_that_cannot_be_queued_fails_the_stream_without_waiting(
    tmp_path: Path,
) -> None:
    """An offset that is not JSON fails while the commit is being queued: nothing was
    queued, so nothing is waited for (the stream fails, it does not hang)."""
    from xlib_pipeline.streams import BaseSource, SourceBatch

    class Odd(BaseSource):
        url = "odd"

        def __init__(self) -> None:
            self.n = 0

        def seek(self, offset: Any) -> None:
            return None

        def read(self, max_records: int, timeout: float) -> SourceBatch | None:
            self.n += 1
            if self.n > 3:
                return None
            end: Any = self.n if self.n < 3 else object()  # batch 3: not JSON
            return SourceBatch(records=[{"id": self.n}], start=self.n - 1, end=end)

    with PipelineManager({"store": {"path": str(tmp_path / "runs.sqlite")}}) as pm:
        s = pm.stream(_pipeline(), source=Odd(), sink=f"jsonl:{tmp_path / 'out.jsonl'}", wait=False)
        assert s.wait(30), "the stream hung on a checkpoint that was never queued"
        assert s._depth > 1
        assert s.status == "failed" and isinstance(s.error, TypeError)
        assert s.batches == 2


def _commit_threads(tmp_path: Path, synchronous: str) -> set[str]:
    """The threads that wrote a stream's batch commits on a store with ``synchronous``."""
    import threading

    src, out = tmp_path / "in.jsonl", tmp_path / f"out-{synchronous}.jsonl"
    _input(src, 200)
    db = tmp_path / f"{synchronous}.sqlite"
    threads: set[str] = set()
    with PipelineManager({"store": {"path": str(db), "synchronous": synchronous}}) as pm:
        store = pm.store
        assert store is not None

        def hook(batch: list[Any]) -> None:
            if any("INTO stream_batches" in str(sql) for sql, _ in batch):
                threads.add(threading.current_thread().name)

        store.write_hook = hook
        s = pm.stream(_pipeline(), source=f"jsonl:{src}", sink=f"jsonl:{out}", batch_size=10)
        store.write_hook = None
        assert s.status == "completed" and s.records == 200, s.error
    assert _ids(out) == list(range(200))
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT COUNT(*) FROM stream_batches").fetchone()[0] == 20
    return threads


def test_a_stream_writes_its_own_commits_unless_each_commit_waits_for_the_disk(
    tmp_path: Path,
) -> None:
    """synchronous normal: a commit is CPU work, written on the stream's thread (no writer
    thread taking the GIL at each of its system calls); full: the writer thread's fsync
    overlaps the stream's next batch."""
    import threading

    assert _commit_threads(tmp_path, "normal") == {threading.current_thread().name}
    assert _commit_threads(tmp_path, "full") == {"xlib-store-writer"}


def test_a_streams_own_connection_leaves_wal_checkpoints_to_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream's start and end are committed on the checkpoint table's own connection:
    it must not copy the WAL back into the file itself (SQLite's auto-checkpoint once the
    WAL holds 1000 pages held a stream's end for 20-45 ms); the store's checkpointer does
    that, off the commit path."""
    from xlib_pipeline import _commit

    monkeypatch.setattr(_commit.Checkpointer, "WAL_CHECKPOINT_BYTES", 1 << 40)  # never here
    src, out, db = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "runs.sqlite"
    src.write_text("".join(json.dumps({"id": i, "pad": "x" * 4000}) + "\n" for i in range(1500)))
    with PipelineManager({"store": {"path": str(db)}}) as pm:
        pm.stream(
            _pipeline(), source=f"jsonl:{src}", sink=f"jsonl:{out}", batch_size=1, max_batches=1
        )
        before = db.read_bytes()
        wal = Path(str(db) + "-wal")
        p = Pipeline("padded")

        @p.task("keep")
        def keep(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return batch

        s = pm.stream(p, source=f"jsonl:{src}", sink=f"jsonl:{out}", batch_size=50, from_start=True)
        assert s.status == "completed" and s.records == 1500, s.error
        assert wal.stat().st_size > 1000 * 4096  # past SQLite's auto-checkpoint
        assert db.read_bytes() == before  # nothing copied back by the stream's own commits
    with sqlite3.connect(db) as c:
        assert (
            c.execute("SELECT COUNT(*) FROM stream_batches WHERE stream='padded'").fetchone()[0]
            == 30
        )


def test_ctrl_c_while_the_stream_writes_its_commit_stops_it_and_loses_nothing(
    tmp_path: Path,
) -> None:
    """Ctrl-C lands while the stream's own thread writes a commit (synchronous normal): the
    batch goes back to the queue, the store's writer commits it, the stream stops as on any
    Ctrl-C (no wait for a commit nobody makes), and a restart is exactly-once."""
    import threading

    src, out, db = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "runs.sqlite"
    _input(src, 200)
    with PipelineManager({"store": {"path": str(db)}}) as pm:
        store = pm.store
        assert store is not None
        fired: list[str] = []

        def hook(batch: list[Any]) -> None:  # the stream's own commit of batch 6, once
            if not fired and any(
                "INTO stream_batches" in str(sql) and params[1] >= 6 for sql, params in batch
            ):
                fired.append(threading.current_thread().name)
                raise KeyboardInterrupt

        store.write_hook = hook
        box: list[BaseException] = []

        def run() -> None:
            try:
                pm.stream(_pipeline(), source=f"jsonl:{src}", sink=f"jsonl:{out}", batch_size=10)
            except BaseException as exc:
                box.append(exc)

        t = threading.Thread(target=run)  # a Ctrl-C of the caller's thread, not pytest's
        t.start()
        t.join(60)
        assert not t.is_alive(), "the stream hung after Ctrl-C during its own commit"
        store.write_hook = None
        assert fired == [t.name]
        assert len(box) == 1 and isinstance(box[0], KeyboardInterrupt)
        status = store.open_checkpoints().load("doubling")
        assert status is not None and status.status == "stopped"
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with PipelineManager({"store": {"path": str(db)}}) as pm:
        s = pm.stream(_pipeline(), source=f"jsonl:{src}", sink=f"jsonl:{out}", batch_size=10)
        assert s.status == "completed" and s.error is None, s.error
    assert _ids(out) == list(range(200))
