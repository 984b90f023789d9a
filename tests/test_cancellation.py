"""Stopping a run: no new task or attempt starts once the run is stopping."""

from __future__ import annotations

import time

from xlib_pipeline import Pipeline, RetryDecision, hookimpl
from xlib_pipeline.testing import isolated_manager


class RetryB:
    """Asks for a long wait before retrying task b, once."""

    name = "retry-b"

    @hookimpl
    def on_task_error(self, task, run, outcome):
        if task.name == "b" and outcome.attempt == 1:
            return RetryDecision(delay=30.0)
        return None


class TestStopDuringRetryWait:
    def test_stop_cuts_the_backoff_short(self) -> None:
        """A failure elsewhere under on_failure=stop ends a task waiting to retry, unretried."""
        p = Pipeline("stop-wait")

        def a() -> None:
            time.sleep(0.3)  # b is waiting for its retry by now
            raise RuntimeError("a failed")

        def b() -> None:
            raise ConnectionError("b flaky")

        p.add_task("a", a)
        p.add_task("b", b)
        p.add_task("c", lambda: "never", depends_on=[])
        with isolated_manager({"on_failure": "stop", "max_workers": 2}, plugins=[RetryB()]) as pm:
            result = pm.execute_pipeline(p)
        assert result.tasks["b"].status == "failed"
        assert result.tasks["b"].attempts == 1
        assert result.failed_task in {"a", "b"}
