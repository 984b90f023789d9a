"""Issue 18 weak defaults: threads executor inputs and a task raising KeyboardInterrupt."""

from __future__ import annotations

import threading
import time

import pytest

from xlib_pipeline import DefinitionError, Pipeline, PipelineManager, SerializationError


def _mutating_pipeline() -> Pipeline:
    p = Pipeline("shared")
    p.add_task("source", lambda: {"rows": [1, 2, 3]})
    p.add_task("mutate", lambda d: d["rows"].append(99) or len(d["rows"]), depends_on=["source"])
    p.add_task("read", lambda d: (time.sleep(0.05), sum(d["rows"]))[1], depends_on=["source"])
    return p


def test_threads_share_inputs_by_default(manager):
    """The documented behaviour: tasks on threads share objects (no copy per task)."""
    result = manager.execute_pipeline(_mutating_pipeline())
    assert result.success
    assert result.tasks["source"].output["rows"] == [1, 2, 3, 99]


def test_freeze_inputs_gives_each_task_its_own_copy():
    with PipelineManager({"freeze_inputs": True}, entry_points=False) as pm:
        result = pm.execute_pipeline(_mutating_pipeline())
    assert result.success
    assert result.tasks["source"].output == {"rows": [1, 2, 3]}
    assert result.tasks["read"].output == 6
    assert result.tasks["mutate"].output == 4


def test_freeze_inputs_per_task_option(manager):
    p = Pipeline("one")
    p.add_task("source", lambda: [1])
    p.add_task(
        "mutate", lambda rows: rows.append(2) or rows, depends_on=["source"], freeze_inputs=True
    )
    result = manager.execute_pipeline(p)
    assert result.tasks["source"].output == [1]
    assert result.tasks["mutate"].output == [1, 2]


def test_freeze_inputs_names_an_input_that_cannot_be_copied():
    p = Pipeline("lock")
    p.add_task("source", threading.Lock)
    p.add_task("use", lambda lock: 1, depends_on=["source"])
    with PipelineManager({"freeze_inputs": True}, entry_points=False) as pm:
        result = pm.execute_pipeline(p)
    err = result.tasks["use"].error
    assert isinstance(err, SerializationError)
    assert "use" in str(err) and "freeze_inputs" in str(err) and "source" in str(err)


def test_freeze_inputs_must_be_a_real_bool():
    from xlib_pipeline import ConfigError

    with pytest.raises(ConfigError, match="freeze_inputs"):
        PipelineManager({"freeze_inputs": "yes"}, entry_points=False)
    p = Pipeline("bad")
    p.add_task("t", lambda: 1, freeze_inputs="false")
    with pytest.raises(DefinitionError, match="freeze_inputs"):
        PipelineManager(entry_points=False).validate_pipeline(p)


def test_task_raising_keyboard_interrupt_keeps_a_healthy_siblings_result(manager):
    """A task raising KeyboardInterrupt used to discard a running sibling's result (the
    whole run was abandoned as cancelled)."""
    started = threading.Event()

    def healthy() -> str:
        started.set()
        time.sleep(0.3)
        return "kept"

    def interrupt() -> None:
        started.wait(5)
        raise KeyboardInterrupt

    p = Pipeline("ki")
    p.add_task("healthy", healthy)
    p.add_task("interrupt", interrupt)
    p.add_task("later", lambda a, b: 1, depends_on=["healthy", "interrupt"])
    result = manager.execute_pipeline(p, parallel=True, max_workers=2)
    assert result.tasks["healthy"].status == "succeeded"
    assert result.tasks["healthy"].output == "kept"
    assert result.tasks["interrupt"].status == "failed"
    assert result.tasks["later"].status in ("upstream_failed", "cancelled")
    assert not result.success
