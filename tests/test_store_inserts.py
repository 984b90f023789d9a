"""The SQLite store's per-task hot path. Log inserts (``_commit._insert_log``): a row's
NULL columns are NULL in the statement's text (binding ``None`` is slow in Python's
sqlite3), rows go in power-of-two multi-row statements, and what lands in the tables is
what plain one-row inserts of the same rows would have written, in the same order. The
recorder's premade pickles of the commonest outputs."""

from __future__ import annotations

import pickle
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xlib_pipeline import Pipeline, PipelineManager, _commit
from xlib_pipeline._blobs import BlobRef
from xlib_pipeline._store import RunStore
from xlib_pipeline._store_file import _SCHEMA, load_output

_RUNS = ("r1", "r2")
_TASKS = ("a", "b", "c")
_value = st.one_of(
    st.none(),
    st.integers(-3, 3),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=3),
    st.binary(max_size=3),
)
_opt = st.one_of(st.none(), _value)


@st.composite
def log_rows(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    """Log rows (LOG_COLUMNS) of a few runs and tasks: terminal rows (the same task may
    come again: the later row replaces it), ``running`` events (folded or not) and other
    events, any column that may be NULL drawn NULL or not."""
    rows: list[tuple[Any, ...]] = []
    for _ in range(draw(st.integers(0, 40))):
        run = draw(st.sampled_from(_RUNS))
        kind = draw(st.sampled_from((1, 2, 2)))
        if kind == 1:
            task = draw(st.sampled_from(_TASKS))
            rest = draw(st.tuples(*[_opt] * 9))
            rows.append((1, run, task, draw(st.sampled_from(("succeeded", "failed"))),
                         draw(st.integers(0, 3)), *rest[:8], None))  # fmt: skip
        else:
            task = draw(st.one_of(st.none(), st.sampled_from(_TASKS)))
            event = draw(st.sampled_from(("running", "attempt_failed", "run.succeeded")))
            err = draw(st.tuples(_opt, _opt)) if draw(st.booleans()) else (None, None)
            rows.append((2, run, task, event, draw(st.one_of(st.none(), st.integers(1, 3))),
                         None, None, err[0], err[1], None, None, None, None,
                         draw(st.floats(0, 10))))  # fmt: skip
    return rows


def _fresh() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.executescript(_SCHEMA)
    return conn


def _reference(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """The model: one plain INSERT per row, every value a parameter."""
    tasks, events = _commit.split_log(rows)
    cols = ", ".join(["?"] * 14)
    for row in tasks:
        conn.execute(f"INSERT OR REPLACE INTO tasks (run_id, task, status, attempts, "
                     "started, finished, error_type, error, traceback, output, output_run, "
                     f"tenant, ran, ran_attempt) VALUES ({cols})", row)  # fmt: skip
    for row in events:
        conn.execute("INSERT INTO events (run_id, task, ts, event, attempt, error_type, "
                     "error) VALUES (?, ?, ?, ?, ?, ?, ?)", row)  # fmt: skip


def _contents(conn: sqlite3.Connection) -> tuple[list[Any], list[Any]]:
    tasks = conn.execute("SELECT *, typeof(output), typeof(error) FROM tasks ORDER BY rowid")
    events = conn.execute("SELECT * FROM events ORDER BY id")
    return tasks.fetchall(), events.fetchall()


@settings(max_examples=150, deadline=None)
@given(rows=log_rows(), max_rows=st.sampled_from((1, 2, 4, 1024)))
def test_inserted_rows_equal_plain_one_row_inserts(
    rows: list[tuple[Any, ...]], max_rows: int
) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_commit, "_MAX_ROWS", max_rows)
        got = _fresh()
        _commit._insert_log(got, rows)
        assert not got.in_transaction
        inside = _fresh()  # the same rows inside a caller's transaction (a mixed batch)
        inside.execute("BEGIN")
        _commit._insert_rows(inside, rows)
        inside.execute("COMMIT")
    want = _fresh()
    _reference(want, rows)
    assert _contents(got) == _contents(want)
    assert _contents(inside) == _contents(want)


def test_no_parameter_is_none_and_statements_are_powers_of_two() -> None:
    rows = [("r", f"t{k}", "succeeded", 1, 1.0, 2.0, None, None, None, b"x", None,
             "tenant" if k % 50 == 0 else None, 1.0, 1) for k in range(2500)]  # fmt: skip
    todo = _commit._statements(_commit._TASKS, rows)
    assert all(None not in params for _, params in todo)
    assert sum(len(p) for _, p in todo) == sum(14 - r.count(None) for r in rows)
    # Rows 1..49 share one shape: 49 = 32 + 16 + 1; a row with a tenant is one statement.
    assert [s.count("(") - 1 for s, _ in todo[:4]] == [1, 32, 16, 1]
    assert all(s.count("(") - 1 in (1 << k for k in range(11)) for s, _ in todo)


def test_a_batch_of_more_rows_than_one_statement_holds_is_one_transaction() -> None:
    conn = _fresh()
    rows = [(1, "r", f"t{k}", "succeeded", 1, 1.0, 2.0, None, None, None, b"x", None, None,
             None) for k in range(3000)]  # fmt: skip
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    _commit._insert_log(conn, rows)
    conn.set_trace_callback(None)
    assert statements[0] == "BEGIN IMMEDIATE" and statements[-1] == "COMMIT"
    # 3000 = 1024 + 1024 + 512 + 256 + 128 + 32 + 16 + 8: eight statements.
    assert len(statements) == 2 + 8
    assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 3000


_ATOMS = [None, False, True, 0, 1, 2, 255, 256, -1, 1.0, "", b""]


@pytest.mark.parametrize("threshold", [0, 1 << 20])
def test_outputs_of_none_bools_and_small_ints_are_their_pickles(
    tmp_path: Path, threshold: int
) -> None:
    """The recorder keeps the pickles of None, bools and ints 0-255 made once: the stored
    bytes are ``pickle.dumps(value, protocol=5)`` (a bool stays a bool, 1 an int), and a
    store whose blob threshold is below their size still sends them to blobs."""
    p = Pipeline("atoms")
    for k, value in enumerate(_ATOMS):
        p.add_task(f"t{k}", (lambda v: lambda: v)(value))
    store = {"path": str(tmp_path / "runs.sqlite"), "blobs": {"threshold": threshold}}
    pm = PipelineManager({"store": store}, entry_points=False)
    r = pm.execute_pipeline(p)
    assert r.success, r.error
    rs = RunStore(tmp_path / "runs.sqlite")
    try:
        tasks = rs.get_tasks(r.run_id)
    finally:
        rs.close()
        pm.close()
    for k, value in enumerate(_ATOMS):
        stored = tasks[f"t{k}"].output
        assert stored is not None
        if threshold:
            assert stored == pickle.dumps(value, protocol=5)
            loaded = load_output(stored)
            assert type(loaded) is type(value) and loaded == value
        else:
            assert BlobRef.decode(stored) is not None  # every output went to a blob
    got = PipelineManager({"store": store}, entry_points=False)
    try:
        again = got.execute_pipeline(p, resume=r.run_id)
        assert again.success
        for k, value in enumerate(_ATOMS):
            out = again.tasks[f"t{k}"].output
            assert type(out) is type(value) and out == value
    finally:
        got.close()


def _split_model(rows: list[tuple[Any, ...]]) -> tuple[list[Any], list[Any]]:
    """split_log's rule written plainly: a task row takes the task's last event when that
    is an open ``running`` event (no error) of the same run, which then is no event row."""
    tasks: list[Any] = []
    events: list[Any] = []
    open_: dict[tuple[Any, Any], int] = {}
    for row in rows:
        if row[0] == 1:
            j = open_.pop((row[1], row[2]), None)
            ran = (None, None) if j is None else (events[j][2], events[j][4])
            if j is not None:
                events[j] = None
            tasks.append((*row[1:13], *ran))
            continue
        if row[2] is not None:
            open_.pop((row[1], row[2]), None)
            if row[3] == "running" and row[7] is None and row[8] is None:
                open_[(row[1], row[2])] = len(events)
        events.append((row[1], row[2], row[13], row[3], row[4], row[7], row[8]))
    return tasks, [e for e in events if e is not None]


@settings(max_examples=300, deadline=None)
@given(rows=log_rows())
def test_split_log_equals_its_plain_model(rows: list[tuple[Any, ...]]) -> None:
    tasks, events = _commit.split_log(rows)
    assert (tasks, events) == _split_model(rows)
    assert all(len(e) == 7 for e in events)
    unfolded_tasks, unfolded = _commit.split_log(rows, fold=False)
    assert [t[:12] for t in unfolded_tasks] == [t[:12] for t in tasks]
    assert all(t[12:] == (None, None) for t in unfolded_tasks)
    assert len(unfolded) == sum(1 for r in rows if r[0] == 2)
