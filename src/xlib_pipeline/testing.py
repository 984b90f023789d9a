"""Helpers for testing pipelines, plugins and executors.

- :func:`isolated_manager` builds a manager that ignores installed plugins.
- :class:`RecordingPlugin` records every hook call it receives (thread-safe).
- :class:`ExecutorConformance` is a pytest mixin every executor should pass: subclass it,
  set ``executor`` (and optionally ``config``/``plugins``), and pytest collects its tests.
- :class:`HeldBatchesConformance` is a pytest mixin every run store backend should pass (a
  stream batch's run rows commit only with its checkpoint): subclass it, override
  ``store_section``, and pytest collects its tests.
- :func:`our_threads` and :func:`assert_threads_end`: a plugin's threads (named ``xlib-...``)
  end once the manager that started them is closed.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from ._manager import PipelineManager
from ._records import RunContext, TaskOutcome
from ._task import Pipeline, Task
from .hookspecs import hookimpl

#: How long :func:`assert_threads_end` waits for each thread: generous for a thread told to
#: stop (it ends in milliseconds), and shorter than the run store's lease heartbeat period
#: (10 s), so a thread that only ends at its next timer is caught.
THREAD_JOIN_S = 5.0


def our_threads(threads: Iterable[threading.Thread]) -> set[threading.Thread]:
    """The live threads among ``threads`` named as the library's are (``xlib-...``)."""
    return {t for t in threads if t.name.startswith("xlib-") and t.is_alive()}


def assert_threads_end(threads: Iterable[threading.Thread], what: str) -> None:
    """Join each thread (at most :data:`THREAD_JOIN_S` each); fail naming those still alive.

    ``what`` says what should have ended them, for the message (``"pm.close()"``)."""
    alive = []
    for t in threads:
        t.join(THREAD_JOIN_S)
        if t.is_alive():
            alive.append(t.name)
    assert not alive, f"still alive {THREAD_JOIN_S:.0f} s after {what}: {sorted(alive)}"


def isolated_manager(
    config: Mapping[str, Any] | None = None, *, plugins: Iterable[object] = ()
) -> PipelineManager:
    """A manager with only the core and the given ``plugins`` (installed ones ignored)."""
    return PipelineManager(config, plugins=plugins, entry_points=False)


class RecordingPlugin:
    """A plugin that records ``(hook, details)`` for every observer hook call."""

    name = "recorder"

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def _add(self, hook: str, **details: Any) -> None:
        with self._lock:
            self.calls.append((hook, details))

    def names(self, hook: str) -> list[str]:
        """Task names (or pipeline names) seen by ``hook``, in call order."""
        return [d.get("task", d.get("pipeline", "")) for h, d in self.calls if h == hook]

    @hookimpl
    def before_pipeline(self, run: RunContext) -> None:
        self._add("before_pipeline", pipeline=run.pipeline_name, run_id=run.run_id)

    @hookimpl
    def after_pipeline(self, run: RunContext, result: Any) -> None:
        self._add("after_pipeline", pipeline=run.pipeline_name, status=result.status)

    @hookimpl
    def before_task(self, task: Task, run: RunContext, inputs: tuple[Any, ...]) -> None:
        self._add("before_task", task=task.name, inputs=inputs)

    @hookimpl
    def after_task(self, task: Task, run: RunContext, outcome: TaskOutcome) -> None:
        self._add("after_task", task=task.name, status=outcome.status.value, final=outcome.final)


def _pid(*_: Any) -> int:
    return os.getpid()


class ExecutorConformance:
    """Tests every executor must pass. Subclass with ``executor = "<name>"``."""

    executor: ClassVar[str] = "threads"
    config: ClassVar[Mapping[str, Any]] = {}
    plugins: ClassVar[tuple[object, ...]] = ()
    #: Whether task bodies run in another process than the driver.
    remote: ClassVar[bool] = False

    def make_manager(self) -> PipelineManager:
        """The manager the conformance tests use (override to add setup)."""
        return isolated_manager({"max_workers": 2, **self.config}, plugins=self.plugins)

    def run(self, pipeline: Pipeline) -> Any:
        with self.make_manager() as pm:
            return pm.execute_pipeline(pipeline, executor=self.executor)

    def test_values_flow_in_depends_on_order(self) -> None:
        """Upstream results arrive positionally, in depends_on order."""
        p = Pipeline("conformance_flow")
        p.add_task("a", lambda: 2)
        p.add_task("b", lambda: 5)
        p.add_task("c", lambda x, y: x * 10 + y, depends_on=["a", "b"])
        p.add_task("d", lambda x, y: (x, y), depends_on=["b", "a"])
        result = self.run(p)
        assert result.success, result.error
        assert result.final_result == {"c": 25, "d": (5, 2)}

    def test_closures_run(self) -> None:
        """Closures over local state are executed (sent by value to remote workers)."""
        factor = 7
        p = Pipeline("conformance_closure")
        p.add_task("a", lambda: [1, 2, 3])
        p.add_task("b", lambda xs: [x * factor for x in xs], depends_on=["a"])
        assert self.run(p).final_result == [7, 14, 21]

    def test_failure_keeps_type_and_traceback(self) -> None:
        """A failing task reports its exception type, the task name and a traceback."""

        def explode(_: Any) -> None:
            raise KeyError("missing-column-xyz")

        p = Pipeline("conformance_fail")
        p.add_task("a", lambda: 1)
        p.add_task("boom", explode, depends_on=["a"])
        p.add_task("after", lambda x: x, depends_on=["boom"])
        result = self.run(p)
        assert not result.success
        assert result.error.task == "boom"
        assert isinstance(result.error.cause, KeyError)
        assert "missing-column-xyz" in (result.error.traceback or "")
        assert result.tasks["after"].status == "upstream_failed"
        assert result.tasks["a"].status == "succeeded"

    def test_where_bodies_run(self) -> None:
        """Remote executors run bodies in other processes; local ones in the driver."""
        p = Pipeline("conformance_pid")
        p.add_task("pid", _pid)
        pid = self.run(p).final_result
        assert (pid != os.getpid()) is self.remote


#: What a store's ``write_hook`` saw: each write's statements (SQL, parameters).
Writes = list[list[tuple[str, tuple[Any, ...]]]]


def _rows_of(write: list[tuple[str, tuple[Any, ...]]], run_ids: set[str]) -> bool:
    """Whether ``write`` holds a row of one of the runs ``run_ids``."""
    return any(
        str(sql) != "CALL" and any(p in run_ids for p in params if isinstance(p, str))
        for sql, params in write
    )


def _checkpoints(write: list[tuple[str, tuple[Any, ...]]]) -> bool:
    """Whether ``write`` commits a stream batch's checkpoint."""
    return any("INTO stream_batches" in str(sql) for sql, _ in write)


def _failing(name: str, *, bad_id: int) -> Pipeline:
    """A pipeline whose task ``work`` fails on a batch holding the record ``bad_id``."""
    p = Pipeline(name)

    def work(batch: list[Any]) -> list[Any]:
        if any(r["id"] == bad_id for r in batch):
            raise ValueError("bad record")
        return batch

    p.add_task("work", work)
    return p


class HeldBatchesConformance:
    """Tests every run store backend must pass: a stream batch's run rows (runs row, task
    rows, events) are held apart from the store's queue until its checkpoint commits them,
    as one unit (docs/run-store.md, guarantees (b) and (c); ``xlib_pipeline.store.HeldRuns``):
    no other commit on the store takes them along, and a batch that is never checkpointed
    is still recorded.

    Subclass with ``store_section`` returning the ``store`` config section of an empty
    store of the backend (default: an embedded SQLite file in ``tmp_path``); override
    ``make_manager`` for more setup. The store must have the ``write_hook`` of the core's
    stores (called with each write's statements before it is written), and its SQL must
    name the tables (``INTO runs (``, ``INTO stream_batches``).
    """

    def store_section(self, tmp_path: Path) -> Mapping[str, Any]:
        """The ``store`` section of an empty store for one test."""
        return {"path": str(tmp_path / "runs.sqlite")}

    def make_manager(self, tmp_path: Path) -> PipelineManager:
        """The manager the tests use (installed plugins load, as in production)."""
        return PipelineManager({"store": dict(self.store_section(tmp_path))})

    def test_a_plain_run_flushed_during_a_batch_does_not_commit_the_batchs_first_rows(
        self, tmp_path: Path
    ) -> None:
        """A plain run executed beside a stream on the same manager flushes the store while
        a batch is between its run rows and its checkpoint: a store that queues the batch's
        rows as they are recorded commits its runs row and first events with that flush,
        before the checkpoint; no write may hold a batch's rows without its checkpoint."""
        plain = Pipeline("plain")
        plain.add_task("one", lambda: 1)
        p = Pipeline("held")
        side: list[Any] = []

        def work(batch: list[Any]) -> list[Any]:
            # Another thread's plain run, while this batch's rows are recorded (not committed).
            t = threading.Thread(target=lambda: side.append(pm.execute_pipeline(plain)))
            t.start()
            t.join()
            return [dict(r, seen=True) for r in batch]

        p.add_task("work", work)
        src = tmp_path / "in.jsonl"
        src.write_text("".join(json.dumps({"id": i}) + "\n" for i in range(6)))
        seen: Writes = []
        with self.make_manager(tmp_path) as pm:
            store: Any = pm.store
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
            batch_ids = {r.run_id for r in runs}
            mine = [w for w in seen if _rows_of(w, batch_ids)]
            assert mine
            for w in mine:  # a batch's rows are only ever written with a checkpoint
                assert _checkpoints(w), w
            assert store.take_held(tuple(batch_ids)) == []  # nothing left held

    def test_a_failed_batch_is_recorded_though_never_checkpointed(self, tmp_path: Path) -> None:
        """The failed batch's run is held (no checkpoint will take it): it is released to
        the queue and committed as a failed run, as a plain run's."""
        p = _failing("breaks", bad_id=4)
        src = tmp_path / "in.jsonl"
        src.write_text("".join(json.dumps({"id": i}) + "\n" for i in range(6)))
        with self.make_manager(tmp_path) as pm:
            s = pm.stream(p, source=f"jsonl:{src}", sink=None, batch_size=3, from_start=True)
            assert s.status == "failed" and s.batches == 1
            store: Any = pm.store
            assert store is not None
            store.flush()  # the failed run's rows are queued, not held
            runs = store.list_runs(pipeline=s.batch_pipeline.name)
            assert sorted(r.status for r in runs) == ["failed", "succeeded"]
            assert store.take_held(tuple(r.run_id for r in runs)) == []
            failed = next(r for r in runs if r.status == "failed")
            assert store.get_tasks(failed.run_id)["work"].status == "failed"

    def test_a_quarantined_batchs_runs_commit_with_its_checkpoint(self, tmp_path: Path) -> None:
        """With a dead-letter sink, a failed batch runs again record by record: every one of
        its runs is committed in its checkpoint's write, and in no other."""
        p = _failing("quarantine", bad_id=1)
        dead: list[Any] = []
        out: list[Any] = []
        seen: Writes = []
        with self.make_manager(tmp_path) as pm:
            store: Any = pm.store
            assert store is not None
            store.write_hook = lambda batch: seen.append(list(batch))
            s = pm.stream(p, source=[{"id": i} for i in range(3)], sink=out.extend,
                          dead_letter=dead.extend, batch_size=3)  # fmt: skip
            store.write_hook = None
            assert s.status == "completed", s.error
            assert [d["record"]["id"] for d in dead] == [1] and len(out) == 2
            runs = store.list_runs(pipeline=s.batch_pipeline.name)
            assert len(runs) == 4  # the batch's, then one per record
            ids = {r.run_id for r in runs}
            assert store.take_held(tuple(ids)) == []
        (w,) = [w for w in seen if _checkpoints(w)]
        assert {params[0] for sql, params in w if "INTO runs (" in str(sql)} == ids
        assert [x for x in seen if x is not w and _rows_of(x, ids)] == []
