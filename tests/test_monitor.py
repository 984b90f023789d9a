"""The live monitor (``monitor=True``, ``run --monitor``) shows retries and reused tasks
(issue 17 item 4): each attempt of a retried task as ``attempt 2/3``, the wait before the
next attempt, tasks a resume reused and result-cache hits apart from tasks that ran, in the
live lines and in the closing counts, with the plain and the rich renderer. Real pipelines
under the real retries plugin; the output is captured and read, never timed."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xlib_pipeline import Pipeline, PipelineManager, ProgressEvent, RetryDecision, hookimpl
from xlib_pipeline._monitor import Monitor, counts_line, delay_text, summarize

retries = pytest.importorskip("xlib_pipeline_retries", reason="needs the retries plugin")

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class TerminalBuffer(io.StringIO):
    """A captured stream that says it is a terminal, so the monitor renders with rich."""

    def isatty(self) -> bool:
        return True


def plain_text(buf: io.StringIO) -> str:
    return _ANSI.sub("", buf.getvalue())


def etl(state: dict[str, Any], *, max_attempts: int = 3, failures: int = 2) -> Pipeline:
    """extract_orders fails ``failures`` times (ConnectionError), then succeeds; load fails
    until ``state["fixed"]``."""
    p = Pipeline("etl")
    policy = {"max_attempts": max_attempts, "initial_delay": 0.01, "jitter": False}

    @p.task("extract_orders", retries=policy)
    def extract_orders() -> list[int]:
        state["calls"] = state.get("calls", 0) + 1
        if state["calls"] <= failures:
            raise ConnectionError(f"db busy ({state['calls']})")
        return [1, 2, 3]

    @p.task("load", depends_on=["extract_orders"])
    def load(rows: list[int]) -> int:
        if not state.get("fixed"):
            raise RuntimeError("warehouse is read-only")
        return len(rows)

    return p


def manager(tmp_path: Path, **config: Any) -> PipelineManager:
    return PipelineManager(
        {"store": {"path": str(tmp_path / "runs.sqlite")}, **config},
        plugins=[retries.RetriesPlugin()],
        entry_points=False,
    )


class TestPlainRetries:
    def test_attempts_and_delays_are_shown(self, tmp_path: Path, capsys: Any) -> None:
        state: dict[str, Any] = {"fixed": True}
        with manager(tmp_path) as pm:
            result = pm.execute_pipeline(etl(state), monitor=True, parallel=False)
        assert result.success
        lines = capsys.readouterr().err.splitlines()
        assert lines[:6] == [
            f"[etl] run {result.run_id}: 2 tasks",
            "  started   extract_orders",
            "  retrying  extract_orders (attempt 1/3 failed: ConnectionError: db busy (1); "
            "retrying in 0.01 s)",
            "  started   extract_orders (attempt 2/3)",
            "  retrying  extract_orders (attempt 2/3 failed: ConnectionError: db busy (2); "
            "retrying in 0.02 s)",
            "  started   extract_orders (attempt 3/3)",
        ]
        done = [ln for ln in lines if ln.startswith("  succeeded extract_orders")]
        assert len(done) == 1 and done[0].endswith("s (attempt 3/3)")
        assert "  2 tasks: 2 succeeded; 1 retried (3 attempts in all)" in lines
        assert any(ln.endswith("s  extract_orders (3 attempts)") for ln in lines)
        # a task that ran once carries no attempt count
        assert any(re.fullmatch(r"  succeeded load in \d+\.\d\ds", ln) for ln in lines)

    def test_exhausted_retries_show_the_last_attempt(self, tmp_path: Path, capsys: Any) -> None:
        state: dict[str, Any] = {"fixed": True}
        with manager(tmp_path) as pm:
            result = pm.execute_pipeline(etl(state, failures=5), monitor=True, parallel=False)
        assert result.status == "failed"
        lines = capsys.readouterr().err.splitlines()
        assert "  started   extract_orders (attempt 3/3)" in lines
        assert not any("attempt 4" in ln for ln in lines)
        failed = [ln for ln in lines if ln.startswith("  failed    extract_orders")]
        assert len(failed) == 1 and failed[0].endswith("(attempt 3/3)")
        assert "  upstream_failed load" in lines
        assert "  2 tasks: 1 failed, 1 upstream_failed; 1 retried (3 attempts in all)" in lines


class TestResumeAndCache:
    def test_reused_tasks_are_not_successes(self, tmp_path: Path, capsys: Any) -> None:
        state: dict[str, Any] = {}
        p = etl(state, failures=0)
        with manager(tmp_path) as pm:
            first = pm.execute_pipeline(p, monitor=True, parallel=False)
            assert first.status == "failed"
            capsys.readouterr()
            state["fixed"] = True
            second = pm.execute_pipeline(p, monitor=True, resume=first.run_id)
        assert second.success
        lines = capsys.readouterr().err.splitlines()
        assert f"  reused    extract_orders (succeeded in run {first.run_id})" in lines
        assert not any(ln.startswith("  succeeded extract_orders") for ln in lines)
        assert not any(ln.startswith("  started   extract_orders") for ln in lines)
        assert any(ln.startswith("  succeeded load in ") for ln in lines)
        assert "  2 tasks: 1 succeeded, 1 reused" in lines
        assert any(ln.endswith("s  extract_orders (reused)") for ln in lines)

    def test_reused_from_names_the_run_that_produced_the_output(self, tmp_path: Path) -> None:
        """Resuming a resumed run: a task reused twice names the run where it really ran."""
        state: dict[str, Any] = {}
        p = Pipeline("chain")
        p.add_task("a", lambda: 1)

        @p.task("b", depends_on=["a"])
        def b(x: int) -> int:
            if state.get("b_ok") is None:
                raise RuntimeError("b not yet")
            return x

        @p.task("c", depends_on=["b"])
        def c(x: int) -> int:
            if not state.get("c_ok"):
                raise RuntimeError("c not yet")
            return x

        events: list[ProgressEvent] = []
        with manager(tmp_path) as pm:
            first = pm.execute_pipeline(p)
            state["b_ok"] = True
            second = pm.execute_pipeline(p, resume=first.run_id)
            state["c_ok"] = True
            third = pm.execute_pipeline(p, resume=second.run_id, on_event=events.append)
        assert third.success
        finished = {e.task: e for e in events if e.kind == "task_finished"}
        assert finished["a"].reused and finished["a"].reused_from == first.run_id
        assert finished["b"].reused and finished["b"].reused_from == second.run_id
        assert not finished["c"].reused and finished["c"].reused_from is None

    def test_cache_hits_are_shown_as_cached(self, tmp_path: Path, capsys: Any) -> None:
        p = Pipeline("features")
        p.add_task("load", lambda: [3, 1])
        p.add_task("embed", lambda rows: sorted(rows), depends_on=["load"], cache=True)
        with manager(tmp_path) as pm:
            pm.execute_pipeline(p, monitor=True, parallel=False)
            capsys.readouterr()
            second = pm.execute_pipeline(p, monitor=True, parallel=False)
        assert second.tasks["embed"].status.value == "cached"
        lines = capsys.readouterr().err.splitlines()
        cached = [ln for ln in lines if ln.startswith("  cached    embed")]
        assert len(cached) == 1 and cached[0].endswith("(from the result cache)")
        assert "  2 tasks: 1 succeeded, 1 cached" in lines


class TestRich:
    def test_live_view_and_summary(self, tmp_path: Path) -> None:
        state: dict[str, Any] = {}
        p = etl(state)
        with manager(tmp_path) as pm:
            plan = pm.validate_pipeline(p)
            buf = TerminalBuffer()
            first = pm.execute_pipeline(p, on_event=Monitor(plan, buf), parallel=False)
            out = plain_text(buf)
            assert (
                "↻ extract_orders: attempt 1/3 failed: ConnectionError: db busy (1); "
                "retrying in 0.01 s" in out
            )
            assert (
                "↻ extract_orders: attempt 2/3 failed: ConnectionError: db busy (2); "
                "retrying in 0.02 s" in out
            )
            assert "2 retries · 1 failed" in out  # the live line's counters
            assert "2 tasks: 1 succeeded, 1 failed; 1 retried (3 attempts in all)" in out
            row = next(ln for ln in out.splitlines() if "│ extract_orders" in ln)
            assert re.search(r"│ succeeded\s+│\s+3 │", row), row

            state["fixed"] = True
            buf = TerminalBuffer()
            second = pm.execute_pipeline(
                p, on_event=Monitor(plan, buf), resume=first.run_id, parallel=False
            )
        assert second.success
        out = plain_text(buf)
        row = next(ln for ln in out.splitlines() if "│ extract_orders" in ln)
        assert re.search(r"│ reused\s+│\s+- │", row), row
        assert "1 reused" in out  # the live line's counters
        assert "2 tasks: 1 succeeded, 1 reused" in out
        assert f"reused from run {first.run_id}" in out


class TestEventFields:
    def test_retry_events_carry_delay_and_bound(self, tmp_path: Path) -> None:
        events: list[ProgressEvent] = []
        with manager(tmp_path) as pm:
            pm.execute_pipeline(etl({"fixed": True}), on_event=events.append, parallel=False)
        mine = [e for e in events if e.task == "extract_orders"]
        assert [(e.kind, e.attempt, e.max_attempts, e.delay) for e in mine] == [
            ("task_started", 1, None, None),
            ("task_retrying", 1, 3, 0.01),
            ("task_started", 2, 3, None),
            ("task_retrying", 2, 3, 0.02),
            ("task_started", 3, 3, None),
            ("task_finished", 3, 3, None),
        ]
        load = [e for e in events if e.task == "load"]
        assert all(e.max_attempts is None and not e.reused for e in load)

    def test_event_is_immutable_and_its_repr_leaves_out_the_result(self) -> None:
        events: list[ProgressEvent] = []
        p = Pipeline("small")
        p.add_task("a", lambda: "x" * 10_000)
        with PipelineManager(entry_points=False) as pm:
            pm.execute_pipeline(p, on_event=events.append)
        last = events[-1]
        assert last.kind == "run_finished" and last.result is not None
        assert "xxxx" not in repr(last) and "status='succeeded'" in repr(last)
        with pytest.raises(AttributeError):
            last.status = "failed"  # type: ignore[misc]
        changed = last.replace(status="failed")
        assert changed.status == "failed" and last.status == "succeeded"

    def test_bounds_reduce_to_the_smallest_and_may_be_absent(self, tmp_path: Path) -> None:
        """Several retrying plugins: the longest delay, the smallest bound; a plugin that
        gives no bound shows ``attempt 2`` without a total."""

        class Ask:
            def __init__(self, name: str, delay: float, bound: int | None) -> None:
                self.name, self.delay, self.bound = name, delay, bound

            @hookimpl
            def on_task_error(self, task: Any, run: Any, outcome: Any) -> RetryDecision | None:
                if outcome.attempt >= 2:
                    return None
                return RetryDecision(delay=self.delay, max_attempts=self.bound)

        def run(*plugins: Any) -> tuple[list[ProgressEvent], str]:
            p = Pipeline("bounds")
            calls = {"n": 0}

            @p.task("t")
            def t() -> int:
                calls["n"] += 1
                if calls["n"] == 1:
                    raise ValueError("once")
                return 1

            events: list[ProgressEvent] = []
            buf = io.StringIO()
            with PipelineManager(plugins=list(plugins), entry_points=False) as pm:
                pm.sleep = lambda s: None
                mon = Monitor(pm.validate_pipeline(p), buf)

                def both(e: ProgressEvent) -> None:
                    events.append(e)
                    mon(e)

                pm.execute_pipeline(p, on_event=both, parallel=False)
            return events, buf.getvalue()

        events, out = run(Ask("long", 0.5, 5), Ask("short", 0.1, 3))
        retry = next(e for e in events if e.kind == "task_retrying")
        assert (retry.delay, retry.max_attempts) == (0.5, 3)
        assert "  retrying  t (attempt 1/3 failed: ValueError: once; retrying in 0.5 s)" in out
        events, out = run(Ask("unbounded", 0.0, None))
        assert "  retrying  t (attempt 1 failed: ValueError: once; retrying now)" in out
        assert "  started   t (attempt 2)" in out


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    plan=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 4)), min_size=1, max_size=4),
    parallel=st.booleans(),
)
def test_attempt_lines_follow_the_policy(
    plan: list[tuple[int, int]], parallel: bool, tmp_path: Path
) -> None:
    """Model: a task failing ``f`` times under ``max_attempts=m`` starts ``min(f + 1, m)``
    times; attempt ``k > 1`` is announced as ``k/m`` after a ``retrying`` line for ``k-1``;
    it ends succeeded iff ``f < m``."""
    p = Pipeline("model")
    lock = threading.Lock()
    calls: dict[str, int] = {}

    def make(name: str, failures: int) -> Any:
        def fn() -> str:
            with lock:
                calls[name] = calls.get(name, 0) + 1
                n = calls[name]
            if n <= failures:
                raise OSError(f"fail {n}")
            return name

        return fn

    for j, (failures, m) in enumerate(plan):
        policy = {"max_attempts": m, "initial_delay": 0}
        p.add_task(f"t{j}", make(f"t{j}", failures), retries=policy)
    buf = io.StringIO()
    with PipelineManager(plugins=[retries.RetriesPlugin()], entry_points=False) as pm:
        pm.execute_pipeline(p, on_event=Monitor(pm.validate_pipeline(p), buf), parallel=parallel)
    lines = buf.getvalue().splitlines()
    for j, (failures, m) in enumerate(plan):
        name = f"t{j}"
        runs = min(failures + 1, m)
        mine = [ln for ln in lines if re.match(rf"  \S+\s+{name}\b", ln)]
        expected: list[str] = [f"  started   {name}"]
        for k in range(2, runs + 1):
            expected.append(
                f"  retrying  {name} (attempt {k - 1}/{m} failed: OSError: fail {k - 1}; "
                "retrying now)"
            )
            expected.append(f"  started   {name} (attempt {k}/{m})")
        assert mine[:-1] == expected
        status = "succeeded" if failures < m else "failed"
        assert mine[-1].startswith(f"  {status:<9} {name} in ")
        assert mine[-1].endswith(f"(attempt {runs}/{m})") == (runs > 1)
    retried = sum(1 for f, m in plan if min(f + 1, m) > 1)
    summary = next(ln for ln in lines if ln.startswith(f"  {len(plan)} task"))
    assert (f"; {retried} retried (" in summary) == (retried > 0)


class TestHelpers:
    def test_delay_text(self) -> None:
        assert delay_text(None) == "retrying now"
        assert delay_text(0.0) == "retrying now"
        assert delay_text(1.5) == "retrying in 1.5 s"
        assert delay_text(0.04567) == "retrying in 0.05 s"
        assert delay_text(30.0) == "retrying in 30 s"

    def test_counts_line_orders_and_pluralises(self, tmp_path: Path) -> None:
        p = Pipeline("one")
        p.add_task("a", lambda: 1)
        with PipelineManager(entry_points=False) as pm:
            plan = pm.validate_pipeline(p)
            result = pm.execute_pipeline(p)
        assert counts_line(summarize(plan, result)) == "1 task: 1 succeeded"
        assert counts_line(summarize(plan, result, {"a": "r1"})) == "1 task: 1 reused"


FLAKY = textwrap.dedent(
    """
    import os
    from pathlib import Path
    from xlib_pipeline import Pipeline

    p = Pipeline("oncall")
    MARK = Path(os.environ["MONITOR_MARKS"])

    @p.task("extract_orders", retries={"max_attempts": 3, "initial_delay": 0.01, "jitter": False})
    def extract_orders():
        n = len(list(MARK.glob("x*")))
        (MARK / f"x{n}").touch()
        if n < 2:
            raise ConnectionError(f"flaky source, try {n + 1}")
        return [1, 2, 3]

    @p.task("load", depends_on=["extract_orders"])
    def load(rows):
        if not (MARK / "fixed").exists():
            raise KeyError("orders_table_missing")
        return {"rows": len(rows)}
    """
)


@pytest.mark.slow
def test_cli_run_and_resume_monitor(tmp_path: Path) -> None:
    """``run`` (monitor on by default) shows the attempts, ``resume`` the reused task."""
    (tmp_path / "flaky.py").write_text(FLAKY)
    (tmp_path / "marks").mkdir()
    env = dict(
        os.environ,
        XLIB_PIPELINE_HOME=str(tmp_path / "home"),
        MONITOR_MARKS=str(tmp_path / "marks"),
        NO_COLOR="1",
    )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "xlib_pipeline.cli", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )

    first = cli("run", "flaky.py", "--inline")
    assert first.returncode == 1, first.stderr
    err = first.stderr
    assert (
        "  retrying  extract_orders (attempt 1/3 failed: ConnectionError: flaky source, try 1; "
        "retrying in 0.01 s)" in err
    )
    assert "  started   extract_orders (attempt 3/3)" in err
    assert "1 retried (3 attempts in all)" in err
    run_id = re.search(r"run_id: (\S+)", first.stdout)
    assert run_id is not None, first.stdout
    (tmp_path / "marks" / "fixed").touch()
    second = cli("resume", run_id.group(1))
    assert second.returncode == 0, second.stderr
    assert f"  reused    extract_orders (succeeded in run {run_id.group(1)})" in second.stderr
    assert "  2 tasks: 1 succeeded, 1 reused" in second.stderr
