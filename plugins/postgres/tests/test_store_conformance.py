"""One conformance suite for every run store backend: the embedded SQLite file and a real
PostgreSQL server started for the session. Same records, same writer guarantees (commit
before successors, everything committed when execute_pipeline returns), same leases, resume
across restarts, faults, pruning with blobs, error texts through the encrypt hook."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xlib_pipeline import (
    PayloadRef,
    Pipeline,
    PipelineManager,
    StoreError,
    hookimpl,
)
from xlib_pipeline.loading import open_store
from xlib_pipeline.store import RunLeasedError


@pytest.fixture(params=["sqlite", "postgres"])
def store_section(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """The ``store`` config section of one backend (an empty store each test)."""
    blobs = {"url": str(tmp_path / "blobs"), "threshold": 4096}
    if request.param == "sqlite":
        return {"path": str(tmp_path / "runs.sqlite"), "blobs": blobs}
    url = request.getfixturevalue("postgres_url")
    return {"url": url, "blobs": blobs}


def manager(section: dict[str, Any], *plugins: object, **config: Any) -> PipelineManager:
    return PipelineManager({"store": section, **config}, plugins=list(plugins))


class Sealing:
    """A toy cipher: stored payloads and error texts must be what ``encrypt`` returned."""

    name = "sealing"

    @hookimpl
    def encrypt(self, data: bytes, ref: PayloadRef) -> bytes:
        return b"XLPENC" + bytes(b ^ 0x5A for b in data)

    @hookimpl
    def decrypt(self, data: bytes, ref: PayloadRef) -> bytes | None:
        if not data.startswith(b"XLPENC"):
            return None
        return bytes(b ^ 0x5A for b in data[6:])


def flaky(calls: list[str], fail: list[bool], big: bytes = b"") -> Pipeline:
    p = Pipeline("flaky", params=["day"])

    @p.task("load")
    def load() -> dict[str, Any]:
        calls.append("load")
        return {"rows": [1, 2, 3], "big": big}

    @p.task("transform", depends_on=["load"])
    def transform(data: dict[str, Any]) -> int:
        calls.append("transform")
        if fail[0]:
            raise ValueError("bad record <secret@example.net>")
        return sum(data["rows"])

    return p


def test_a_run_is_recorded_whole(store_section: dict[str, Any]) -> None:
    calls: list[str] = []
    with manager(store_section) as pm:
        result = pm.execute_pipeline(flaky(calls, [False]), params={"day": "mon"})
        store = pm.store
        assert store is not None
        rec = store.get_run(result.run_id[:12])  # a prefix is enough
        tasks = store.get_tasks(result.run_id)
        events = store.get_events(result.run_id)
        listed = store.list_runs(pipeline="flaky")
    assert rec.status == "succeeded" and rec.params == {"day": "mon"}
    assert rec.structure["transform"]["deps"] == ["load"]
    assert {t: r.status for t, r in tasks.items()} == {
        "load": "succeeded",
        "transform": "succeeded",
    }
    assert tasks["load"].output is not None and tasks["load"].attempts == 1
    assert [e[2] for e in events] == [
        "running",
        "succeeded",
        "running",
        "succeeded",
        "run.succeeded",
    ]
    assert [r.run_id for r in listed] == [result.run_id]


def test_resume_across_a_restart_reruns_only_what_did_not_finish(
    store_section: dict[str, Any],
) -> None:
    calls: list[str] = []
    fail = [True]
    big = os.urandom(10_000)  # past the threshold: load's output is a blob
    with manager(store_section, Sealing()) as pm:
        first = pm.execute_pipeline(flaky(calls, fail, big))
    assert first.status == "failed"
    fail[0] = False
    with manager(store_section, Sealing()) as pm:  # a new process's manager: a restart
        second = pm.execute_pipeline(flaky(calls, fail, big), resume=first.run_id)
        store = pm.store
        assert store is not None
        failed = store.get_tasks(first.run_id)["transform"]
        names = store.blob_names()
    assert second.success and second.final_result == 6
    assert calls == ["load", "transform", "transform"]
    assert len(names) == 1
    # The failed attempt's message went through encrypt: only the class is in clear.
    assert isinstance(failed.error, bytes) and b"secret" not in failed.error
    assert failed.error_type == "ValueError"


def test_every_upstream_is_committed_before_a_successor_starts(
    store_section: dict[str, Any],
) -> None:
    seen: list[str] = []
    p = Pipeline("barrier")
    p.add_task("a", lambda: 1)
    holder: dict[str, Any] = {}

    def b(a: int) -> int:
        reader = open_store(store_section.get("url") or store_section["path"])
        try:
            run_id = reader.list_runs(limit=1)[0].run_id
            seen.append(reader.get_tasks(run_id)["a"].status)
        finally:
            reader.close()
        return a + 1

    p.add_task("b", b, depends_on=["a"])
    with manager(store_section) as pm:
        result = pm.execute_pipeline(p)
        holder["tasks"] = pm.store.get_tasks(result.run_id)  # type: ignore[union-attr]
    assert seen == ["succeeded"]
    assert holder["tasks"]["b"].status == "succeeded"  # committed when execute_pipeline returned


def test_a_running_run_is_leased(store_section: dict[str, Any]) -> None:
    gate = threading.Event()
    started = threading.Event()
    fail = [True]
    p = Pipeline("lease")
    p.add_task("a", lambda: 1)

    def slow(a: int) -> int:
        started.set()
        gate.wait(30)
        if fail[0]:
            raise RuntimeError("stop")
        return a

    p.add_task("b", slow, depends_on=["a"])
    with manager(store_section) as pm:
        first = pm.execute_pipeline(p)
        assert first.status == "failed"
        started.clear()
        box: list[Any] = []
        t = threading.Thread(target=lambda: box.append(pm.execute_pipeline(p, resume=first.run_id)))
        t.start()
        assert started.wait(30)
        with manager(store_section) as other, pytest.raises(RunLeasedError, match="right now"):
            other.execute_pipeline(p, resume=first.run_id)
        fail[0] = False
        gate.set()
        t.join(60)
        assert box[0].success
        assert pm.store is not None and pm.store.lease(first.run_id) is None


def test_a_failed_write_fails_the_run_and_resume_finishes_it(
    store_section: dict[str, Any],
) -> None:
    calls: list[str] = []
    with manager(store_section) as pm:
        store = pm.store
        assert store is not None
        armed = [True]

        def fault(batch: list[Any]) -> None:
            if armed[0] and any(
                len(params) > 3 and params[2] == "transform" for _, params in batch
            ):
                armed[0] = False  # one fault: the end-of-run flush retries and commits
                raise OSError(5, "Input/output error")

        store.write_hook = fault
        result = pm.execute_pipeline(flaky(calls, [False]))
        assert result.status == "failed" and isinstance(result.error, StoreError)
        assert "Input/output error" in str(result.error)
        again = pm.execute_pipeline(flaky(calls, [False]), resume=result.run_id)
    assert again.success and calls.count("load") == 1


def test_prune_deletes_runs_and_their_blobs(
    store_section: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from xlib_pipeline import _blobs

    monkeypatch.setattr(_blobs, "GRACE_S", -1.0)
    p = Pipeline("big")
    p.add_task("a", lambda: os.urandom(8000))
    with manager(store_section) as pm:
        runs = [pm.execute_pipeline(p).run_id for _ in range(3)]
        store = pm.store
        assert store is not None
        dry = pm.prune_runs(keep=1, dry_run=True)
        assert set(dry.runs) == set(runs[:2]) and dry.dry_run
        report = pm.prune_runs(keep=1)
        assert set(report.runs) == set(runs[:2]) and len(report.blobs) == 2
        assert [r.run_id for r in store.list_runs()] == [runs[2]]
        assert len(list(store.blobs.names())) == 1


def test_two_processes_record_both_runs_whole(
    store_section: dict[str, Any], tmp_path: Path
) -> None:
    script = tmp_path / "worker.py"
    script.write_text(
        textwrap.dedent(
            """
            import json, sys
            from xlib_pipeline import Pipeline, PipelineManager
            section = json.loads(sys.argv[1])
            p = Pipeline("proc" + sys.argv[2])
            for k in range(60):
                deps = [f"t{k - 1}"] if k else []
                p.add_task(f"t{k}", lambda *a, k=k: k, depends_on=deps)
            with PipelineManager({"store": section, "max_workers": 2}) as pm:
                r = pm.execute_pipeline(p)
            print(r.run_id, r.status)
            """
        )
    )
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), json.dumps(store_section), str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    ids = [o[0].split()[0] for o in outs]
    with manager(store_section) as pm:
        store = pm.store
        assert store is not None
        for rid in ids:
            assert store.get_run(rid).status == "succeeded"
            tasks = store.get_tasks(rid)
            assert len(tasks) == 60 and all(t.status == "succeeded" for t in tasks.values())
            assert all(t.output is not None for t in tasks.values())
        assert {r.run_id for r in store.list_runs()} == set(ids)


# -- the result cache's table: every backend against a model ----------------------------------


_TENANTS = st.sampled_from([None, "acme", "globex"])
_KEYS = st.sampled_from(["k1", "k2", "k3"])
_OPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("put"),
            _KEYS,
            _TENANTS,
            st.sampled_from([None, 1e-9, 3600.0]),
            st.binary(max_size=64),
        ),
        st.tuples(st.just("get"), _KEYS, _TENANTS),
        st.tuples(st.just("clear"), st.sampled_from([None, "t1", "t2"])),
    ),
    max_size=25,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=_OPS)
def test_the_cache_table_behaves_like_its_model(
    store_section: dict[str, Any], ops: list[tuple[Any, ...]]
) -> None:
    """get/put/clear/list with tenants and TTLs equal a dict model: an entry is served only
    to its tenant and only until it expires; put replaces; clear filters by task."""
    with manager(store_section) as pm:
        table = pm.store.open_cache()  # type: ignore[union-attr]
        table.clear()
        model: dict[str, tuple[str | None, str, float | None, bytes]] = {}
        try:
            for op in ops:
                now = time.time()
                if op[0] == "put":
                    _, key, tenant, ttl, data = op
                    task = "t1" if key != "k3" else "t2"
                    table.put(key, tenant=tenant, pipeline="p", task=task, ttl=ttl,
                              run_id="r", output=data)  # fmt: skip
                    model[key] = (tenant, task, now + ttl if ttl else None, data)
                elif op[0] == "get":
                    _, key, tenant = op
                    got = table.get(key, tenant, now)
                    m = model.get(key)
                    want = (
                        m[3]
                        if m is not None and m[0] == tenant and (m[2] is None or m[2] > now)
                        else None
                    )
                    assert (None if got is None else got[0]) == want, (op, m)
                else:
                    task = op[1]
                    n = table.clear(task=task)
                    gone = [k for k, m in model.items() if task is None or m[1] == task]
                    assert n == len(gone)
                    for k in gone:
                        del model[k]
            listed = {(e.key, e.tenant, e.task, e.size) for e in table.list()}
            assert listed == {(k, m[0], m[1], len(m[3])) for k, m in model.items()}
        finally:
            table.close()


# -- a task's `running` event folded into its terminal row (issue 10) -------------------------

#: Per task: its attempts (each a `running` event, then `attempt_failed` unless it is the last),
#: how it ends (a terminal row, a cached row without any event, or nothing: still running),
#: and time steps (small, so that events of different tasks often share a time).
_TASK_PLAN = st.tuples(
    st.integers(min_value=0, max_value=3),  # attempts started (0: cached or never started)
    st.sampled_from(["succeeded", "failed", "cached", None]),
    st.lists(st.integers(min_value=0, max_value=2), min_size=8, max_size=8),
)


def _log_script(
    plans: list[tuple[int, str | None, list[int]]], order: list[int], cuts: set[int]
) -> list[tuple[Any, ...]]:
    """The store calls (``event`` / ``task_finished`` / ``flush``) of the tasks in ``plans``,
    interleaved as ``order`` draws them, with a flush after each step in ``cuts``."""
    per_task: list[list[tuple[Any, ...]]] = []
    for k, (attempts, end, steps) in enumerate(plans):
        name, ts, ops = f"t{k % 3}{k}", 1.0, []
        it = iter(steps)
        started = None
        for a in range(1, attempts + 1):
            ts += next(it, 0)
            started = started or ts
            ops.append(("event", name, "running", a, ts, None, None))
            if a < attempts:
                ts += next(it, 0)
                ops.append(("event", name, "attempt_failed", a, ts, "ValueError", f"bad {a}"))
        if end == "cached" and attempts == 0:
            ops.append(("task", name, "cached", 0, None, ts + 1))
        elif end is not None and end != "cached" and attempts:
            ts += next(it, 0)
            ops.append(("task", name, end, attempts, started, ts))
        per_task.append(ops)
    script: list[tuple[Any, ...]] = []
    cursors = [0] * len(per_task)
    for step, k in enumerate(order):
        k %= len(per_task)
        if cursors[k] < len(per_task[k]):
            script.append(per_task[k][cursors[k]])
            cursors[k] += 1
        if step in cuts:
            script.append(("flush",))
    for k, ops in enumerate(per_task):  # what the draw left
        script.extend(ops[cursors[k] :])
    return script


def _play(store: Any, run_id: str, script: list[tuple[Any, ...]], *, each: bool = False) -> None:
    """Write ``script``; with ``each``, every record in a commit of its own, so that nothing
    folds (the unfolded store to compare with)."""
    for op in script:
        if op[0] == "flush":
            store.flush()
        elif op[0] == "event":
            _, task, event, attempt, ts, error_type, error = op
            store.event(run_id, task, event, attempt=attempt, ts=ts, error_type=error_type,
                        error=error)  # fmt: skip
        else:
            _, task, status, attempts, started, finished = op
            store.task_finished((run_id, task, status, attempts, started, finished, None, None,
                                 None, None, None, None))  # fmt: skip
        if each:
            store.flush()
    store.flush()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    plans=st.lists(_TASK_PLAN, min_size=1, max_size=6),
    order=st.lists(st.integers(min_value=0, max_value=5), max_size=40),
    cuts=st.sets(st.integers(min_value=0, max_value=40), max_size=6),
)
def test_folded_running_events_read_back_as_the_unfolded_store(
    store_section: dict[str, Any],
    plans: list[tuple[int, str | None, list[int]]],
    order: list[int],
    cuts: set[int],
) -> None:
    """Random mixes of tasks whose `running` event is folded into their terminal row (both in
    one commit) and tasks whose event is a row of its own (committed earlier, no terminal row
    yet, or a cached task with no event at all) give `get_events` output identical to the
    same records written unfolded; ties of time between tasks included."""
    script = _log_script(plans, order, cuts)
    with manager(store_section) as pm:
        store = pm.store
        assert store is not None
        stamp = os.urandom(6).hex()
        _play(store, "plain-" + stamp, script, each=True)
        _play(store, "folded-" + stamp, script)
        plain = store.get_events("plain-" + stamp)
        folded = store.get_events("folded-" + stamp)
        tasks = store.get_tasks("folded-" + stamp)
    assert folded == plain
    # Cached tasks (no running event) stay distinguishable: nothing is implied for them.
    cached = {t for t, r in tasks.items() if r.status == "cached"}
    assert not [e for e in folded if e[0] in cached and e[2] == "running"]


def test_a_run_folds_running_events_into_task_rows(store_section: dict[str, Any]) -> None:
    """The speed lever is really used: a run's tasks committed with their start have no
    event row of their own, and `get_events` lists every start (attempts included)."""
    calls: list[str] = []
    with manager(store_section) as pm:
        result = pm.execute_pipeline(flaky(calls, [False]))
        store = pm.store
        assert store is not None
        events = store.get_events(result.run_id)
        tasks = store.get_tasks(result.run_id)
        if "path" in store_section:
            import sqlite3

            with sqlite3.connect(store_section["path"]) as conn:
                rows = conn.execute(
                    "SELECT count(*) FROM events WHERE run_id = ? AND event = 'running'",
                    (result.run_id,),
                ).fetchone()[0]
                folded = conn.execute(
                    "SELECT count(*) FROM tasks WHERE run_id = ? AND ran IS NOT NULL",
                    (result.run_id,),
                ).fetchone()[0]
        else:
            import psycopg

            with psycopg.connect(store_section["url"]) as conn:
                rows = conn.execute(
                    "SELECT count(*) FROM events WHERE run_id = %s AND event = 'running'",
                    (result.run_id,),
                ).fetchone()[0]  # type: ignore[index]
                folded = conn.execute(
                    "SELECT count(*) FROM tasks WHERE run_id = %s AND ran IS NOT NULL",
                    (result.run_id,),
                ).fetchone()[0]  # type: ignore[index]
    assert [(e[0], e[2], e[3]) for e in events if e[2] == "running"] == [
        ("load", "running", 1),
        ("transform", "running", 1),
    ]
    assert rows + folded == 2 and set(tasks) == {"load", "transform"}
