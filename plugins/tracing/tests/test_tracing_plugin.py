"""The tracing plugin with the OpenTelemetry SDK's in-memory exporter."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from xlib_pipeline_tracing import TracingPlugin

from xlib_pipeline import ConfigError, Pipeline, PipelineManager, RetryDecision, hookimpl

_EXPORTER = InMemorySpanExporter()
_PROVIDER = TracerProvider()
_PROVIDER.add_span_processor(SimpleSpanProcessor(_EXPORTER))
trace.set_tracer_provider(_PROVIDER)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    if trace.get_tracer_provider() is not _PROVIDER:
        pytest.skip("another test set the global tracer provider first")
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


class RetryOnce:
    name = "retry_once"

    @hookimpl
    def on_task_error(self, task: Any, run: Any, outcome: Any) -> RetryDecision | None:
        return RetryDecision(retry=True) if outcome.attempt == 1 else None


def make(config: Any, *extra: object) -> PipelineManager:
    return PipelineManager(
        {"tracing": config} if config is not None else {},
        plugins=[TracingPlugin(), RetryOnce(), *extra],
        entry_points=False,
    )


def user_span() -> dict[str, Any]:
    """A task body: open a span as user code would; report its parent."""
    tracer = trace.get_tracer("user-code")
    with tracer.start_as_current_span("user work") as span:
        parent = getattr(span, "parent", None)
        ctx = trace.get_current_span().get_span_context()
        return {
            "pid": os.getpid(),
            "trace_id": ctx.trace_id,
            "parent_span_id": parent.span_id if parent is not None else None,
        }


def worker_user_span() -> dict[str, Any]:
    """In a worker process: the SDK is set up there too; a user span nests under the task."""
    from opentelemetry.sdk.trace import TracerProvider as Provider

    tracer = Provider().get_tracer("user-code")
    with tracer.start_as_current_span("user work") as span:
        parent = span.parent
        return {
            "pid": os.getpid(),
            "trace_id": span.get_span_context().trace_id,
            "parent_span_id": parent.span_id if parent is not None else None,
        }


def by_name(exporter: InMemorySpanExporter) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for s in exporter.get_finished_spans():
        out.setdefault(s.name, []).append(s)
    return out


class TestSpans:
    @pytest.mark.parametrize("config", [True, {"propagate": False}])
    def test_run_span_with_one_child_per_attempt(self, spans: Any, config: Any) -> None:
        p = Pipeline("nightly")
        calls = {"n": 0}

        @p.task("extract")
        def extract() -> int:
            return 1

        @p.task("load", depends_on=["extract"])
        def load(x: int) -> int:
            calls["n"] += 1
            if calls["n"] == 1:
                raise ValueError("first attempt fails")
            return x

        with make(config) as pm:
            result = pm.execute_pipeline(p, tenant_id="acme")
        assert result.success
        got = by_name(spans)
        [run] = got["pipeline nightly"]
        assert run.parent is None
        assert run.attributes["xlib.pipeline"] == "nightly"
        assert run.attributes["xlib.run_id"] == result.run_id
        assert run.attributes["xlib.tenant"] == "acme"
        assert run.attributes["xlib.status"] == "succeeded"
        assert run.status.status_code is not StatusCode.ERROR
        [ex] = got["task extract"]
        loads = sorted(got["task load"], key=lambda s: s.attributes["xlib.attempt"])
        assert [s.attributes["xlib.attempt"] for s in loads] == [1, 2]
        for s in (ex, *loads):
            assert s.parent is not None and s.parent.span_id == run.context.span_id
            assert s.context.trace_id == run.context.trace_id
            assert s.attributes["xlib.pipeline"] == "nightly"
            assert s.attributes["xlib.tenant"] == "acme"
        assert loads[0].attributes["xlib.status"] == "retrying"
        assert loads[0].status.status_code is StatusCode.ERROR
        assert loads[0].attributes["error.type"] == "ValueError"
        [event] = loads[0].events
        assert event.name == "exception"
        assert dict(event.attributes) == {
            "exception.type": "ValueError",
            "exception.message": "first attempt fails",
        }
        assert loads[1].attributes["xlib.status"] == "succeeded"
        assert loads[1].status.status_code is StatusCode.UNSET

    @pytest.mark.parametrize("config", [True, {"propagate": False}])
    def test_task_spans_cover_the_attempt_inside_the_run_span(
        self, spans: Any, config: Any
    ) -> None:
        import asyncio
        import time

        p = Pipeline("timed")

        @p.task("sync")
        def sync() -> int:
            time.sleep(0.02)
            return 1

        @p.task("coro", depends_on=["sync"])
        async def coro(x: int) -> int:  # async bodies: no task scope, span recorded at end
            await asyncio.sleep(0.02)
            return x

        with make(config) as pm:
            hooks = pm.hooks
            result = pm.execute_pipeline(p)
        assert result.success, result.error
        # propagate off: after_task is the only per-task hook tracing adds
        assert not hooks.has["before_task"]
        assert hooks.has["task_scope"] is (config is True)
        got = by_name(spans)
        [run] = got["pipeline timed"]
        for name in ("sync", "coro"):
            [span] = got[f"task {name}"]
            assert span.parent is not None and span.parent.span_id == run.context.span_id
            assert span.attributes["xlib.attempt"] == 1
            assert span.attributes["xlib.status"] == "succeeded"
            assert run.start_time <= span.start_time < span.end_time <= run.end_time
            assert span.end_time - span.start_time >= 15_000_000  # the body's sleep
        assert got["task sync"][0].end_time <= got["task coro"][0].start_time

    def test_failed_run_is_error_with_class_and_message(self, spans: Any) -> None:
        p = Pipeline("broken")

        @p.task("a")
        def a() -> int:
            raise KeyError("missing column")

        with make({"record_errors": True}) as pm:
            assert not pm.execute_pipeline(p).success
        got = by_name(spans)
        [run] = got["pipeline broken"]
        assert run.status.status_code is StatusCode.ERROR
        assert run.status.description == "KeyError: 'missing column'"
        assert run.attributes["error.type"] == "KeyError"
        assert len(got["task a"]) == 2
        for s in got["task a"]:
            assert s.status.status_code is StatusCode.ERROR
            assert all("exception.stacktrace" not in e.attributes for e in s.events)

    def test_record_errors_false_keeps_only_the_class(self, spans: Any) -> None:
        p = Pipeline("quiet")

        @p.task("a")
        def a() -> int:
            raise RuntimeError("account 12345 overdrawn")

        with make({"record_errors": False}) as pm:
            pm.execute_pipeline(p)
        for s in spans.get_finished_spans():
            assert "12345" not in str(s.status.description)
            assert not s.events
            assert s.attributes["error.type"] == "RuntimeError"

    def test_pii_is_redacted_from_spans(self, spans: Any) -> None:
        if importlib.util.find_spec("xlib_pipeline_classification") is None:
            pytest.skip("needs xlib-pipeline-classification")
        from xlib_pipeline_classification import ClassificationPlugin

        p = Pipeline("pii")

        @p.task("a")
        def a() -> int:
            raise ValueError("no account for jane.doe@example.com")

        pm = PipelineManager(
            {"tracing": True, "classification": {"detect_pii": True}},
            plugins=[TracingPlugin(), ClassificationPlugin()],
            entry_points=False,
        )
        with pm:
            pm.execute_pipeline(p)
        for s in spans.get_finished_spans():
            assert "jane.doe" not in str(s.status.description)
            for e in s.events:
                assert "jane.doe" not in str(dict(e.attributes))
        [task] = by_name(spans)["task a"]
        assert task.events[0].attributes["exception.message"] == (
            "[redacted: confidential text with PII (email)]"
        )

    def test_skipped_tasks_have_no_span(self, spans: Any) -> None:
        p = Pipeline("cond")

        @p.task("a")
        def a() -> int:
            raise ValueError("x")

        @p.task("b", depends_on=["a"])
        def b(x: int) -> int:
            return x

        with make({"propagate": False}) as pm:
            pm.execute_pipeline(p)
        assert "task b" not in by_name(spans)

    def test_unconfigured_is_inactive(self, spans: Any) -> None:
        p = Pipeline("off")
        p.add_task("a", lambda: 1)
        with make(None) as pm:
            assert not pm.has_plugin("tracing.runs")
            assert not pm.hooks.has["before_task"]
            pm.execute_pipeline(p)
        assert spans.get_finished_spans() == ()

    @pytest.mark.parametrize(
        ("section", "message"),
        [({"record_errors": "yes"}, "must be true or false"), ({"propagat": True}, "did you mean")],
    )
    def test_bad_config(self, section: Any, message: str) -> None:
        with pytest.raises(ConfigError, match="tracing") as info:
            make(section)
        assert message in str(info.value)


class TestPropagation:
    def _check(self, spans: Any, result: Any, out: dict[str, Any], task: str) -> None:
        [span] = by_name(spans)[f"task {task}"]
        assert out["trace_id"] == span.context.trace_id
        assert out["parent_span_id"] == span.context.span_id

    def test_user_spans_nest_under_the_task_span_in_threads(self, spans: Any) -> None:
        p = Pipeline("threads")
        p.add_task("work", user_span)
        p.add_task("slow", user_span, timeout=30)  # runs on a helper thread
        with make(True) as pm:
            result = pm.execute_pipeline(p)
        assert result.success
        self._check(spans, result, result.tasks["work"].output, "work")
        self._check(spans, result, result.tasks["slow"].output, "slow")
        [user] = [
            s
            for s in by_name(spans)["user work"]
            if s.context.span_id != 0
            and s.parent.span_id == by_name(spans)["task work"][0].context.span_id
        ]
        assert user.context.trace_id == by_name(spans)["pipeline threads"][0].context.trace_id

    @pytest.mark.slow
    def test_context_reaches_worker_processes(self, spans: Any) -> None:
        p = Pipeline("procs")
        p.add_task("work", worker_user_span)
        with make(True) as pm:
            result = pm.execute_pipeline(p, executor="processes")
        assert result.success, result.error
        out = result.tasks["work"].output
        assert out["pid"] != os.getpid()
        self._check(spans, result, out, "work")

    @pytest.mark.slow
    def test_context_reaches_dask_workers(self, spans: Any) -> None:
        distributed = pytest.importorskip("distributed")
        if importlib.util.find_spec("xlib_pipeline_dask") is None:
            pytest.skip("needs xlib-pipeline-dask")
        from xlib_pipeline_dask import DaskPlugin

        with distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster:
            p = Pipeline("dask")
            p.add_task("work", worker_user_span)
            pm = PipelineManager(
                {"tracing": True, "distributed": {"address": cluster.scheduler_address}},
                plugins=[TracingPlugin(), DaskPlugin()],
                entry_points=False,
            )
            with pm:
                result = pm.execute_pipeline(p, distributed=True)
        assert result.success, result.error
        out = result.tasks["work"].output
        assert out["pid"] != os.getpid()
        self._check(spans, result, out, "work")


class TestWithoutSdk:
    def test_no_sdk_means_no_per_task_hooks_and_no_spans(self, monkeypatch: Any) -> None:
        """The API's default (proxy, no SDK) provider: tracing costs nothing per task."""
        monkeypatch.setattr(trace, "get_tracer_provider", lambda: trace.ProxyTracerProvider())
        p = Pipeline("nosdk")
        p.add_task("a", lambda: 1)
        with make(True) as pm:
            assert pm.has_plugin("tracing.runs")
            assert not pm.hooks.has["before_task"]
            assert not pm.hooks.has["after_task"]
            assert not pm.hooks.has["task_scope"]
            assert pm.execute_pipeline(p).success
            assert not pm.hooks.has["before_task"]
        _EXPORTER.clear()

    def test_sdk_set_up_after_the_manager_traces_the_next_run(
        self, spans: Any, monkeypatch: Any
    ) -> None:
        real = trace.get_tracer_provider
        monkeypatch.setattr(trace, "get_tracer_provider", lambda: trace.ProxyTracerProvider())
        pm = make(True)
        assert not pm.hooks.has["before_task"]
        monkeypatch.setattr(trace, "get_tracer_provider", real)
        p = Pipeline("late")
        p.add_task("a", lambda: 1)
        with pm:
            assert pm.execute_pipeline(p).success
            assert pm.hooks.has["after_task"] and pm.hooks.has["task_scope"]
        assert sorted(by_name(spans)) == ["pipeline late", "task a"]
