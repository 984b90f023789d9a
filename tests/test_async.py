"""``async def`` tasks: awaited on every executor, concurrent on one event loop per run."""

from __future__ import annotations

import asyncio
import functools
import threading

import pytest

from xlib_pipeline import (
    LazyResultError,
    Pipeline,
    PipelineManager,
    RetryDecision,
    TaskTimeoutError,
    hookimpl,
    is_async_callable,
)
from xlib_pipeline.testing import isolated_manager


class Outcomes:
    """Records every outcome ``after_task`` sees, and the inputs ``before_task`` sees."""

    name = "outcomes"

    def __init__(self) -> None:
        self.outcomes: list[object] = []
        self.inputs: list[tuple[str, tuple[object, ...]]] = []
        self.lock = threading.Lock()

    @hookimpl
    def before_task(self, task, run, inputs):  # type: ignore[no-untyped-def]
        with self.lock:
            self.inputs.append((task.name, inputs))

    @hookimpl
    def after_task(self, task, run, outcome):  # type: ignore[no-untyped-def]
        with self.lock:
            self.outcomes.append(outcome)


class Gauge:
    """Counts coroutines awaiting at once (a concurrency probe that needs no clock)."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.lock = threading.Lock()

    async def hold(self, seconds: float) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            await asyncio.sleep(seconds)
        finally:
            with self.lock:
                self.now -= 1


def fan(n: int, gauge: Gauge, seconds: float = 0.05) -> Pipeline:
    p = Pipeline("fan")

    def make(k: int):  # type: ignore[no-untyped-def]
        async def leaf() -> int:
            await gauge.hold(seconds)
            return k

        return leaf

    for k in range(n):
        p.add_task(f"t{k}", make(k))

    def total(*xs: int) -> int:
        return sum(xs)

    p.add_task("total", total, depends_on=[f"t{k}" for k in range(n)])
    return p


class TestDetection:
    def test_kinds_of_callables(self) -> None:
        async def coro() -> None: ...

        def plain() -> None: ...

        @functools.wraps(coro)
        def wrapper() -> object:
            return coro()

        class AsyncCallable:
            async def __call__(self) -> None: ...

        assert is_async_callable(coro)
        assert is_async_callable(functools.partial(coro))
        assert is_async_callable(wrapper)  # a sync wrapper made with functools.wraps
        assert is_async_callable(AsyncCallable())
        assert not is_async_callable(plain)
        assert not is_async_callable(print)
        assert not is_async_callable(AsyncCallable)  # the class itself builds an instance


@pytest.mark.parametrize("parallel", [False, True], ids=["inline", "threads"])
class TestLocalExecutors:
    def test_output_is_the_awaited_value_and_flows_both_ways(self, parallel: bool) -> None:
        p = Pipeline("mix")

        @p.task("fetch")
        async def fetch() -> list[int]:
            await asyncio.sleep(0.01)
            return [1, 2, 3]

        @p.task("double", depends_on=["fetch"])
        def double(rows: list[int]) -> list[int]:
            return [r * 2 for r in rows]

        @p.task("enrich", depends_on=["double"])
        async def enrich(rows: list[int]) -> dict[str, object]:
            await asyncio.sleep(0)
            return {"rows": rows, "n": len(rows)}

        rec = Outcomes()
        with isolated_manager(plugins=[rec]) as pm:
            result = pm.execute_pipeline(p, parallel=parallel)
        assert result.success, result.error
        assert result.final_result == {"rows": [2, 4, 6], "n": 3}
        assert result.tasks["fetch"].output == [1, 2, 3]
        outputs = {o.task: o.output for o in rec.outcomes if o.final}  # type: ignore[attr-defined]
        assert outputs["fetch"] == [1, 2, 3]  # after_task saw the value, not a coroutine
        assert dict(rec.inputs)["enrich"] == ([2, 4, 6],)

    def test_ready_coroutines_await_together_on_one_loop(self, parallel: bool) -> None:
        gauge = Gauge()
        loops: set[int] = set()
        p = fan(60, gauge)

        async def probe() -> None:
            loops.add(id(asyncio.get_running_loop()))

        for k in range(3):
            p.add_task(f"probe{k}", probe)
        with isolated_manager() as pm:
            result = pm.execute_pipeline(p, parallel=parallel, max_workers=2)
        assert result.success and result.tasks["total"].output == sum(range(60))
        # With 2 lanes (or 1), 60 coroutines still awaited at the same time.
        assert gauge.peak == 60
        assert len(loops) == 1

    def test_timeout_cancels_the_coroutine(self, parallel: bool) -> None:
        seen: list[str] = []
        p = Pipeline("slow")

        @p.task("slow", timeout=0.2)
        async def slow() -> None:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise

        with isolated_manager() as pm:
            result = pm.execute_pipeline(p, parallel=parallel)
        assert result.status == "failed"
        assert isinstance(result.tasks["slow"].error, TaskTimeoutError)
        assert "slow" in str(result.error) and "0.2s" in str(result.error)
        assert seen == ["cancelled"]

    def test_retries_and_hooks_treat_it_like_a_sync_task(self, parallel: bool) -> None:
        calls: list[int] = []

        class RetryTwice:
            name = "retry-twice"

            @hookimpl
            def on_task_error(self, task, run, outcome):  # type: ignore[no-untyped-def]
                return RetryDecision(delay=0.01) if outcome.attempt < 3 else None

        p = Pipeline("flaky")

        @p.task("flaky")
        async def flaky() -> str:
            calls.append(1)
            await asyncio.sleep(0)
            if len(calls) < 3:
                raise ConnectionError(f"try {len(calls)}")
            return "ok"

        rec = Outcomes()
        with isolated_manager(plugins=[RetryTwice(), rec]) as pm:
            result = pm.execute_pipeline(p, parallel=parallel)
        assert result.success and result.final_result == "ok"
        assert result.tasks["flaky"].attempts == 3
        attempts = [(o.attempt, o.status.value, o.final) for o in rec.outcomes]  # type: ignore[attr-defined]
        assert attempts == [(1, "failed", False), (2, "failed", False), (3, "succeeded", True)]

    def test_a_plain_function_returning_a_coroutine_fails_by_name(self, parallel: bool) -> None:
        p = Pipeline("lazy")

        async def work() -> int:
            return 1

        @p.task("forgot_async")
        def forgot_async() -> object:
            return work()

        @p.task("gen")
        def gen() -> object:
            return (i for i in range(3))

        with isolated_manager() as pm:
            result = pm.execute_pipeline(p, parallel=parallel)
        assert result.status == "failed"
        for name, kind in (("forgot_async", "coroutine"), ("gen", "generator")):
            err = result.tasks[name].error
            assert isinstance(err, LazyResultError)
            assert repr(name) in str(err) and kind in str(err)

    def test_failure_in_a_coroutine_is_the_task_error(self, parallel: bool) -> None:
        p = Pipeline("boom")

        @p.task("boom")
        async def boom() -> None:
            await asyncio.sleep(0)
            raise ValueError("bad row 7")

        @p.task("after", depends_on=["boom"])
        async def after(x: object) -> None:  # never runs
            raise AssertionError("ran")

        with isolated_manager() as pm:
            result = pm.execute_pipeline(p, parallel=parallel)
        assert result.failed_task == "boom"
        assert result.tasks["after"].status == "upstream_failed"
        assert "ValueError: bad row 7" in (result.tasks["boom"].traceback or "")


class TestWorkerProcesses:
    def test_processes_run_the_coroutine_to_completion(
        self, process_manager: PipelineManager
    ) -> None:
        p = Pipeline("proc")

        @p.task("a")
        async def a() -> int:
            await asyncio.sleep(0.01)
            import os

            return os.getpid()

        @p.task("b", depends_on=["a"])
        async def b(pid: int) -> tuple[int, int]:
            import os

            return pid, os.getpid()

        result = process_manager.execute_pipeline(p, executor="processes")
        assert result.success, result.error
        import os

        first, second = result.final_result
        assert first != os.getpid() and second != os.getpid()

    def test_processes_refuse_a_returned_coroutine(self, process_manager: PipelineManager) -> None:
        p = Pipeline("proc-lazy")

        @p.task("forgot")
        def forgot() -> object:
            async def inner() -> int:
                return 1

            return inner()

        result = process_manager.execute_pipeline(p, executor="processes")
        err = result.tasks["forgot"].error
        assert isinstance(err, LazyResultError) and "'forgot'" in str(err)


class TestEventLoops:
    def test_execute_pipeline_inside_a_running_loop(self) -> None:
        p = Pipeline("nested")

        @p.task("a")
        async def a() -> str:
            await asyncio.sleep(0)
            return "inner"

        async def caller() -> tuple[str, str]:
            with isolated_manager() as pm:
                sync = pm.execute_pipeline(p)  # blocks this loop, never touches it
                awaited = await pm.execute_pipeline_async(p)
            return sync.final_result, awaited.final_result

        assert asyncio.run(caller()) == ("inner", "inner")

    def test_cancelling_the_awaiting_task_cancels_the_run(self) -> None:
        seen: list[str] = []
        started = threading.Event()
        p = Pipeline("cancel-me")

        @p.task("long")
        async def long() -> None:
            started.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise

        @p.task("next", depends_on=["long"])
        def nxt(_: object) -> None:
            seen.append("next ran")

        async def caller(pm: PipelineManager) -> None:
            job = asyncio.ensure_future(pm.execute_pipeline_async(p, run_id="run-to-cancel"))
            while not started.is_set():
                await asyncio.sleep(0.01)
            job.cancel()
            with pytest.raises(asyncio.CancelledError):
                await job

        with isolated_manager({"cancel_grace_seconds": 0.2}) as pm:
            asyncio.run(caller(pm))
            assert pm.cancel_run("run-to-cancel") is False  # over
        assert seen == ["cancelled"]


SIGINT_SCRIPT = """
import asyncio, sys
from pathlib import Path
from xlib_pipeline import Pipeline, PipelineManager

flag = Path(sys.argv[1])
seen = []
p = Pipeline("interrupt-me")

@p.task("long")
async def long():
    flag.write_text("started")
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        seen.append("cancelled")
        raise

@p.task("after", depends_on=["long"])
def after(_):
    seen.append("after ran")

pm = PipelineManager({"cancel_grace_seconds": 0.3}, entry_points=False)
result = pm.execute_pipeline(p, parallel=sys.argv[2] == "threads")
print(result.status, result.tasks["long"].status, result.tasks["after"].status, seen)
"""


@pytest.mark.parametrize("mode", ["inline", "threads"])
def test_ctrl_c_cancels_running_coroutines_after_the_grace(tmp_path, mode: str) -> None:
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "interrupt.py"
    script.write_text(SIGINT_SCRIPT)
    flag = tmp_path / "flag"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(flag), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A test runner started in the background of a shell inherits SIGINT ignored, and
        # so would the child: give it the default disposition, as a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while not flag.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.split() == ["cancelled", "cancelled", "cancelled", "['cancelled']"], out + err


def test_the_store_records_and_resumes_awaited_values(tmp_path) -> None:
    """Stored outputs of coroutine tasks are the awaited values; resume reuses them."""
    calls: list[str] = []
    flag = tmp_path / "ok"
    p = Pipeline("stored-async")

    @p.task("fetch")
    async def fetch() -> dict[str, int]:
        calls.append("fetch")
        await asyncio.sleep(0)
        return {"rows": 3}

    @p.task("load", depends_on=["fetch"])
    async def load(data: dict[str, int]) -> int:
        calls.append("load")
        if not flag.exists():
            raise RuntimeError("target down")
        return data["rows"]

    config = {"store": {"path": str(tmp_path / "runs.sqlite")}}
    with isolated_manager(config) as pm:
        first = pm.execute_pipeline(p)
        assert first.failed_task == "load"
        _, tasks = pm.read_run(first.run_id)
        assert tasks["fetch"].status == "succeeded"
        flag.touch()
        calls.clear()
        second = pm.execute_pipeline(p, resume=first.run_id)
    assert second.success and second.final_result == 3
    assert calls == ["load"]  # fetch's stored (awaited) output was reused
