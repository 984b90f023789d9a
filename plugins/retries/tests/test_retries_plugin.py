"""End-to-end tests of the retries plugin through real pipeline runs."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from xlib_pipeline_retries import RetriesPlugin, RetryPolicy

from xlib_pipeline import (
    ConfigError,
    DefinitionError,
    Pipeline,
    PipelineManager,
    RetryDecision,
    SecurityError,
    Status,
    hookimpl,
)


class SleepRecorder:
    """Test plugin: replaces the manager's ``sleep`` so retries wait for nothing and delays
    are seen."""

    name = "sleep_recorder"

    def __init__(self) -> None:
        self.delays: list[tuple[str, float]] = []
        self.lock = threading.Lock()
        self.outcomes: list[tuple[str, int, bool, Status]] = []
        self._current = threading.local()

    @hookimpl
    def configure(self, manager: Any, config: Any) -> None:
        manager.sleep = self.sleep

    @hookimpl
    def after_task(self, task: Any, run: Any, outcome: Any) -> None:
        with self.lock:
            self.outcomes.append((task.name, outcome.attempt, outcome.final, outcome.status))
        self._current.task = task.name

    def sleep(self, seconds: float) -> None:
        # after_task(final=False) runs in the same lane just before the sleep.
        with self.lock:
            self.delays.append((getattr(self._current, "task", "?"), seconds))


class AlwaysRetry:
    """Test plugin: asks for a retry on every error (to check the retries plugin's vetoes)."""

    name = "always_retry"

    @hookimpl
    def on_task_error(self, task: Any, run: Any, outcome: Any) -> RetryDecision | None:
        return RetryDecision(retry=True, delay=0.0) if outcome.attempt < 10 else None


def flaky(failures: int, error: Callable[[], BaseException] = lambda: ConnectionError("down")):
    """A task function failing ``failures`` times, then returning how many calls it took."""
    calls = {"n": 0}
    lock = threading.Lock()

    def fn() -> int:
        with lock:
            calls["n"] += 1
            n = calls["n"]
        if n <= failures:
            raise error()
        return n

    fn.calls = calls  # type: ignore[attr-defined]
    return fn


def manager(
    config: dict[str, Any] | None = None, *extra: object, seed: int = 1
) -> tuple[PipelineManager, SleepRecorder]:
    rec = SleepRecorder()
    pm = PipelineManager(
        config or {},
        entry_points=False,
        plugins=[RetriesPlugin(rng=random.Random(seed)), rec, *extra],
    )
    return pm, rec


def one_task(**options: Any) -> tuple[Pipeline, Callable[..., Any]]:
    fn = options.pop("fn")
    p = Pipeline("retry_test")
    p.add_task("work", fn, **options)
    return p, fn


class TestRetrying:
    def test_fails_twice_then_succeeds_with_three_attempts(self) -> None:
        """A task failing twice with a retryable error, then succeeding, ends with 3 attempts."""
        pm, rec = manager()
        p, _ = one_task(fn=flaky(2), retries=2)
        result = pm.execute_pipeline(p)
        assert result.success
        assert result.tasks["work"].status is Status.SUCCEEDED
        assert result.tasks["work"].attempts == 3
        assert result.final_result == 3
        assert len(rec.delays) == 2

    def test_exhausted_retries_fail_with_all_attempts_counted(self) -> None:
        """A task that keeps failing stops after max_attempts and reports them all."""
        pm, _ = manager()
        p, fn = one_task(fn=flaky(100), retries=2)
        result = pm.execute_pipeline(p)
        assert not result.success
        assert result.tasks["work"].status is Status.FAILED
        assert result.tasks["work"].attempts == 3
        assert fn.calls["n"] == 3
        assert isinstance(result.tasks["work"].error, ConnectionError)

    def test_non_retryable_error_is_not_retried(self) -> None:
        """An error outside retry_on fails the task on its first attempt."""
        pm, rec = manager()
        policy = RetryPolicy(max_attempts=5, retry_on=(ConnectionError,))
        p, fn = one_task(fn=flaky(1, lambda: ValueError("bad row")), retries=policy)
        result = pm.execute_pipeline(p)
        assert result.tasks["work"].status is Status.FAILED
        assert result.tasks["work"].attempts == 1
        assert fn.calls["n"] == 1
        assert rec.delays == []

    def test_never_retry_on_beats_retry_on(self) -> None:
        """An error matching both retry_on and never_retry_on is not retried."""
        pm, _ = manager()
        policy = RetryPolicy(
            max_attempts=5, retry_on=(OSError,), never_retry_on=(FileNotFoundError,)
        )
        p, _ = one_task(fn=flaky(1, lambda: FileNotFoundError("gone")), retries=policy)
        result = pm.execute_pipeline(p)
        assert result.tasks["work"].attempts == 1
        assert result.tasks["work"].status is Status.FAILED

    def test_default_never_retry_on_covers_security_errors(self) -> None:
        """SecurityError is not retried under the default policy."""
        pm, _ = manager()
        p, _ = one_task(fn=flaky(1, lambda: SecurityError("denied")), retries=3)
        result = pm.execute_pipeline(p)
        assert result.tasks["work"].attempts == 1

    def test_never_retry_on_vetoes_other_plugins(self) -> None:
        """never_retry_on vetoes a retry another plugin asks for."""
        pm, _ = manager(None, AlwaysRetry())
        policy = RetryPolicy(max_attempts=5, never_retry_on=(KeyError,))
        p, _ = one_task(fn=flaky(3, lambda: KeyError("k")), retries=policy)
        assert pm.execute_pipeline(p).tasks["work"].attempts == 1

    def test_exhausted_policy_vetoes_other_plugins(self) -> None:
        """Another plugin cannot stretch a task beyond its max_attempts."""
        pm, _ = manager(None, AlwaysRetry())
        p, _ = one_task(fn=flaky(100), retries=1)
        assert pm.execute_pipeline(p).tasks["work"].attempts == 2

    def test_retried_attempts_reach_after_task_as_not_final(self) -> None:
        """after_task sees failed attempts with final=False and the last one with final=True."""
        pm, rec = manager()
        p, _ = one_task(fn=flaky(2), retries=2)
        pm.execute_pipeline(p)
        assert rec.outcomes == [
            ("work", 1, False, Status.FAILED),
            ("work", 2, False, Status.FAILED),
            ("work", 3, True, Status.SUCCEEDED),
        ]

    def test_inline_run_retries_too(self) -> None:
        """parallel=False runs the same retry loop in the calling thread."""
        pm, _ = manager()
        p, _ = one_task(fn=flaky(2), retries=2)
        result = pm.execute_pipeline(p, parallel=False)
        assert result.tasks["work"].attempts == 3

    def test_per_attempt_timeout_is_retried(self) -> None:
        """The core's timeout= applies to each attempt; a timed-out attempt is retried."""
        calls = {"n": 0}
        release = threading.Event()

        def slow_once() -> str:
            calls["n"] += 1
            if calls["n"] == 1:
                release.wait(5)  # abandoned by the timeout; released at the end of the test
            return "done"

        pm, _ = manager()
        p, _ = one_task(fn=slow_once, retries=1, timeout=0.05)
        try:
            result = pm.execute_pipeline(p)
        finally:
            release.set()
        assert result.success
        assert result.tasks["work"].attempts == 2

    def test_downstream_receives_the_retried_result(self) -> None:
        """A successor runs once, with the output of the successful attempt."""
        pm, _ = manager()
        p = Pipeline("chain")
        p.add_task("a", flaky(2), retries=2)
        p.add_task("b", lambda x: x * 10, depends_on=["a"])
        result = pm.execute_pipeline(p)
        assert result.final_result == 30
        assert result.tasks["b"].attempts == 1


class TestBackoff:
    def test_delays_follow_the_policy_with_a_seeded_random(self) -> None:
        """Each delay is within [0, min(max_delay, initial * multiplier**(n-1))] and seeded."""
        policy = RetryPolicy(max_attempts=7, initial_delay=0.1, multiplier=3.0, max_delay=1.0)
        pm, rec = manager(seed=42)
        p, _ = one_task(fn=flaky(6), retries=policy)
        assert pm.execute_pipeline(p).tasks["work"].attempts == 7
        delays = [d for _, d in rec.delays]
        assert len(delays) == 6
        expected_rng = random.Random(42)
        for n, d in enumerate(delays, start=1):
            high = min(1.0, 0.1 * 3.0 ** (n - 1))
            assert 0.0 <= d <= high
            assert d <= policy.max_delay
            assert d == pytest.approx(expected_rng.uniform(0.0, high))

    def test_same_seed_same_delays(self) -> None:
        """Two runs with equally seeded generators wait the same delays."""
        runs = []
        for _ in range(2):
            pm, rec = manager(seed=7)
            p, _ = one_task(fn=flaky(3), retries=3)
            pm.execute_pipeline(p)
            runs.append([d for _, d in rec.delays])
        assert runs[0] == runs[1]
        assert len(runs[0]) == 3

    def test_policy_rng_overrides_the_plugin_rng(self) -> None:
        """A policy's own rng is used instead of the plugin's."""
        policy = RetryPolicy(max_attempts=3, initial_delay=1.0, rng=random.Random(3))
        pm, rec = manager(seed=999)
        p, _ = one_task(fn=flaky(2), retries=policy)
        pm.execute_pipeline(p)
        ref = random.Random(3)
        assert [d for _, d in rec.delays] == [ref.uniform(0, 1.0), ref.uniform(0, 2.0)]

    def test_without_jitter_delays_are_the_windows(self) -> None:
        """jitter=False waits exactly min(max_delay, initial * multiplier**(n-1))."""
        policy = RetryPolicy(
            max_attempts=5, initial_delay=0.25, multiplier=2, max_delay=1.0, jitter=False
        )
        pm, rec = manager()
        p, _ = one_task(fn=flaky(4), retries=policy)
        pm.execute_pipeline(p)
        assert [d for _, d in rec.delays] == [0.25, 0.5, 1.0, 1.0]

    def test_zero_initial_delay_does_not_sleep(self) -> None:
        """initial_delay=0 retries at once (the core skips run.sleep for a zero delay)."""
        pm, rec = manager()
        p, _ = one_task(fn=flaky(2), retries={"retries": 2, "initial_delay": 0})
        assert pm.execute_pipeline(p).tasks["work"].attempts == 3
        assert rec.delays == []

    def test_many_threads(self) -> None:
        """Flaky tasks on several lanes each end with 3 attempts and bounded delays."""
        pm, rec = manager({"max_workers": 4}, seed=5)
        policy = RetryPolicy(max_attempts=3, initial_delay=0.01, multiplier=2.0, max_delay=0.015)
        p = Pipeline("wide")
        names = [f"t{i}" for i in range(16)]
        for name in names:
            p.add_task(name, flaky(2), retries=policy)
        p.add_task("join", lambda *xs: sum(xs), depends_on=names)
        result = pm.execute_pipeline(p)
        assert result.success
        assert result.final_result == 3 * len(names)
        assert all(result.tasks[n].attempts == 3 for n in names)
        assert len(rec.delays) == 2 * len(names)
        assert all(0 <= d <= 0.015 for _, d in rec.delays)
        per_task = {n: sum(1 for t, _ in rec.delays if t == n) for n in names}
        assert set(per_task.values()) == {2}


class TestConfigDefault:
    def test_default_applies_to_tasks_without_the_option(self) -> None:
        """config retries.default retries a task that has no retries= option."""
        pm, _ = manager({"retries": {"default": {"max_attempts": 3, "initial_delay": 0}}})
        p, _ = one_task(fn=flaky(2))
        result = pm.execute_pipeline(p)
        assert result.success
        assert result.tasks["work"].attempts == 3

    def test_int_default(self) -> None:
        """An int default means that many retries."""
        pm, _ = manager({"retries": {"default": 1}})
        p, _ = one_task(fn=flaky(5))
        assert pm.execute_pipeline(p).tasks["work"].attempts == 2

    def test_task_option_zero_disables_the_default(self) -> None:
        """retries=0 on a task turns the config default off for it."""
        pm, _ = manager({"retries": {"default": {"retries": 4}}})
        p, _ = one_task(fn=flaky(1), retries=0)
        result = pm.execute_pipeline(p)
        assert result.tasks["work"].attempts == 1
        assert not result.success

    def test_int_option_inherits_default_fields(self) -> None:
        """retries=N keeps the default's retry_on and backoff, changing only the count."""
        config = {"retries": {"default": {"retries": 1, "retry_on": ["ConnectionError"]}}}
        pm, _ = manager(config)
        p = Pipeline("inherit")
        p.add_task("value_error", flaky(1, lambda: ValueError("x")), retries=5)
        p.add_task("conn_error", flaky(4), retries=5)
        result = pm.execute_pipeline(p)
        assert result.tasks["value_error"].attempts == 1
        assert result.tasks["conn_error"].attempts == 5

    def test_without_config_or_option_nothing_is_retried(self) -> None:
        """Installed but unconfigured, the plugin is inert."""
        pm, rec = manager()
        p, fn = one_task(fn=flaky(1))
        result = pm.execute_pipeline(p)
        assert result.tasks["work"].attempts == 1
        assert fn.calls["n"] == 1
        assert rec.delays == []


class TestValidation:
    @pytest.mark.parametrize(
        "value",
        [
            -1,
            True,
            "3",
            2.5,
            {"bogus": 1},
            {"multiplier": 0.5},
            {"max_attempts": 0},
            {"retry_on": ["NoSuchError"]},
            {"retry_on": [int]},
            {"retries": 1, "max_attempts": 2},
        ],
    )
    def test_invalid_option_is_a_definition_error_naming_the_task(self, value: Any) -> None:
        """A bad retries= value is refused before anything runs, naming the task."""
        pm, _ = manager()
        calls = []
        p = Pipeline("bad")
        p.add_task("careful_task", lambda: calls.append(1), retries=value)
        with pytest.raises(DefinitionError) as info:
            pm.execute_pipeline(p)
        assert "careful_task" in str(info.value)
        assert "retries" in str(info.value)
        assert info.value.task == "careful_task"
        assert calls == []

    @pytest.mark.parametrize(
        "section",
        [{"default": {"max_attempts": 0}}, {"defaults": 2}, 3, {"default": {"jitter": "yes"}}],
    )
    def test_invalid_config_is_a_config_error(self, section: Any) -> None:
        """A bad retries config section names the key."""
        with pytest.raises(ConfigError) as info:
            manager({"retries": section})
        assert "retries" in str(info.value)


class TestEvents:
    def test_retry_events_carry_policy_and_delay(self, caplog: pytest.LogCaptureFixture) -> None:
        """Each scheduled retry is logged with the computed delay, its window and the policy."""
        pm, _ = manager()
        p, _ = one_task(fn=flaky(2), retries={"retries": 2, "retry_on": ["ConnectionError"]})
        with caplog.at_level(logging.INFO, logger="xlib_pipeline"):
            pm.execute_pipeline(p)
        scheduled = [
            r.getMessage() for r in caplog.records if "retries.retry_scheduled" in r.getMessage()
        ]
        assert len(scheduled) == 2
        assert all("delay=" in m and "window=" in m and "max_attempts" in m for m in scheduled)
        assert "ConnectionError" in scheduled[0]
        core = [
            r.getMessage() for r in caplog.records if "'task.retry_scheduled'" in r.getMessage()
        ]
        assert len(core) == 2

    def test_exhausted_and_not_retried_events(self, caplog: pytest.LogCaptureFixture) -> None:
        """Giving up is logged, with the reason."""
        pm, _ = manager()
        p = Pipeline("events")
        p.add_task("spent", flaky(9), retries={"retries": 1, "initial_delay": 0})
        p.add_task("refused", flaky(9, lambda: SecurityError("no")), retries=1)
        with caplog.at_level(logging.INFO, logger="xlib_pipeline"):
            pm.execute_pipeline(p)
        text = "\n".join(r.getMessage() for r in caplog.records)
        assert "retries.exhausted" in text
        assert "retries.not_retried" in text and "never_retry_on" in text

    def test_events_never_contain_the_error_message(self, caplog: pytest.LogCaptureFixture) -> None:
        """Only the exception type is logged, never its message (it may hold data)."""
        pm, _ = manager()
        secret = "ssn=123-45-6789"
        p, _ = one_task(fn=flaky(1, lambda: ConnectionError(secret)), retries=1)
        with caplog.at_level(logging.INFO, logger="xlib_pipeline"):
            pm.execute_pipeline(p)
        plugin_lines = [r.getMessage() for r in caplog.records if "retries." in r.getMessage()]
        assert plugin_lines
        assert all(secret not in m for m in plugin_lines)


@pytest.mark.slow
class TestProcesses:
    def test_retries_in_worker_processes(self, tmp_path: Path) -> None:
        """A task in a worker process is retried; the error type survives the process boundary."""
        counter = tmp_path / "calls"
        counter.write_text("0")

        def flaky_in_process() -> int:
            n = int(counter.read_text()) + 1
            counter.write_text(str(n))
            if n <= 2:
                raise ConnectionError("down")
            return n

        pm, _ = manager({"executor": "processes", "max_workers": 1})
        try:
            p, _ = one_task(
                fn=flaky_in_process, retries={"retries": 2, "retry_on": [ConnectionError]}
            )
            result = pm.execute_pipeline(p)
        finally:
            pm.close()
        assert result.success, result.error
        assert result.tasks["work"].attempts == 3
        assert counter.read_text() == "3"


class TestRunStore:
    def test_every_attempt_is_recorded(self, tmp_path: Path) -> None:
        """The run store keeps one attempt_failed event per retried attempt and the count."""
        pm, _ = manager({"store": {"path": str(tmp_path / "runs.sqlite")}})
        try:
            p, _ = one_task(fn=flaky(2), retries=2)
            result = pm.execute_pipeline(p)
            store = pm.store
            assert store is not None
            store.flush()
            events = store.get_events(result.run_id)
            tasks = store.get_tasks(result.run_id)
        finally:
            pm.close()
        failed = [(e[3], e[4]) for e in events if e[0] == "work" and e[2] == "attempt_failed"]
        assert failed == [(1, "ConnectionError"), (2, "ConnectionError")]
        assert tasks["work"].attempts == 3
