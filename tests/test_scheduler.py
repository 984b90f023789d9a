"""The scheduler against a reference model, on random DAGs and on hand-built cases."""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from datetime import timedelta

import cloudpickle
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xlib_pipeline_core_strategies import (
    CANCELLED,
    FAILED,
    SKIPPED,
    SUCCEEDED,
    UPSTREAM_FAILED,
    InjectedFailure,
    Recorder,
    build_pipeline,
    dags,
)

from xlib_pipeline import (
    ConditionError,
    Pipeline,
    PipelineManager,
    PipelineResult,
    Status,
    TaskFailedError,
)
from xlib_pipeline._outcomes import new_run_id

cloudpickle.register_pickle_by_value(sys.modules[__name__])

# One manager per executor setting, shared by the examples of a property (cheap to reuse).
_MANAGERS: dict[tuple, PipelineManager] = {}


def manager_for(**config) -> PipelineManager:
    key = tuple(sorted(config.items()))
    pm = _MANAGERS.get(key)
    if pm is None:
        pm = _MANAGERS[key] = PipelineManager(config, entry_points=False)
    return pm


@pytest.fixture(scope="module", autouse=True)
def _close_managers():
    yield
    for pm in _MANAGERS.values():
        pm.close()
    _MANAGERS.clear()


def check_against_model(spec, result: PipelineResult, recorder: Recorder | None) -> None:
    """Assert statuses, outputs, inputs, ordering and exactly-once against the model."""
    expected = spec.expected()
    got = {name: result.tasks[name].status for name in result.tasks}
    assert got == expected
    inputs = spec.expected_inputs(expected)
    for node in spec.nodes:
        tr = result.tasks[node.name]
        status = expected[node.name]
        if status is SUCCEEDED:
            assert tr.output["task"] == node.name
            assert tr.output["got"] == inputs[node.name]
            assert tr.attempts == 1
            assert tr.started is not None and tr.finished is not None
        else:
            assert tr.output is None
        if status is FAILED:
            assert type(tr.error).__name__ == "InjectedFailure"
            assert f"injected failure in {node.name}" in str(tr.error)
        if status in (SKIPPED, UPSTREAM_FAILED):
            assert tr.attempts == 0 and tr.started is None
    assert result.success is all(s is SUCCEEDED or s is SKIPPED for s in expected.values())
    assert result.status == ("succeeded" if result.success else "failed")
    if recorder is None:
        return
    ran = {n.name for n in spec.nodes if expected[n.name] in (SUCCEEDED, FAILED)}
    for node in spec.nodes:
        calls = recorder.count("start", node.name)
        assert calls == (1 if node.name in ran else 0), node.name
        if node.name in ran:
            start = recorder.index("start", node.name)
            for dep in node.deps:
                if expected[dep] in (SUCCEEDED, FAILED):
                    assert recorder.index("end", dep) < start, (dep, node.name)
            args = recorder.of("start")[[t for t, _ in recorder.of("start")].index(node.name)][1]
            for dep, arg in zip(node.deps, args):
                if expected[dep] is SUCCEEDED:
                    # the very object the upstream returned, in depends_on order
                    assert arg is result.tasks[dep].output
                else:
                    assert arg is None
    # a condition is asked only when the task could run, with the task's own arguments
    asked = dict(recorder.of("condition"))
    for node in spec.nodes:
        if node.condition is None:
            assert node.name not in asked
            continue
        ups = [expected[d] for d in node.deps]
        reachable = not any(u in (FAILED, UPSTREAM_FAILED) for u in ups) and (
            node.collect or not any(u is SKIPPED for u in ups)
        )
        assert (node.name in asked) is reachable
        if reachable:
            assert tuple(a["task"] if a else None for a in asked[node.name]) == inputs[node.name]


class TestRandomDags:
    @given(dags(max_nodes=10))
    def test_inline(self, spec):
        """Inline runs agree with the reference model."""
        rec = Recorder()
        result = manager_for().execute_pipeline(build_pipeline(spec, recorder=rec), parallel=False)
        check_against_model(spec, result, rec)

    @given(dags(max_nodes=12), st.integers(1, 4))
    def test_threads(self, spec, workers):
        """Threaded runs with 1-4 workers agree with the reference model."""
        rec = Recorder()
        pm = manager_for(max_workers=workers)
        result = pm.execute_pipeline(build_pipeline(spec, recorder=rec))
        check_against_model(spec, result, rec)

    @given(dags(max_nodes=12), st.sampled_from(["intelligent", "fifo"]), st.booleans())
    def test_strategies_and_hand_off(self, spec, strategy, optimize):
        """Both execution strategies, with and without dependency optimization, agree."""
        rec = Recorder()
        pm = manager_for(
            max_workers=3, execution_strategy=strategy, dependency_optimization=optimize
        )
        result = pm.execute_pipeline(build_pipeline(spec, recorder=rec))
        check_against_model(spec, result, rec)

    @pytest.mark.slow
    @settings(max_examples=6)
    @given(spec=dags(max_nodes=6, max_deps=3))
    def test_processes(self, spec, tmp_path_factory):
        """Runs in worker processes agree with the model; each task body ran exactly once."""
        markers = tmp_path_factory.mktemp("calls")
        rec = Recorder()  # only conditions use it: they run in the driver
        pm = manager_for(max_workers=2)
        p = build_pipeline(spec, condition_recorder=rec, marker_dir=str(markers))
        result = pm.execute_pipeline(p, executor="processes")
        check_against_model(spec, result, None)
        expected = spec.expected()
        for node in spec.nodes:
            calls = len(list(markers.glob(f"{node.name}.*")))
            assert calls == (1 if expected[node.name] in (SUCCEEDED, FAILED) else 0)
            if expected[node.name] is SUCCEEDED:
                assert result.tasks[node.name].output["pid"] != os.getpid()


class TestStopOnFailure:
    @given(dags(max_nodes=10, conditions=False, collect=False))
    def test_inline_stop_starts_nothing_after_a_failure(self, spec):
        """With on_failure="stop", nothing starts after the first failure; the rest is cancelled."""
        rec = Recorder()
        pm = manager_for(on_failure="stop")
        result = pm.execute_pipeline(build_pipeline(spec, recorder=rec), parallel=False)
        expected = spec.expected()
        statuses = {n: result.tasks[n].status for n in result.tasks}
        failed = [n for n, s in statuses.items() if s is FAILED]
        assert len(failed) <= 1
        if not failed:
            assert statuses == expected
            return
        first = failed[0]
        assert result.error.task == first
        cut = rec.index("end", first)
        started_after = [t for e, t, _ in rec.events[cut:] if e == "start"]
        assert started_after == []
        for name, status in statuses.items():
            assert status in (expected[name], CANCELLED, UPSTREAM_FAILED)
            if status is SUCCEEDED:
                assert rec.index("end", name) < cut
        assert any(s is CANCELLED for s in statuses.values()) or all(
            s is not SUCCEEDED or rec.index("end", n) < cut for n, s in statuses.items()
        )
        assert result.success is False and result.status == "failed"

    def test_independent_branch_cancelled_with_stop(self):
        """With "stop", a branch independent of the failure is cancelled, never run."""
        p = Pipeline("stop")
        ran = []
        p.add_task("boom", lambda: 1 / 0)
        p.add_task("after_boom", lambda x: ran.append("after_boom"), depends_on=["boom"])
        p.add_task("other", lambda: ran.append("other"))
        p.add_task("other_next", lambda x: ran.append("other_next"), depends_on=["other"])
        pm = PipelineManager(
            {"on_failure": "stop", "execution_strategy": "fifo"}, entry_points=False
        )
        result = pm.execute_pipeline(p, parallel=False)
        assert ran == []
        assert result.tasks["boom"].status is FAILED
        assert result.tasks["after_boom"].status is UPSTREAM_FAILED
        assert result.tasks["other"].status is CANCELLED
        assert result.tasks["other_next"].status is CANCELLED
        assert result.error.task == "boom"

    def test_continue_runs_independent_branches(self):
        """By default (on_failure="continue") branches independent of a failure still run."""
        p = Pipeline("continue")
        p.add_task("boom", lambda: 1 / 0)
        p.add_task("after_boom", lambda x: x, depends_on=["boom"])
        p.add_task("other", lambda: "fine")
        p.add_task("other_next", lambda x: x + "!", depends_on=["other"])
        pm = PipelineManager({"execution_strategy": "fifo"}, entry_points=False)
        result = pm.execute_pipeline(p, parallel=False)
        assert result.tasks["other_next"].status is SUCCEEDED
        assert result.tasks["other_next"].output == "fine!"
        assert result.tasks["after_boom"].status is UPSTREAM_FAILED
        assert result.final_result == {"after_boom": None, "other_next": "fine!"}
        assert not result.success


def _failing_pipeline() -> Pipeline:
    p = Pipeline("fails")
    p.add_task("load", lambda: {"rows": 3})

    def transform(data):
        rows = data["rows"]
        raise KeyError(f"column_{rows}")

    p.add_task("transform", transform, depends_on=["load"])
    p.add_task("report", lambda x: x, depends_on=["transform"])
    return p


class TestFailureReporting:
    def test_first_failure_names_task_and_keeps_traceback(self, manager):
        """result.error names the failed task, keeps the original exception and traceback."""
        result = manager.execute_pipeline(_failing_pipeline())
        assert not result.success and result.status == "failed"
        err = result.error
        assert isinstance(err, TaskFailedError)
        assert err.task == "transform" and result.failed_task == "transform"
        assert isinstance(err.cause, KeyError) and err.cause.args == ("column_3",)
        assert err.__cause__ is err.cause
        assert "'transform'" in str(err) and "KeyError" in str(err)
        assert "in transform" in err.traceback
        assert 'raise KeyError(f"column_{rows}")' in err.traceback
        assert result.tasks["transform"].error is err.cause
        assert result.tasks["report"].status is UPSTREAM_FAILED
        assert result.tasks["load"].output == {"rows": 3}

    def test_raise_for_status(self, manager):
        """raise_for_status raises the run's error, or returns the result."""
        with pytest.raises(TaskFailedError, match="transform"):
            manager.execute_pipeline(_failing_pipeline()).raise_for_status()
        p = Pipeline("ok")
        p.add_task("a", lambda: 1)
        result = manager.execute_pipeline(p)
        assert result.raise_for_status() is result

    def test_first_failure_is_the_earliest(self, manager):
        """With two failures in sequence the first one is reported."""
        p = Pipeline("two")
        p.add_task("one", lambda: 1 / 0)
        p.add_task("two", lambda: [][1])
        result = manager.execute_pipeline(p, parallel=False)
        assert result.error.task in ("one", "two")
        assert type(result.error.cause) is (
            ZeroDivisionError if result.error.task == "one" else IndexError
        )

    def test_condition_that_raises_fails_the_task(self, manager):
        """A condition raising is a ConditionError failure of its task, not a crash."""
        p = Pipeline("cond_raise")
        p.add_task("a", lambda: {})
        p.add_task("b", lambda x: x, depends_on=["a"], condition=lambda x: x["missing"])
        p.add_task("c", lambda: "independent")
        result = manager.execute_pipeline(p)
        assert result.tasks["b"].status is FAILED
        err = result.tasks["b"].error
        assert isinstance(err, ConditionError) and err.task == "b"
        assert "KeyError" in str(err)
        assert result.tasks["c"].status is SUCCEEDED

    def test_injected_failure_is_the_raised_type(self, manager):
        """Exceptions keep their own type in threads."""
        p = Pipeline("typed")

        def bad():
            raise InjectedFailure("nope")

        p.add_task("bad", bad)
        result = manager.execute_pipeline(p)
        assert isinstance(result.tasks["bad"].error, InjectedFailure)


class TestConditionsAndMerge:
    def test_condition_gets_all_upstreams_positionally(self, manager):
        """With several upstreams, condition receives the same positional arguments as the task."""
        seen = []
        p = Pipeline("cond_multi")
        p.add_task("x", lambda: 1)
        p.add_task("y", lambda: 2)

        def cond(a, b):
            seen.append((a, b))
            return a < b

        p.add_task(
            "z", lambda a, b: a + b, depends_on=["y", "x"], condition=lambda a, b: cond(a, b)
        )
        result = manager.execute_pipeline(p)
        assert seen == [(2, 1)]
        assert result.tasks["z"].status is SKIPPED
        assert result.success  # a skipped task is not a failure

    def test_collect_available_receives_none_for_skipped(self, manager):
        """collect_available passes None for skipped upstreams and runs anyway."""
        p = Pipeline("collect")
        p.add_task("src", lambda: 5)
        p.add_task("yes", lambda v: v * 2, depends_on=["src"], condition=lambda v: True)
        p.add_task("no", lambda v: v * 3, depends_on=["src"], condition=lambda v: False)
        p.add_task(
            "merge",
            lambda *args: args,
            depends_on=["no", "yes"],
            merge_strategy="collect_available",
        )
        p.add_task("strict", lambda a, b: (a, b), depends_on=["no", "yes"])
        result = manager.execute_pipeline(p)
        assert result.tasks["merge"].output == (None, 10)
        assert result.tasks["strict"].status is SKIPPED
        assert result.final_result == {"merge": (None, 10), "strict": None}

    def test_collect_available_does_not_hide_failures(self, manager):
        """A failed upstream still makes a collect_available task upstream_failed."""
        p = Pipeline("collect_fail")
        p.add_task("bad", lambda: 1 / 0)
        p.add_task("good", lambda: 1)
        p.add_task(
            "merge", lambda *a: a, depends_on=["bad", "good"], merge_strategy="collect_available"
        )
        result = manager.execute_pipeline(p)
        assert result.tasks["merge"].status is UPSTREAM_FAILED

    def test_skip_propagates_down_a_chain(self, manager):
        """A skip travels down every all_success descendant."""
        p = Pipeline("skips")
        p.add_task("a", lambda: 0, condition=lambda: False)
        p.add_task("b", lambda x: x, depends_on=["a"])
        p.add_task("c", lambda x: x, depends_on=["b"])
        result = manager.execute_pipeline(p)
        assert [result.tasks[n].status for n in "abc"] == [SKIPPED] * 3
        assert result.success and result.final_result is None


class TestResults:
    def _diamond(self) -> Pipeline:
        p = Pipeline("diamond")
        p.add_task("top", lambda: 1)
        p.add_task("left", lambda x: x + 1, depends_on=["top"])
        p.add_task("right", lambda x: x + 2, depends_on=["top"])
        p.add_task("bottom", lambda a, b: a * b, depends_on=["left", "right"])
        return p

    def test_single_sink_final_result(self, manager):
        """With one sink task final_result is that task's output."""
        assert manager.execute_pipeline(self._diamond()).final_result == 6

    def test_several_sinks_final_result_is_a_dict(self, manager):
        """With several sinks final_result maps each sink name to its output."""
        p = self._diamond()
        p.add_task("side", lambda x: "side", depends_on=["top"])
        result = manager.execute_pipeline(p)
        assert result.final_result == {"bottom": 6, "side": "side"}

    def test_result_reads_as_a_mapping(self, manager):
        """PipelineResult answers result["final_result"] and result.get("success")."""
        result = manager.execute_pipeline(self._diamond())
        assert result["final_result"] == 6
        assert result.get("success") is True
        assert result.get("error") is None
        assert result.get("no_such_key") is None
        assert result["run_id"] == result.run_id
        assert set(result) >= {"success", "final_result", "error", "tasks", "run_id"}
        assert dict(result)["pipeline"] == "diamond"
        with pytest.raises(KeyError):
            result["nope"]

    def test_task_results(self, manager):
        """Per-task results carry status, output, attempts and times."""
        result = manager.execute_pipeline(self._diamond())
        assert list(result.tasks) == ["top", "left", "right", "bottom"]
        top, bottom = result.tasks["top"], result.tasks["bottom"]
        assert bottom.status is Status.SUCCEEDED and bottom.succeeded
        assert bottom.attempts == 1 and bottom.output == result.final_result
        assert bottom.duration == bottom.finished - bottom.started
        assert bottom.started_at.tzinfo is not None
        assert abs(bottom.finished_at - bottom.started_at - timedelta(seconds=bottom.duration)) < (
            timedelta(microseconds=2)
        )
        # times follow the graph: the run brackets every task, upstreams end before downstreams
        assert result.started <= top.started <= top.finished <= bottom.started
        assert bottom.finished <= result.finished
        assert result.duration == result.finished - result.started
        assert result.tasks.by_status("succeeded") == ["top", "left", "right", "bottom"]
        assert result.tasks.counts() == {Status.SUCCEEDED: 4}

    def test_run_ids_are_unique_and_sortable(self, manager):
        """Each run gets a new id: a UUIDv7 whose leading 48 bits are its start in ms, so
        ids from different milliseconds sort by time."""
        ids = [manager.execute_pipeline(self._diamond()).run_id for _ in range(3)]
        assert len(set(ids)) == 3
        stamps = []
        for _ in range(5):
            before = int(time.time() * 1000)
            rid = new_run_id()
            after = int(time.time() * 1000)
            u = uuid.UUID(rid)
            assert u.version == 7 and u.variant == uuid.RFC_4122
            ms = u.int >> 80
            assert before <= ms <= after
            stamps.append((ms, rid))
            while int(time.time() * 1000) == after:  # next id in a later millisecond
                time.sleep(0.0005)
        assert [r for _, r in stamps] == sorted(r for _, r in stamps)

    def test_explicit_run_id(self, manager):
        """A run id given by the caller is used."""
        assert manager.execute_pipeline(self._diamond(), run_id="my-run").run_id == "my-run"

    def test_parallel_tasks_run_concurrently(self, manager):
        """Independent tasks overlap in threads (they wait for each other at a barrier)."""
        barrier = threading.Barrier(3, timeout=30)
        p = Pipeline("barrier")
        for n in ("a", "b", "c"):
            p.add_task(n, lambda: barrier.wait() is not None)
        result = PipelineManager({"max_workers": 3}, entry_points=False).execute_pipeline(p)
        assert result.success, result.error


def test_counts_match_by_status_on_a_mixed_run(manager: PipelineManager) -> None:
    """TaskResults.counts() is by_status() counted in one pass: every status a task ended in."""
    p = Pipeline("mixed_counts")
    p.add_task("ok", lambda: 1)
    p.add_task("bad", lambda: 1 / 0)
    p.add_task("after_bad", lambda x: x, depends_on=["bad"])
    p.add_task("after_ok", lambda x: x, depends_on=["ok"])
    result = manager.execute_pipeline(p, parallel=False)
    counts = result.tasks.counts()
    assert counts == {Status.SUCCEEDED: 2, Status.FAILED: 1, Status.UPSTREAM_FAILED: 1}
    assert counts == {
        s: len(result.tasks.by_status(s)) for s in Status if result.tasks.by_status(s)
    }
