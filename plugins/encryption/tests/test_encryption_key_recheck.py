"""A changed key file: the next plain run uses it; a stream looks at most once a second."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from xlib_pipeline_encryption import _plugin, add_key, generate_key_file, key_id_of

from xlib_pipeline import Pipeline, PipelineManager


def config(tmp_path: Any, keyfile: Any) -> dict[str, Any]:
    return {
        "store": {"path": str(tmp_path / "runs.sqlite")},
        "security": {"encryption_at_rest": True},
        "encryption": {"keyring": {"file": str(keyfile)}},
    }


def key_ids_by_run(tmp_path: Any, task: str) -> dict[str, str | None]:
    with sqlite3.connect(tmp_path / "runs.sqlite") as c:
        rows = c.execute(
            "SELECT run_id, output FROM tasks WHERE task = ? AND output IS NOT NULL", (task,)
        ).fetchall()
    return {run: key_id_of(bytes(blob)) for run, blob in rows}


@pytest.fixture
def stamps(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Each look at the key file (its stat) made by the plugin."""
    seen: list[Any] = []
    real = _plugin.key_file_stamp

    def counting(spec: Any) -> Any:
        seen.append(spec)
        return real(spec)

    monkeypatch.setattr(_plugin, "key_file_stamp", counting)
    return seen


def test_a_changed_key_file_is_used_by_the_next_plain_run(tmp_path, stamps):
    keyfile = tmp_path / "secrets" / "ring.json"
    first = generate_key_file(keyfile)
    p = Pipeline("plain")
    p.add_task("t", lambda: {"x": 1})
    with PipelineManager(config(tmp_path, keyfile)) as pm:
        r1 = pm.execute_pipeline(p)
        before = len(stamps)
        second = add_key(keyfile)  # no time passes on the plugin's clock: plain runs look
        r2 = pm.execute_pipeline(p)
        assert len(stamps) > before  # a plain run looks at the key file every time
    keys = key_ids_by_run(tmp_path, "t")
    assert keys[r1.run_id] == first.id and keys[r2.run_id] == second.id


def test_a_stream_checks_the_key_file_at_most_once_per_second(tmp_path, stamps, monkeypatch):
    keyfile = tmp_path / "secrets" / "ring.json"
    first = generate_key_file(keyfile)
    clock = [1000.0]
    monkeypatch.setattr(_plugin, "_clock", lambda: clock[0])
    added: list[Any] = []
    looks: dict[int, int] = {}

    def body(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        n = batch[0]["batch"]
        looks[n] = len(stamps)  # the plugin's looks so far, as batch n runs
        if n == 2:
            added.append(add_key(keyfile))  # the key file changes during batch 2
        elif n == 4:
            clock[0] += 0.6
        elif n == 5:
            clock[0] += 0.5  # 1.1 s after batch 1's look: batch 6 looks again
        return batch

    p = Pipeline("keys")
    p.add_task("t", body)
    rows = [{"batch": n} for n in range(1, 9)]
    with PipelineManager(config(tmp_path, keyfile)) as pm:
        s = pm.stream(p, source=rows, sink=None, batch_size=1)
        assert s.status == "completed", s.error
        listed = pm.store.list_runs(pipeline="keys", limit=100)  # type: ignore[union-attr]
        ordered = sorted(listed, key=lambda run: run.params["stream"]["batch"])
    assert len(ordered) == 8
    # no look at the key file from batch 2's run to batch 5's, nor from batch 7's to 8's;
    # batch 6 (a second on) looks, finds the new key and seals under it
    assert looks[2] == looks[3] == looks[4] == looks[5] < looks[6]
    assert looks[7] == looks[8]
    keys = key_ids_by_run(tmp_path, "t")
    assert [keys[run.run_id] for run in ordered] == [first.id] * 5 + [added[0].id] * 3
