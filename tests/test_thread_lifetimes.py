"""No thread of ours outlives the object that owns it: the run store's lease heartbeat
(``xlib-lease``) is joined by the store's close, and a manager with the store on, after a run
and a stream, leaves no ``xlib-`` thread alive once closed. The heartbeat of a live run still
beats every HEARTBEAT_S.

No sleeps: the tests wait on the threads themselves (a bounded ``join``) or on events."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from xlib_pipeline import Pipeline, PipelineManager, _lease
from xlib_pipeline.store import RunStore
from xlib_pipeline.testing import THREAD_JOIN_S, assert_threads_end, our_threads


def _beats_seen(store: RunStore, count: int) -> tuple[threading.Event, list[tuple[Any, ...]]]:
    """An event set once ``count`` heartbeat statements were written, and their params."""
    done = threading.Event()
    params: list[tuple[Any, ...]] = []

    def hook(batch: list[Any]) -> None:
        params.extend(p for sql, p in batch if str(sql).startswith("UPDATE leases SET heartbeat"))
        if len(params) >= count:
            done.set()

    store.write_hook = hook
    return done, params


def test_closing_the_manager_joins_the_lease_heartbeat(tmp_path: Path) -> None:
    """The report's reproduction: the heartbeat thread of a run outlived ``pm.close()`` (it
    slept HEARTBEAT_S and held the closed store); each manager added one."""
    before = set(threading.enumerate())
    p = Pipeline("t")
    p.add_task("a", lambda: 1)
    for k in range(2):
        pm = PipelineManager({"store": {"path": str(tmp_path / f"th{k}.sqlite")}})
        assert pm.execute_pipeline(p).success
        started = our_threads(set(threading.enumerate()) - before)
        assert "xlib-lease" in {t.name for t in started}  # lingers while the store is open
        pm.close()
        for t in started:
            if t.name == "xlib-lease":
                assert not t.is_alive(), "pm.close() returned with the lease heartbeat alive"
    assert_threads_end(our_threads(set(threading.enumerate()) - before), "both managers closed")


def test_a_long_runs_lease_is_still_refreshed_every_heartbeat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/run-store.md, leases: a running run's heartbeat is refreshed every HEARTBEAT_S
    (here 0.02 s); the task waits for two beats of its own run, then ends."""
    monkeypatch.setattr(_lease, "HEARTBEAT_S", 0.02)
    with PipelineManager({"store": {"path": str(tmp_path / "r.sqlite")}}) as pm:
        store = pm.store
        assert isinstance(store, RunStore)
        two, params = _beats_seen(store, 2)
        seen: list[Any] = []

        def slow() -> int:
            assert two.wait(THREAD_JOIN_S), "no two heartbeats while the run ran"
            seen.append(store.lease(params[-1][1]))
            return 1

        p = Pipeline("slow")
        p.add_task("a", slow)
        result = pm.execute_pipeline(p)
        store.write_hook = None
    assert result.success
    assert all(beat[1:] == (result.run_id,) for beat in params[:2])
    (lease,) = seen
    assert lease is not None and lease.run_id == result.run_id
    assert lease.heartbeat > lease.acquired  # refreshed in place, same holder


def test_store_close_stops_a_beating_thread_and_nothing_beats_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store holding a lease (its heartbeat beating) is closed: close returns with the
    thread ended, so it never submits to the closed store; keep_alive on the closed store
    starts no thread."""
    monkeypatch.setattr(_lease, "HEARTBEAT_S", 0.02)
    store = RunStore(tmp_path / "r.sqlite")
    one, _ = _beats_seen(store, 1)
    before = set(threading.enumerate())
    store.keep_alive("held-run")
    (beat,) = our_threads(set(threading.enumerate()) - before)
    assert beat.name == "xlib-lease"
    assert one.wait(THREAD_JOIN_S), "the heartbeat never beat"
    store.close()  # the run still holds its lease: close must not wait for its let_go
    assert not beat.is_alive(), "RunStore.close() returned with the lease heartbeat alive"
    store.keep_alive("late-run")
    assert not our_threads(set(threading.enumerate()) - before)


def test_a_manager_with_the_store_leaves_no_thread_after_close(tmp_path: Path) -> None:
    """The guard: a manager with the store runs a pipeline and a short stream, then closes;
    every ``xlib-`` thread it started (seen alive before close or by its tasks) ends."""
    before = set(threading.enumerate())
    seen: set[threading.Thread] = set()

    def look(*args: Any) -> Any:
        seen.update(our_threads(threading.enumerate()))
        return args[0] if args else 1

    p = Pipeline("guard")
    p.add_task("a", look)
    p.add_task("b", look, depends_on=["a"])
    s = Pipeline("guard_stream")
    s.add_task("work", look)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i}) + "\n" for i in range(6)))
    pm = PipelineManager({"store": {"path": str(tmp_path / "r.sqlite")}, "max_workers": 2})
    try:
        assert pm.execute_pipeline(p).success
        stream = pm.stream(
            s,
            source=f"jsonl:{src}",
            sink=f"jsonl:{tmp_path / 'out.jsonl'}",
            batch_size=2,
            from_start=True,
        )
        assert stream.status == "completed" and stream.batches == 3
        seen |= our_threads(set(threading.enumerate()) - before)
    finally:
        pm.close()
    assert "xlib-lease" in {t.name for t in seen}
    assert_threads_end(
        (seen - before) | our_threads(set(threading.enumerate()) - before), "pm.close()"
    )
