"""The progress API: ``execute_pipeline(on_event=...)``, ``iter_events`` and the monitor as
one consumer of the same events; live runs, task scopes, compliance events and
``after_pipeline`` seen by every plugin."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import cloudpickle
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xlib_pipeline import (
    EVENT_KINDS,
    ComplianceError,
    ComplianceEvent,
    Pipeline,
    PipelineManager,
    ProgressEvent,
    RetryDecision,
    hookimpl,
)
from xlib_pipeline._monitor import Monitor


class RetryOnce:
    name = "retry_once"

    @hookimpl
    def on_task_error(self, task: Any, run: Any, outcome: Any) -> RetryDecision | None:
        return RetryDecision(retry=True) if outcome.attempt == 1 else None


def pipeline() -> Pipeline:
    p = Pipeline("progress")
    calls = {"n": 0}

    @p.task("a")
    def a() -> int:
        return 1

    @p.task("b", depends_on=["a"])
    def b(x: int) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("flaky")
        return x + 1

    @p.task("c", depends_on=["a"])
    def c(x: int) -> int:
        raise RuntimeError("broken")

    @p.task("d", depends_on=["c"])
    def d(x: int) -> int:
        return x

    return p


def manager() -> PipelineManager:
    return PipelineManager(plugins=[RetryOnce()], entry_points=False)


class TestCallback:
    @pytest.mark.parametrize("parallel", [False, True])
    def test_events_in_order(self, parallel: bool) -> None:
        events: list[ProgressEvent] = []
        lock = threading.Lock()

        def on_event(e: ProgressEvent) -> None:
            with lock:
                events.append(e)

        with manager() as pm:
            result = pm.execute_pipeline(pipeline(), on_event=on_event, parallel=parallel)
        assert events[0].kind == "run_started" and events[0].total == 4
        assert events[-1].kind == "run_finished"
        assert events[-1].result is result and events[-1].status == "failed"
        assert events[-1].error is not None and "RuntimeError: broken" in events[-1].error
        assert {e.run_id for e in events} == {result.run_id}
        assert {e.pipeline for e in events} == {"progress"}
        per_task: dict[str, list[tuple[str, int]]] = {}
        for e in events[1:-1]:
            assert e.task is not None
            per_task.setdefault(e.task, []).append((e.kind, e.attempt))
        assert per_task["a"] == [("task_started", 1), ("task_finished", 1)]
        assert per_task["b"] == [
            ("task_started", 1),
            ("task_retrying", 1),
            ("task_started", 2),
            ("task_finished", 2),
        ]
        assert per_task["c"] == [
            ("task_started", 1),
            ("task_retrying", 1),
            ("task_started", 2),
            ("task_finished", 2),
        ]
        assert per_task["d"] == [("task_finished", 0)]  # never ran
        finished = {e.task: e for e in events if e.kind == "task_finished"}
        assert finished["a"].status == "succeeded" and finished["a"].duration is not None
        assert finished["c"].status == "failed" and finished["c"].error == "RuntimeError: broken"
        assert finished["d"].status == "upstream_failed" and finished["d"].duration is None
        retry = next(e for e in events if e.kind == "task_retrying" and e.task == "b")
        assert retry.error == "ValueError: flaky"
        assert {e.kind for e in events} == set(EVENT_KINDS)

    def test_a_raising_callback_never_fails_the_run(self, caplog: Any) -> None:
        calls: list[str] = []

        def bad(e: ProgressEvent) -> None:
            calls.append(e.kind)
            raise RuntimeError("display crashed")

        with manager() as pm:
            p = Pipeline("ok")
            p.add_task("a", lambda: 1)
            result = pm.execute_pipeline(p, on_event=bad)
        assert result.success
        assert calls == ["run_started"], "left out after its first failure"
        assert "progress callback" in caplog.text and "display crashed" in caplog.text

    def test_not_callable_is_refused(self) -> None:
        p = Pipeline("x")
        p.add_task("a", lambda: 1)
        with manager() as pm, pytest.raises(TypeError, match="on_event"):
            pm.execute_pipeline(p, on_event="print")  # type: ignore[arg-type]

    @settings(max_examples=25, deadline=None)
    @given(st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=12))
    def test_every_task_finishes_exactly_once(self, parents: list[int]) -> None:
        """Model: each task has one finished event; started events precede it."""
        p = Pipeline("model")
        for k, par in enumerate(parents):
            deps = [f"t{par % k}"] if k else []
            p.add_task(f"t{k}", (lambda *xs: sum(xs) + 1), depends_on=deps)
        events: list[ProgressEvent] = []
        lock = threading.Lock()

        def on_event(e: ProgressEvent) -> None:
            with lock:
                events.append(e)

        with manager() as pm:
            pm.execute_pipeline(p, on_event=on_event)
        for k in range(len(parents)):
            mine = [e.kind for e in events if e.task == f"t{k}"]
            assert mine == ["task_started", "task_finished"]


class TestIterator:
    def test_yields_the_same_events_and_ends_with_the_result(self) -> None:
        with manager() as pm:
            events = list(pm.iter_events(pipeline(), parallel=False))
        assert events[0].kind == "run_started"
        assert events[-1].kind == "run_finished"
        result = events[-1].result
        assert result is not None and result.status == "failed"
        assert sum(e.kind == "task_finished" for e in events) == 4

    def test_a_refusal_is_raised_from_the_iterator(self) -> None:
        class Refuse:
            name = "refuse"

            @hookimpl
            def validate_pipeline(self, pipeline: Any, run: Any) -> None:
                raise ComplianceError("not today")

        p = Pipeline("x")
        p.add_task("a", lambda: 1)
        pm = PipelineManager(plugins=[Refuse()], entry_points=False)
        with pm, pytest.raises(ComplianceError, match="not today"):
            list(pm.iter_events(p))

    def test_leaving_the_loop_cancels_the_run(self) -> None:
        gate = threading.Event()
        ran: list[str] = []
        p = Pipeline("long")

        @p.task("first")
        def first() -> int:
            return 1

        @p.task("second", depends_on=["first"])
        def second(x: int) -> int:
            gate.wait(10)
            ran.append("second")
            return x

        @p.task("third", depends_on=["second"])
        def third(x: int) -> int:
            ran.append("third")
            return x

        seen: list[str] = []
        with PipelineManager({"cancel_grace_seconds": 5}, entry_points=False) as pm:
            events = pm.iter_events(p)
            for e in events:
                seen.append(e.kind)
                if e.kind == "task_started" and e.task == "second":
                    threading.Timer(0.2, gate.set).start()
                    break
            events.close()  # type: ignore[attr-defined]
            assert pm._live == {}, "close() returned once the run ended"
        assert "run_finished" not in seen
        assert ran == ["second"], "the running task finished in its grace; nothing new started"

    def test_on_event_is_not_accepted(self) -> None:
        p = Pipeline("x")
        p.add_task("a", lambda: 1)
        with manager() as pm, pytest.raises(TypeError, match="iter_events"):
            pm.iter_events(p, on_event=print)


class TestMonitorIsAConsumer:
    def test_monitor_renders_from_events(self) -> None:
        buf = io.StringIO()
        with manager() as pm:
            p = pipeline()
            mon = Monitor(pm.validate_pipeline(p), buf)
            result = pm.execute_pipeline(p, on_event=mon, parallel=False)
        lines = buf.getvalue().splitlines()
        assert lines[0] == f"[progress] run {result.run_id}: 4 tasks"
        assert "  retrying  b (attempt 1 failed: ValueError: flaky; retrying now)" in lines
        assert any(line.startswith("  failed    c in ") for line in lines)
        assert "  upstream_failed d" in lines
        assert any(line.startswith("[progress] failed in ") for line in lines)

    def test_monitor_true_prints_the_summary(self, capsys: Any) -> None:
        with manager() as pm:
            p = Pipeline("mon")
            p.add_task("a", lambda: time.sleep(0.01) or 1)
            pm.execute_pipeline(p, monitor=True)
        err = capsys.readouterr().err
        assert "[mon] succeeded in" in err and "critical path" in err


class TestComplianceEvents:
    def test_refused_run_is_a_compliance_event(self) -> None:
        seen: list[ComplianceEvent] = []

        class Listener:
            name = "listener"

            @hookimpl
            def on_compliance_event(self, event: ComplianceEvent) -> None:
                seen.append(event)

        class Refuse:
            name = "refuse"

            @hookimpl
            def validate_pipeline(self, pipeline: Any, run: Any) -> None:
                raise ComplianceError("not today")

        p = Pipeline("x")
        p.add_task("a", lambda: 1)
        pm = PipelineManager(plugins=[Listener(), Refuse()], entry_points=False)
        with pm, pytest.raises(ComplianceError):
            pm.execute_pipeline(p, tenant_id="acme")
        [event] = seen
        assert (event.kind, event.pipeline, event.tenant, event.plugin, event.detail) == (
            "run_refused",
            "x",
            "acme",
            "refuse",
            "ComplianceError",
        )


class TestAfterPipelineAlwaysSeen:
    def test_every_after_pipeline_runs_after_one_raised(self) -> None:
        seen: list[str] = []

        class Breaks:
            name = "breaks"

            @hookimpl(tryfirst=True)
            def after_pipeline(self, run: Any, result: Any) -> None:
                raise ComplianceError("trail broken")

        class Counts:
            name = "counts"

            @hookimpl
            def after_pipeline(self, run: Any, result: Any) -> None:
                seen.append(result.status)

        p = Pipeline("x")
        p.add_task("a", lambda: 1)
        with PipelineManager(plugins=[Counts(), Breaks()], entry_points=False) as pm:
            result = pm.execute_pipeline(p)
        assert seen == ["succeeded"]
        assert result.status == "failed"
        assert isinstance(result.error, ComplianceError)
        assert result.error.plugin == "breaks"  # type: ignore[attr-defined]


class TestLiveRuns:
    def test_a_run_is_listed_with_its_running_tasks_until_after_pipeline(self) -> None:
        gate = threading.Event()
        inside = threading.Event()
        seen_at_end: list[int] = []

        class Peek:
            name = "peek"

            @hookimpl
            def after_pipeline(self, run: Any, result: Any) -> None:
                seen_at_end.append(len(run.manager.live_runs()))

        p = Pipeline("live")

        @p.task("slow")
        def slow() -> int:
            inside.set()
            gate.wait(10)
            return 1

        p.add_task("next", lambda x: x + 1, depends_on=["slow"])
        with PipelineManager(plugins=[Peek()], entry_points=False) as pm:
            out: list[Any] = []
            t = threading.Thread(target=lambda: out.append(pm.execute_pipeline(p)))
            t.start()
            assert inside.wait(10)
            [live] = pm.live_runs()
            assert live.run.pipeline_name == "live" and live.total == 2
            assert live.running() == 1
            snap = live.snapshot()
            assert snap["slow"].status.value == "pending" and snap["slow"].started is not None
            assert snap["next"].started is None
            gate.set()
            t.join(10)
            assert out[0].success
            assert pm.live_runs() == ()
        assert seen_at_end == [1]


@contextlib.contextmanager
def _env_scope(value: str) -> Iterator[None]:
    old = os.environ.get("XLIB_TEST_SCOPE")
    os.environ["XLIB_TEST_SCOPE"] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("XLIB_TEST_SCOPE", None)
        else:
            os.environ["XLIB_TEST_SCOPE"] = old


def _read_scope() -> str | None:
    return os.environ.get("XLIB_TEST_SCOPE")


class TestTaskScopes:
    @pytest.mark.parametrize("executor", ["inline", "threads", "processes"])
    def test_the_body_runs_inside_every_scope_wherever_it_runs(self, executor: str) -> None:
        import functools

        cloudpickle.register_pickle_by_value(sys.modules[__name__])

        class Scope:
            name = "scope"

            @hookimpl
            def task_scope(self, task: Any, run: Any) -> Any:
                return functools.partial(_env_scope, f"{run.run_id}/{task.name}")

        p = Pipeline("scoped")
        p.add_task("a", _read_scope)
        with PipelineManager(plugins=[Scope()], entry_points=False) as pm:
            result = pm.execute_pipeline(p, executor=executor, run_id=None)
        assert result.success, result.error
        assert result.final_result == f"{result.run_id}/a"
        assert _read_scope() is None  # left after the body

    def test_a_failing_scope_hook_fails_the_task_naming_the_plugin(self) -> None:
        class Broken:
            name = "broken_scope"

            @hookimpl
            def task_scope(self, task: Any, run: Any) -> Any:
                raise RuntimeError("no context today")

        p = Pipeline("scoped")
        p.add_task("a", lambda: 1)
        with PipelineManager(plugins=[Broken()], entry_points=False) as pm:
            result = pm.execute_pipeline(p)
        assert not result.success
        assert "broken_scope" in str(result.error) and "task_scope" in str(result.error)
