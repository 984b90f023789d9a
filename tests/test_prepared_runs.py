"""Prepared runs: what every run of a pipeline with the same options shares is computed once
(``PipelineManager._prepare_run``) and each run launched from it (``_launch``); a stream
prepares its batches' runs once. A launched run is the run ``execute_pipeline`` makes (same
hooks in the same order, same result), a plugin registered later takes part in the next
run, and an edited pipeline is prepared again."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from xlib_pipeline import Pipeline, PipelineManager, hookimpl
from xlib_pipeline._lanes import Flag
from xlib_pipeline.exceptions import DefinitionError


class _Recorder:
    """Every per-run and per-task hook, with what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    @hookimpl
    def prepare_run(self, pipeline: Any, tasks: Any, options: Any) -> None:
        self.calls.append(("prepare_run", pipeline.name, [t.name for t in tasks], dict(options)))

    @hookimpl
    def validate_pipeline(self, pipeline: Any, run: Any) -> None:
        self.calls.append(("validate_pipeline", pipeline.name, dict(run.params), run.executor))

    @hookimpl
    def before_pipeline(self, run: Any) -> None:
        self.calls.append(
            ("before_pipeline", run.tenant_id, run.principal, run.max_workers, run.executor)
        )

    @hookimpl
    def before_task(self, task: Any, run: Any, inputs: Any) -> None:
        self.calls.append(("before_task", task.name, inputs))

    @hookimpl
    def after_task(self, task: Any, run: Any, outcome: Any) -> None:
        self.calls.append(("after_task", task.name, outcome.status.value, outcome.output))

    @hookimpl
    def after_pipeline(self, run: Any, result: Any) -> None:
        self.calls.append(("after_pipeline", result.status, result.final_result))


def _chain(name: str = "prep") -> Pipeline:
    p = Pipeline(name, params={"region": "us", "level": 3})
    p.add_task("feed", lambda: [0])
    p.add_task("double", lambda rows: [r * 2 for r in rows], depends_on=["feed"])
    p.add_task("plus", lambda rows: [r + 1 for r in rows], depends_on=["double"])
    return p


@pytest.mark.parametrize("parallel", [False, True])
def test_a_launched_run_is_the_run_execute_pipeline_makes(tmp_path: Path, parallel: bool) -> None:
    """Same hooks, same order, same arguments; same result and stored run (outputs are built
    anew by the tasks: nothing depends on a task handing its input back)."""
    seen: dict[str, list[tuple[Any, ...]]] = {}
    rows: dict[str, Any] = {}
    for way in ("execute", "launch"):
        rec = _Recorder()
        cfg = {"store": {"path": str(tmp_path / f"{way}.sqlite")}}
        with PipelineManager(cfg, plugins=[rec], entry_points=False) as pm:
            p = _chain()
            kwargs: dict[str, Any] = {"parallel": parallel, "tenant_id": "t1", "principal": "ann"}
            params = {"region": "eu"}
            if way == "execute":
                result = pm.execute_pipeline(p, inputs={"feed": [1, 2]}, params=params, **kwargs)
            else:
                prep = pm._prepare_run(p, **kwargs)
                result = pm._launch(prep, inputs={"feed": [1, 2]}, params=params)
            assert result.success and result.final_result == [3, 5]
            assert [(n, t.status.value, t.output) for n, t in result.tasks.items()] == [
                ("feed", "succeeded", [1, 2]),
                ("double", "succeeded", [2, 4]),
                ("plus", "succeeded", [3, 5]),
            ]
            seen[way] = rec.calls
            store = pm.store
            assert store is not None
            stored = store.get_run(result.run_id)
            tasks = store.get_tasks(result.run_id)
            rows[way] = (
                stored.status,
                stored.params,
                stored.tenant,
                stored.principal,
                stored.executor,
                stored.source,
                {n: t.status for n, t in tasks.items()},
            )
    assert seen["launch"] == seen["execute"]
    assert [c[0] for c in seen["launch"]] == [
        "prepare_run",
        "validate_pipeline",
        "before_pipeline",
        "before_task",
        "after_task",
        "before_task",
        "after_task",
        "after_pipeline",
    ]
    assert rows["launch"] == rows["execute"]


def test_a_prepared_run_refuses_what_execute_pipeline_refuses() -> None:
    with PipelineManager(entry_points=False) as pm:
        p = _chain()
        with pytest.raises(TypeError, match="unknown option"):
            pm._prepare_run(p, bogus=1)
        with pytest.raises(Exception, match="max_workers"):
            pm._prepare_run(p, max_workers=0)
        prep = pm._prepare_run(p, parallel=False)
        with pytest.raises(DefinitionError, match="no task 'nope'"):
            pm._launch(prep, inputs={"nope": 1})


def test_an_edited_pipeline_is_no_longer_current() -> None:
    with PipelineManager(entry_points=False) as pm:
        p = _chain()
        prep = pm._prepare_run(p, parallel=False)
        assert prep.current()
        assert pm._launch(prep).final_result == [1]
        p.add_task("minus", lambda rows: [r - 1 for r in rows], depends_on=["plus"])
        assert not prep.current()
        again = pm._prepare_run(p, parallel=False)
        assert again.current() and pm._launch(again).final_result == [0]


def test_a_plugin_registered_after_preparing_takes_part_in_the_next_run() -> None:
    with PipelineManager(entry_points=False) as pm:
        p = _chain()
        prep = pm._prepare_run(p, parallel=False)
        pm._launch(prep)
        rec = _Recorder()
        pm.register(rec, "late-recorder")
        assert prep.current()  # hooks are read per run, not prepared
        pm._launch(prep)
        assert [c[0] for c in rec.calls].count("before_task") == 3


def _write(path: Path, n: int) -> None:
    path.write_text("".join(json.dumps({"id": i}) + "\n" for i in range(n)))


def test_a_stream_prepares_once_and_sees_a_plugin_registered_between_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(src, 50)
    p = Pipeline("ids")
    p.add_task("ids", lambda batch: [{"id": r["id"], "twice": r["id"] * 2} for r in batch])
    rec = _Recorder()
    prepared = 0
    with PipelineManager({"store": {"path": str(tmp_path / "r.sqlite")}}, entry_points=False) as pm:
        real = pm._prepare_run

        def counting(*args: Any, **kwargs: Any) -> Any:
            nonlocal prepared
            prepared += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(pm, "_prepare_run", counting)

        def on_batch(stream: Any) -> None:
            if stream.batches == 2:
                pm.register(rec, "mid-stream")

        s = pm.stream(
            p, source=f"jsonl:{src}", sink=f"jsonl:{out}", batch_size=10, on_batch=on_batch
        )
        assert s.status == "completed" and s.batches == 5
    assert prepared == 1
    # the plugin saw the batches after the second one, every task of each
    assert [c[0] for c in rec.calls].count("after_pipeline") == 3
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines == [{"id": i, "twice": 2 * i} for i in range(50)]


def test_flags_sharing_a_lock_are_independent() -> None:
    lock = threading.Lock()
    a, b = Flag(lock), Flag(lock)
    assert not a.is_set() and not b.is_set()
    waited: list[bool] = []
    t = threading.Thread(target=lambda: waited.append(b.wait(10)))
    t.start()
    a.set()
    assert a.is_set() and not b.is_set() and a.wait(0)
    assert b.wait(0.01) is False
    b.set()
    t.join(10)
    assert waited == [True] and not lock.locked()
