"""Fallback strategies: ``@p.task(..., fallback=...)`` with a value, a callable or a task."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from xlib_pipeline import (
    DefinitionError,
    FallbackError,
    FallbackValue,
    Pipeline,
    PipelineManager,
    SecurityError,
    Status,
)


def scoring(fallback: Any) -> Pipeline:
    p = Pipeline("scoring")

    @p.task("load")
    def load() -> int:
        return 3

    @p.task("score", depends_on=["load"], fallback=fallback)
    def score(x: int) -> int:
        raise ValueError(f"model unavailable for {x}")

    @p.task("report", depends_on=["score"])
    def report(s: Any) -> str:
        return f"score={s}"

    return p


@pytest.mark.parametrize("parallel", [False, True])
def test_value_fallback_feeds_dependents(manager: PipelineManager, parallel: bool) -> None:
    r = manager.execute_pipeline(scoring(0.5), parallel=parallel)
    assert r.success and r.status == "succeeded"
    assert r.final_result == "score=0.5"
    assert r.fallbacks == ["score"]
    t = r.tasks["score"]
    assert t.status is Status.FALLBACK and t.output == 0.5 and not t.succeeded
    assert isinstance(t.error, ValueError) and "model unavailable" in str(t.error)
    assert r.tasks["report"].status is Status.SUCCEEDED


def test_string_value_needs_fallback_value(manager: PipelineManager) -> None:
    r = manager.execute_pipeline(scoring(FallbackValue("unknown")))
    assert r.final_result == "score=unknown"
    r = manager.execute_pipeline(scoring(FallbackValue(None)))
    assert r.final_result == "score=None"
    with pytest.raises(DefinitionError) as info:
        manager.execute_pipeline(scoring("unknown"))
    msg = str(info.value)
    assert "'score'" in msg and "names no task" in msg and "FallbackValue('unknown')" in msg


def test_callable_gets_exception_and_inputs(manager: PipelineManager) -> None:
    seen: list[Any] = []

    def with_inputs(exc: BaseException, x: int) -> int:
        seen.append((type(exc).__name__, x))
        return -x

    assert manager.execute_pipeline(scoring(with_inputs)).final_result == "score=-3"
    assert seen == [("ValueError", 3)]
    only_exc = manager.execute_pipeline(scoring(lambda exc: type(exc).__name__))
    assert only_exc.final_result == "score=ValueError"
    with pytest.raises(DefinitionError, match=r"'score'.*must accept the exception"):
        manager.execute_pipeline(scoring(lambda: 1))


def test_callable_that_raises_fails_the_task(manager: PipelineManager) -> None:
    def broken(exc: BaseException) -> Any:
        raise KeyError("no default either")

    r = manager.execute_pipeline(scoring(broken))
    assert not r.success and r.fallbacks == []
    err = r.tasks["score"].error
    assert isinstance(err, FallbackError) and err.task == "score"
    assert isinstance(err.original, ValueError) and isinstance(err.cause, KeyError)
    assert "model unavailable" in str(err) and "no default either" in str(err)
    assert r.tasks["report"].status is Status.UPSTREAM_FAILED


def task_fallback(primary_fails: bool, alt_fails: bool = False) -> tuple[Pipeline, list[str]]:
    calls: list[str] = []
    p = Pipeline("tf")

    @p.task("a")
    def a() -> int:
        return 1

    @p.task("model", depends_on=["a"], fallback="heuristic")
    def model(x: int) -> int:
        calls.append("model")
        if primary_fails:
            raise RuntimeError("model down")
        return x + 1

    @p.task("heuristic", depends_on=["a"])
    def heuristic(x: int) -> int:
        calls.append("heuristic")
        if alt_fails:
            raise RuntimeError("heuristic down too")
        return x + 100

    @p.task("use", depends_on=["model"])
    def use(v: int) -> int:
        return v * 2

    return p, calls


@pytest.mark.parametrize("parallel", [False, True])
def test_task_fallback_runs_only_when_needed(manager: PipelineManager, parallel: bool) -> None:
    p, calls = task_fallback(primary_fails=False)
    r = manager.execute_pipeline(p, parallel=parallel)
    assert r.success and r.final_result == 4  # the fallback task is not a sink
    assert calls == ["model"]
    assert r.tasks["heuristic"].status is Status.SKIPPED and r.fallbacks == []

    p, calls = task_fallback(primary_fails=True)
    r = manager.execute_pipeline(p, parallel=parallel)
    assert r.success and r.final_result == 202
    assert calls == ["model", "heuristic"]
    assert r.tasks["model"].status is Status.FALLBACK and r.tasks["model"].output == 101
    assert r.tasks["heuristic"].status is Status.SUCCEEDED
    assert r.fallbacks == ["model"]


def test_failing_fallback_task_fails_the_task(manager: PipelineManager) -> None:
    p, _ = task_fallback(primary_fails=True, alt_fails=True)
    r = manager.execute_pipeline(p)
    assert not r.success
    err = r.tasks["model"].error
    assert isinstance(err, FallbackError) and "heuristic down too" in str(err)
    assert r.tasks["heuristic"].status is Status.FAILED
    assert r.tasks["use"].status is Status.UPSTREAM_FAILED


def test_fallback_task_definition_errors(manager: PipelineManager) -> None:
    p = Pipeline("bad")

    @p.task("a", fallback="heuristc")
    def a() -> int:
        return 1

    @p.task("heuristic")
    def heuristic() -> int:
        return 2

    with pytest.raises(DefinitionError, match="did you mean 'heuristic'"):
        manager.execute_pipeline(p)

    q = Pipeline("bad2")
    q.add_task("a", lambda: 1, fallback="b")
    q.add_task("b", lambda: 2)
    q.add_task("c", lambda v: v, depends_on=["b"])
    with pytest.raises(DefinitionError, match="fallback task 'b' has dependents"):
        manager.execute_pipeline(q)

    r = Pipeline("bad3")
    r.add_task("a", lambda: 1, fallback="b")
    r.add_task("b", lambda v: v, depends_on=["a"])
    with pytest.raises(DefinitionError, match="depends on 'a'"):
        manager.execute_pipeline(r)


def test_fallback_after_retries_with_attempts_recorded() -> None:
    pytest.importorskip("xlib_pipeline_retries", reason="needs xlib-pipeline-retries")
    calls = []
    p = Pipeline("retried")

    @p.task("flaky", retries={"max_attempts": 3, "initial_delay": 0}, fallback=-1)
    def flaky() -> int:
        calls.append(1)
        raise ConnectionError("down")

    with PipelineManager() as pm:
        r = pm.execute_pipeline(p)
    assert len(calls) == 3 and r.success
    assert r.tasks["flaky"].status is Status.FALLBACK and r.tasks["flaky"].attempts == 3


def test_async_task_falls_back(manager: PipelineManager) -> None:
    p = Pipeline("async-fb")

    @p.task("fetch", fallback=lambda exc: "cached copy")
    async def fetch() -> str:
        await asyncio.sleep(0)
        raise TimeoutError("slow upstream")

    for parallel in (False, True):
        r = manager.execute_pipeline(p, parallel=parallel)
        assert r.success and r.final_result == "cached copy" and r.fallbacks == ["fetch"]


def test_security_refusals_are_never_replaced(manager: PipelineManager) -> None:
    p = Pipeline("sec")

    @p.task("guarded", fallback=0)
    def guarded() -> int:
        raise SecurityError("not allowed")

    r = manager.execute_pipeline(p)
    assert not r.success and r.tasks["guarded"].status is Status.FAILED


def two_branches() -> Pipeline:
    p = Pipeline("branches")
    p.add_task("with_fb", lambda: 1 / 0, fallback=0)
    p.add_task("after_fb", lambda v: v, depends_on=["with_fb"])
    p.add_task("plain", lambda: 1 / 0)
    p.add_task("after_plain", lambda v: v, depends_on=["plain"])
    p.add_task("other", lambda: 5)
    return p


def test_on_failure_modes() -> None:
    # continue: the fallback branch goes on, the run fails because 'plain' failed.
    with PipelineManager(entry_points=False, config={"parallel_execution": False}) as pm:
        r = pm.execute_pipeline(two_branches())
    assert not r.success and r.tasks["after_fb"].status is Status.SUCCEEDED
    assert r.tasks["other"].status is Status.SUCCEEDED

    # fallback_only: the failure without a fallback stops the run; the absorbed one did not.
    cfg = {"parallel_execution": False, "on_failure": "fallback_only"}
    with PipelineManager(cfg, entry_points=False) as pm:
        r = pm.execute_pipeline(two_branches())
    assert not r.success and r.failed_task == "plain"
    assert r.tasks["after_fb"].status is Status.SUCCEEDED
    assert r.tasks["other"].status is Status.CANCELLED

    # stop: even a failure a fallback absorbed stops new work.
    with PipelineManager(
        {"parallel_execution": False, "on_failure": "stop"}, entry_points=False
    ) as pm:
        r = pm.execute_pipeline(two_branches())
    assert r.tasks["with_fb"].status is Status.FALLBACK
    assert r.tasks["after_fb"].status is Status.CANCELLED


def test_fallback_only_without_fallbacks_stops_like_stop() -> None:
    p = Pipeline("nofb")
    p.add_task("plain", lambda: 1 / 0)
    p.add_task("other", lambda: 5)
    cfg = {"parallel_execution": False, "on_failure": "fallback_only"}
    with PipelineManager(cfg, entry_points=False) as pm:
        r = pm.execute_pipeline(p)
    assert r.tasks["other"].status is Status.CANCELLED


def test_store_audit_and_lineage_record_fallback(tmp_path: Path) -> None:
    audit = pytest.importorskip("xlib_pipeline_audit", reason="needs xlib-pipeline-audit")
    pytest.importorskip("xlib_pipeline_lineage", reason="needs xlib-pipeline-lineage")
    config = {
        "store": {"path": str(tmp_path / "runs.sqlite")},
        "audit": {"path": str(tmp_path / "audit.jsonl")},
        "lineage": {"transport": {"type": "file", "path": str(tmp_path / "lineage.jsonl")}},
    }
    p, _ = task_fallback(primary_fails=True)
    with PipelineManager(config) as pm:
        r = pm.execute_pipeline(p)
        again = pm.execute_pipeline(p, resume=r.run_id)
    assert r.success and again.success and again.final_result == 202

    assert audit.verify(tmp_path / "audit.jsonl").ok
    records = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    model = next(x for x in records if x["task"] == "model" and x["action"] == "task.finished")
    assert model["outcome"] == "fallback" and model["fallback"] == "task:heuristic"
    assert model["error_class"].endswith("RuntimeError")
    finished = next(x for x in records if x["action"] == "run.finished")
    assert finished["counts"]["fallback"] == 1

    events = [json.loads(x) for x in (tmp_path / "lineage.jsonl").read_text().splitlines()]
    ends = [
        e for e in events if e["eventType"] == "COMPLETE" and e["job"]["name"].endswith(".model")
    ]
    assert ends, [e["job"]["name"] for e in events]
    facet = json.dumps(ends[0]["run"]["facets"])
    assert "fallback" in facet and "task:heuristic" in facet

    with sqlite3.connect(tmp_path / "runs.sqlite") as db:
        rows = dict(db.execute("SELECT task, status FROM tasks WHERE run_id = ?", (r.run_id,)))
    assert rows["model"] == "fallback" and rows["heuristic"] == "succeeded"
