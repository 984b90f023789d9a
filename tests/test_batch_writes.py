"""What a stream batch's transaction writes with fewer statements, and the same rows: a few
log rows of several shapes in one INSERT per table, and a run's row inserted with its final
state when its INSERT and its final UPDATE are in one transaction."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xlib_pipeline import _commit
from xlib_pipeline._commit import FINISH_RUN, LOG, _write_mixed, run_insert
from xlib_pipeline._store import RunStore
from xlib_pipeline._store_file import _SCHEMA

_COLUMNS = ("run_id", "pipeline", "fingerprint", "structure", "status", "started", "finished",
            "error")  # fmt: skip
_INSERT = run_insert(_COLUMNS)


def _fresh() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.executescript(_SCHEMA)
    return conn


def _stream_batch_rows(run: str) -> list[tuple[Any, ...]]:
    """A stream batch's log rows: its input's row (no times), then its tasks' events and
    rows (folded), then the run's end event."""
    rows: list[tuple[Any, ...]] = [
        (1, run, "stream.batch", "succeeded", 0, None, None, None, None, None, b"in", None,
         None, None),
    ]  # fmt: skip
    for k, task in enumerate(("parse", "enrich", "emit")):
        t = 10.0 + k
        rows.append((2, run, task, "running", 1, None, None, None, None, None, None, None,
                     None, t))  # fmt: skip
        rows.append((1, run, task, "succeeded", 1, t, t + 0.5, None, None, None, b"out", None,
                     None, None))  # fmt: skip
    rows.append((2, run, None, "run.succeeded", None, None, None, None, None, None, None, None,
                 None, 20.0))  # fmt: skip
    return rows


def test_a_stream_batchs_log_rows_are_one_insert_per_table() -> None:
    """Four task rows of two shapes were three statements (1 + 2 + 1); now one, with the
    same rows as plain one-row inserts."""
    rows = _stream_batch_rows("r1")
    got = _fresh()
    seen: list[str] = []
    got.set_trace_callback(seen.append)
    got.execute("BEGIN")
    _commit._insert_rows(got, rows)
    got.execute("COMMIT")
    got.set_trace_callback(None)
    inserts = [s for s in seen if s.startswith("INSERT")]
    assert len(inserts) == 2, inserts  # tasks, events
    want = _fresh()
    tasks, events = _commit.split_log(rows)
    for row in tasks:
        want.execute(f"INSERT OR REPLACE INTO tasks VALUES ({', '.join('?' * 14)})", row)
    for row in events:
        want.execute("INSERT INTO events (run_id, task, ts, event, attempt, error_type, error) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?)", row)  # fmt: skip
    q = "SELECT *, typeof(started), typeof(ran) FROM tasks ORDER BY rowid"
    assert got.execute(q).fetchall() == want.execute(q).fetchall()
    q = "SELECT * FROM events ORDER BY id"
    assert got.execute(q).fetchall() == want.execute(q).fetchall()


def test_more_rows_than_small_keep_their_power_of_two_statements() -> None:
    rows = [("r", f"t{k}", "succeeded", 1, 1.0, 2.0, None, None, None, b"x", None, None, 1.0,
             1) for k in range(_commit._SMALL + 1)]  # fmt: skip
    sizes = [s.count("(") - 1 for s, _ in _commit._statements(_commit._TASKS, rows)]
    assert sizes == [_commit._SMALL, 1]
    assert [s.count("(") - 1 for s, _ in _commit._statements(_commit._TASKS, rows[:7])] == [7]


def _row(run: str, status: str = "running") -> tuple[Any, ...]:
    return (run, "p", "f", "{}", status, 1.0, None, None)


def _run_rows(conn: sqlite3.Connection) -> list[Any]:
    return conn.execute("SELECT *, rowid FROM runs ORDER BY run_id").fetchall()


def test_a_runs_insert_takes_its_final_state_and_the_update_is_not_written() -> None:
    items = [
        (_INSERT, _row("a")),
        (LOG, (2, "a", None, "run.succeeded", None, None, None, None, None, None, None, None,
               None, 3.0)),
        ("INSERT OR REPLACE INTO blob_refs (run_id, task, name) VALUES (?, ?, ?)",
         ("a", "t", "b")),
        (FINISH_RUN, ("succeeded", 2.0, None, "a")),
        (_INSERT, _row("b")),
        (FINISH_RUN, ("failed", 3.0, "ValueError: x", "b")),
        (FINISH_RUN, ("failed", 4.0, "not inserted here", "c")),
    ]  # fmt: skip
    got = _fresh()
    got.execute("INSERT INTO runs (run_id, pipeline, fingerprint, structure, status) "
                "VALUES ('c', 'p', 'f', '{}', 'running')")  # fmt: skip
    seen: list[str] = []
    got.set_trace_callback(seen.append)
    _write_mixed(got, list(items))
    got.set_trace_callback(None)
    assert len([s for s in seen if s.startswith("UPDATE runs")]) == 1  # run c's only
    assert _run_rows(got) == _plain(items, pre="c")


def _plain(items: list[Any], pre: str, status: str = "running") -> list[Any]:
    conn = _fresh()
    conn.execute("INSERT INTO runs (run_id, pipeline, fingerprint, structure, status) "
                 "VALUES (?, 'p', 'f', '{}', ?)", (pre, status))  # fmt: skip
    for sql, params in items:
        if sql is not LOG:
            conn.execute(sql, params)
    return _run_rows(conn)


_OTHER = "UPDATE runs SET error=? WHERE run_id=?"  # another statement on runs


@st.composite
def run_statements(draw: st.DrawFn) -> list[tuple[str, tuple[Any, ...]]]:
    items: list[tuple[str, tuple[Any, ...]]] = []
    for _ in range(draw(st.integers(0, 12))):
        run = draw(st.sampled_from(("a", "b", "c")))
        kind = draw(st.sampled_from(("insert", "finish", "finish", "other", "log")))
        if kind == "insert":
            items.append((_INSERT, _row(run, draw(st.sampled_from(("running", "queued"))))))
        elif kind == "finish":
            status = draw(st.sampled_from(("succeeded", "failed")))
            error = draw(st.one_of(st.none(), st.text(max_size=3)))
            items.append((FINISH_RUN, (status, draw(st.floats(0, 9)), error, run)))
        elif kind == "other":
            other = draw(st.sampled_from((_OTHER, _RAW_EVENT, _BLOB_REF)))
            items.append((other, (draw(st.text(max_size=2)), run) if other is _OTHER else (run,)))
        else:
            items.append((LOG, draw(st.sampled_from(_LOG_ROWS))(run)))
    return items


_LOG_ROWS = (
    lambda run: (2, run, None, "x", None, None, None, None, None, None, None, None, None, 1.0),
    lambda run: (2, run, "t", "running", 1, None, None, None, None, None, None, None, None, 2.0),
    lambda run: (1, run, "t", "succeeded", 1, 2.0, 3.0, None, None, None, b"o", None, None, None),
    lambda run: (1, run, "u", "succeeded", 0, None, None, None, None, None, b"i", None, None,
                 None),
)  # fmt: skip
_RAW_EVENT = "INSERT INTO events (run_id, task, ts, event) VALUES (?, NULL, 5.0, 'raw')"
_BLOB_REF = "INSERT OR REPLACE INTO blob_refs (run_id, task, name) VALUES (?, 't', 'b')"


@settings(max_examples=200, deadline=None)
@given(items=run_statements())
def test_runs_rows_equal_the_statements_run_one_by_one(items: list[Any]) -> None:
    got = _fresh()
    got.execute("INSERT INTO runs (run_id, pipeline, fingerprint, structure, status) "
                "VALUES ('c', 'p', 'f', '{}', 'old')")  # fmt: skip
    _write_mixed(got, list(items))
    want = _fresh()
    want.execute("INSERT INTO runs (run_id, pipeline, fingerprint, structure, status) "
                 "VALUES ('c', 'p', 'f', '{}', 'old')")  # fmt: skip
    _one_by_one(want, items)
    assert _run_rows(got) == _run_rows(want)
    logs = [params for sql, params in items if sql is LOG]
    terminal = [row[1:3] for row in logs if row[0] == 1]
    if len(set(terminal)) == len(terminal):  # each task's row once (as a run writes them)
        assert _log_tables(got) == _log_tables(want)
    # Whatever the rows: the writer before this change (log rows between two statements
    # inserted before the second), or, when no statement names the log's tables, the
    # statements and then every log row at once (as adjacent rows always were).
    apart = any(sql is not LOG and ("events" in sql or "tasks" in sql) for sql, _ in items)
    model = _fresh()
    model.execute("INSERT INTO runs (run_id, pipeline, fingerprint, structure, status) "
                  "VALUES ('c', 'p', 'f', '{}', 'old')")  # fmt: skip
    rows: list[tuple[Any, ...]] = []
    for sql, params in items:
        if sql is LOG:
            rows.append(params)
            continue
        if rows and apart:
            _commit._insert_rows(model, rows)
            rows = []
        model.execute(sql, params)
    _commit._insert_rows(model, rows)
    assert _log_tables(got) == _log_tables(model)


def _one_by_one(conn: sqlite3.Connection, items: list[Any]) -> None:
    """Every statement alone, in order; each log row as the one-row insert it stands for
    (a running event and its task's row both in ``items`` are folded as split_log folds
    them: compared through the events the store reads back, see _log_tables)."""
    for sql, params in items:
        if sql is LOG:
            tasks, events = _commit.split_log([params], fold=False)
            for row in tasks:
                conn.execute(f"INSERT OR REPLACE INTO tasks VALUES ({', '.join('?' * 14)})", row)
            for row in events:
                conn.execute("INSERT INTO events (run_id, task, ts, event, attempt, error_type, "
                             "error) VALUES (?, ?, ?, ?, ?, ?, ?)", row)  # fmt: skip
        else:
            conn.execute(sql, params)


def _log_tables(conn: sqlite3.Connection) -> tuple[list[Any], list[Any], list[Any]]:
    """The tasks rows (without the folded event's columns), and the events with the folded
    ``running`` events put back where readers put them (the task's last event), in id
    order per run and task; the blob_refs rows."""
    tasks = conn.execute("SELECT run_id, task, status, attempts, started, finished, output "
                         "FROM tasks ORDER BY rowid").fetchall()  # fmt: skip
    events = conn.execute("SELECT run_id, task, ts, event, id FROM events").fetchall()
    folded = conn.execute("SELECT run_id, task, ran, 'running', ? FROM tasks WHERE ran IS NOT "
                          "NULL", (_commit.FOLDED_ORDER,)).fetchall()  # fmt: skip
    seq = sorted(events + folded, key=lambda e: (e[0], e[1] or "", e[4]))
    return tasks, [e[:4] for e in seq], conn.execute("SELECT * FROM blob_refs").fetchall()


@pytest.mark.parametrize("same_commit", [True, False])
def test_a_stream_batchs_run_row_reads_back_finished(tmp_path: Path, same_commit: bool) -> None:
    """Through the store: inserted and finished in one commit, or in two (readers saw the
    running row in between), the stored run is the same."""
    store = RunStore(tmp_path / "runs.sqlite")
    try:
        store.run_started(
            {"run_id": "r1", "pipeline": "p", "fingerprint": "f", "structure": "{}",
             "status": "running", "started": 1.0, "finished": None, "error": None}
        )  # fmt: skip
        if not same_commit:
            store.flush()
            assert store.get_run("r1").finished is None  # (shown interrupted: no lease)
        store.add(FINISH_RUN, ("succeeded", 2.0, None, "r1"))
        store.flush()
        rec = store.get_run("r1")
        assert (rec.status, rec.started, rec.finished, rec.error) == ("succeeded", 1.0, 2.0, None)
    finally:
        store.close()


def test_batches_committed_together_write_their_log_rows_in_one_insert_per_table() -> None:
    """Three stream batches in one transaction (each: its run's row, its log rows, its
    run's end, its checkpoint rows): one tasks INSERT and one events INSERT, not three."""
    items: list[Any] = []
    for k in range(3):
        run = f"r{k}"
        items.append((_INSERT, _row(run)))
        items.extend((LOG, row) for row in _stream_batch_rows(run))
        items.append((FINISH_RUN, ("succeeded", 2.0, None, run)))
        items.append((_BLOB_REF, (run,)))  # stands for the stream's checkpoint statements
    got = _fresh()
    seen: list[str] = []
    got.set_trace_callback(seen.append)
    _write_mixed(got, list(items))
    got.set_trace_callback(None)
    assert len([s for s in seen if "INTO tasks" in s]) == 1
    assert len([s for s in seen if "INTO events" in s]) == 1
    want = _fresh()
    _one_by_one(want, items)
    assert _run_rows(got) == _run_rows(want)
    assert _log_tables(got) == _log_tables(want)
    # A statement on the events table among them: the log rows keep their places.
    mixed = [*items[:12], (_RAW_EVENT, ("r0",)), *items[12:]]
    got = _fresh()
    _write_mixed(got, list(mixed))
    want = _fresh()
    _one_by_one(want, mixed)
    assert _log_tables(got) == _log_tables(want)


def test_a_stream_batch_longer_than_a_heartbeat_still_commits_once_with_its_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lease heartbeat's commit (every HEARTBEAT_S) committed a slow batch's lease, run
    row and first events in a transaction of their own, before its checkpoint."""
    import json
    import time

    from xlib_pipeline import Pipeline, PipelineManager, _lease

    monkeypatch.setattr(_lease, "HEARTBEAT_S", 0.02)
    p = Pipeline("slow")

    @p.task("work")
    def work(batch: list[Any]) -> list[Any]:
        time.sleep(0.15)
        return batch

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i}) + "\n" for i in range(6)))
    writes: list[list[str]] = []
    with PipelineManager({"store": {"path": str(tmp_path / "r.sqlite")}}) as pm:
        store = pm.store
        assert store is not None
        store.write_hook = lambda batch: writes.append([str(sql) for sql, _ in batch])
        s = pm.stream(p, source=f"jsonl:{src}", sink=f"jsonl:{tmp_path / 'o.jsonl'}",
                      batch_size=3, from_start=True)  # fmt: skip
        store.write_hook = None
        assert s.status == "completed" and s.batches == 2
        runs = store.list_runs(pipeline=s.batch_pipeline.name)
    assert len(runs) == 2 and {r.status for r in runs} == {"succeeded"}
    for w in writes:  # no heartbeat, no commit of a batch's rows before its checkpoint
        if any(sql.startswith("INSERT OR REPLACE INTO runs") or "leases" in sql for sql in w):
            assert any("INTO stream_batches" in sql for sql in w), w


_STREAMS = ("s1", "s2")


@st.composite
def batch_units(draw: st.DrawFn) -> list[tuple[str, tuple[Any, ...]]]:
    """Stream batches' units as the checkpoint queues them: the run's row, log rows, its
    final state, sometimes a blob reference, then its batch row and its stream's update."""
    from xlib_pipeline._merge import ADVANCE, BATCH_INSERT

    items: list[tuple[str, tuple[Any, ...]]] = []
    seqs = dict.fromkeys(_STREAMS, 0)
    for k in range(draw(st.integers(1, 6))):
        run = f"r{k}"
        name = draw(st.sampled_from(_STREAMS))
        seqs[name] += 1
        items.append((_INSERT, _row(run)))
        items.extend((LOG, row) for row in _stream_batch_rows(run))
        if draw(st.booleans()):
            items.append(("INSERT OR REPLACE INTO blob_refs (run_id, task, name) "
                          "VALUES (?, ?, ?)", (run, "t", f"b{k}")))  # fmt: skip
        items.append((FINISH_RUN, (draw(st.sampled_from(["succeeded", "failed"])), 9.0,
                                   draw(st.sampled_from([None, "E: x"])), run)))  # fmt: skip
        n = draw(st.integers(0, 20))
        items.append((BATCH_INSERT, (name, seqs[name], run, "0", str(n), n, n, 0, k % 2,
                                     str(n), b"o", float(k))))  # fmt: skip
        items.append((ADVANCE, (seqs[name], str(n), str(n * 2), n, n, k % 3, k % 2,
                                draw(st.sampled_from([None, k])),
                                draw(st.sampled_from([None, b"w"])), float(k), name)))  # fmt: skip
    return items


def _stream_tables(conn: sqlite3.Connection) -> tuple[list[Any], ...]:
    return tuple(
        conn.execute(f"SELECT * FROM {t} ORDER BY {o}").fetchall()
        for t, o in (("runs", "run_id"), ("stream_batches", "stream, seq"),
                     ("streams", "name"), ("blob_refs", "run_id, task"))
    )  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(items=batch_units())
def test_batches_committed_together_merge_their_statements_with_the_same_rows(
    items: list[Any],
) -> None:
    """Batches committed in one transaction: their runs rows are one INSERT, their batch
    rows one, each stream's updates one (the last position, the counters summed)."""
    from xlib_pipeline.streams._checkpoint import _SCHEMA as CKPT

    def fresh() -> sqlite3.Connection:
        conn = _fresh()
        conn.executescript(CKPT)
        for name in _STREAMS:
            conn.execute("INSERT INTO streams (name, pipeline, status, records, outputs, late, "
                         "dead) VALUES (?, 'p', 'running', 5, 5, 1, 1)", (name,))  # fmt: skip
        return conn

    got = fresh()
    seen: list[str] = []
    got.set_trace_callback(seen.append)
    _write_mixed(got, list(items))
    got.set_trace_callback(None)
    want = fresh()
    _one_by_one(want, items)
    assert _stream_tables(got) == _stream_tables(want)
    assert _log_tables(got) == _log_tables(want)
    streams = {p[-1] for sql, p in items if str(sql).startswith("UPDATE streams")}
    assert len([s for s in seen if s.startswith("UPDATE streams")]) == len(streams)
    assert len([s for s in seen if "INTO stream_batches" in s]) == 1
    assert len([s for s in seen if "INTO runs" in s]) == 1
