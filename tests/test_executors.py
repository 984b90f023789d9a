"""Executors: worker processes (by value, errors, serialization), timeouts, where tasks run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import cloudpickle
import pytest

from xlib_pipeline import (
    Isolation,
    Pipeline,
    PipelineManager,
    SerializationError,
    Status,
    TaskFailedError,
    TaskTimeoutError,
    hookimpl,
    remote_traceback,
)

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.slow


class ToProcesses:
    """Test plugin: run the tasks named in ``names`` in worker processes, the rest in threads."""

    name = "to_processes"

    def __init__(self, *names: str) -> None:
        self.names = set(names)

    @hookimpl
    def isolate(self, task, run):
        if task.name in self.names:
            return Isolation(executor="processes")
        return None


class TestProcessExecutor:
    def test_results_and_closures(self, process_manager):
        """Closures over local state run in workers and their results come back."""
        factor = 7
        p = Pipeline("closures")
        p.add_task("base", lambda: list(range(5)))
        p.add_task("scaled", lambda xs: [x * factor for x in xs], depends_on=["base"])
        p.add_task("total", lambda xs: {"sum": sum(xs), "pid": os.getpid()}, depends_on=["scaled"])
        result = process_manager.execute_pipeline(p, executor="processes")
        assert result.success, result.error
        assert result.final_result["sum"] == 70
        assert result.final_result["pid"] != os.getpid()

    def test_worker_pids_differ_from_driver(self, process_manager):
        """Task bodies run in worker processes whose PIDs are not the driver's."""
        p = Pipeline("pids")
        for i in range(4):
            p.add_task(f"t{i}", lambda: os.getpid())
        result = process_manager.execute_pipeline(p, executor="processes")
        pids = set(result.final_result.values())
        assert os.getpid() not in pids
        live = set(process_manager.executor("processes").worker_pids())
        assert pids <= live and live
        assert len(live) <= 2  # max_workers of the module's manager

    def test_script_closures_without_main_guard(self, tmp_path):
        """A script with closures in __main__ and no main guard runs in processes unchanged."""
        script = tmp_path / "script.py"
        script.write_text(
            textwrap.dedent(
                """
                import os
                from xlib_pipeline import Pipeline, PipelineManager

                print("script body ran in", os.getpid(), flush=True)
                OFFSET = 100

                def helper(x):
                    return x + OFFSET

                def make():
                    p = Pipeline("script")
                    seed = 5

                    @p.task("a")
                    def a():
                        return helper(seed)

                    @p.task("b", depends_on=["a"])
                    def b(value):
                        return {"value": value, "pid": os.getpid()}

                    return p

                pm = PipelineManager({"max_workers": 2}, entry_points=False)
                result = pm.execute_pipeline(make(), executor="processes")
                print("RESULT", result.success, result.final_result["value"],
                      result.final_result["pid"] != os.getpid(), flush=True)
                pm.close()
                """
            )
        )
        proc = subprocess.run(
            [sys.executable, str(script)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr
        assert "RESULT True 105 True" in proc.stdout
        # the workers did not re-run the user's script
        assert proc.stdout.count("script body ran in") == 1

    def test_task_exception_keeps_type_and_remote_traceback(self, process_manager):
        """A task's exception comes back with its own type and the worker's traceback."""
        p = Pipeline("remote_error")

        def explode():
            data = {"a": 1}
            return data["missing_key"]

        p.add_task("explode", explode)
        p.add_task("after", lambda x: x, depends_on=["explode"])
        result = process_manager.execute_pipeline(p, executor="processes")
        err = result.tasks["explode"].error
        assert isinstance(err, KeyError) and err.args == ("missing_key",)
        tb = remote_traceback(err)
        assert tb is not None
        # cloudpickle sends code without its file name, so frames read "<dynamic-code>"
        assert "in explode" in tb and "KeyError: 'missing_key'" in tb
        assert isinstance(result.error, TaskFailedError) and result.error.task == "explode"
        assert "Remote traceback" in result.error.traceback
        assert result.tasks["after"].status is Status.UPSTREAM_FAILED

    def test_unpicklable_result(self, process_manager):
        """A result that cannot travel back is a SerializationError naming the task."""
        p = Pipeline("bad_result")
        p.add_task("lock", lambda: threading.Lock())
        result = process_manager.execute_pipeline(p, executor="processes")
        err = result.tasks["lock"].error
        assert isinstance(err, SerializationError)
        assert err.task == "lock" and "'lock'" in str(err)
        assert "result" in str(err)

    def test_unpicklable_function(self, process_manager):
        """A function closing over something unpicklable is a SerializationError naming it."""
        lock = threading.Lock()
        p = Pipeline("bad_fn")
        p.add_task("holds_lock", lambda: lock.locked())
        result = process_manager.execute_pipeline(p, executor="processes")
        err = result.tasks["holds_lock"].error
        assert isinstance(err, SerializationError) and err.task == "holds_lock"
        assert "function cannot be pickled" in str(err)

    def test_unpicklable_argument(self):
        """An upstream result (from a thread) that cannot go to a worker names the task."""
        p = Pipeline("bad_arg")
        p.add_task("make_lock", lambda: threading.Lock())
        p.add_task("use_lock", lambda lock: repr(lock), depends_on=["make_lock"])
        with PipelineManager(entry_points=False, plugins=[ToProcesses("use_lock")]) as pm:
            result = pm.execute_pipeline(p)
        assert result.tasks["make_lock"].status is Status.SUCCEEDED
        err = result.tasks["use_lock"].error
        assert isinstance(err, SerializationError) and err.task == "use_lock"
        assert "arguments cannot be pickled" in str(err)

    def test_task_function_pickles_without_its_pipeline(self):
        """Sending one task never pickles the rest of the pipeline (e.g. its conditions)."""
        lock = threading.Lock()
        p = Pipeline("light")

        @p.task("a")
        def a():
            return 1

        p.add_task("b", lambda x: x, depends_on=["a"], condition=lambda x: lock.locked() is False)
        blob = cloudpickle.dumps(p["a"].fn)
        assert cloudpickle.loads(blob)() == 1

    def test_isolate_hook_mixes_threads_and_processes(self):
        """Tasks the isolate hook sends to processes run there; the others in the driver."""
        p = Pipeline("mixed")
        p.add_task("here", lambda: os.getpid())
        p.add_task("there", lambda x: (x, os.getpid()), depends_on=["here"])
        with PipelineManager(entry_points=False, plugins=[ToProcesses("there")]) as pm:
            result = pm.execute_pipeline(p)
        here, there = result.final_result
        assert here == os.getpid() and there != os.getpid()


class TestTimeouts:
    @pytest.mark.parametrize("executor", ["threads", "processes"])
    def test_timeout_fails_task_and_dependents(self, executor):
        """A task sleeping past timeout=0.3 fails (TaskTimeoutError); dependents upstream_failed."""
        p = Pipeline(f"timeout_{executor}")
        p.add_task("slow", lambda: time.sleep(3) or "late", timeout=0.3)
        p.add_task("after", lambda x: x, depends_on=["slow"])
        p.add_task("quick", lambda: "ok", timeout=30)
        with PipelineManager({"max_workers": 2}, entry_points=False) as pm:
            result = pm.execute_pipeline(p, executor=executor)
        err = result.tasks["slow"].error
        assert isinstance(err, TaskTimeoutError) and err.task == "slow"
        assert "'slow'" in str(err) and "0.3" in str(err)
        assert result.tasks["after"].status is Status.UPSTREAM_FAILED
        assert result.tasks["quick"].output == "ok"
        assert result.error.task == "slow"

    def test_process_timeout_kills_the_worker(self):
        """In processes the timed-out worker is killed, and the next task gets a fresh one."""
        p = Pipeline("kill")
        p.add_task("hang", lambda: time.sleep(30) or os.getpid(), timeout=0.3)
        with PipelineManager({"max_workers": 1}, entry_points=False) as pm:
            result = pm.execute_pipeline(p, executor="processes")
            assert isinstance(result.tasks["hang"].error, TaskTimeoutError)
            assert "killed" in str(result.tasks["hang"].error)
            assert pm.executor("processes").worker_pids() == []
            q = Pipeline("next")
            q.add_task("pid", lambda: os.getpid())
            assert pm.execute_pipeline(q, executor="processes").final_result != os.getpid()

    def test_bad_timeout_value(self, manager):
        """A non-positive timeout is refused before running, naming the task."""
        p = Pipeline("bad_timeout")
        p.add_task("t", lambda: 1, timeout=-1)
        with pytest.raises(ValueError, match="'t'"):
            manager.execute_pipeline(p)


class TestLocalExecutors:
    def test_inline_runs_in_the_calling_thread(self, manager):
        """parallel=False runs every task in the caller's thread."""
        p = Pipeline("inline")
        for i in range(3):
            p.add_task(f"t{i}", lambda: threading.get_ident())
        result = manager.execute_pipeline(p, parallel=False)
        assert set(result.final_result.values()) == {threading.get_ident()}

    def test_threads_run_off_the_calling_thread(self, manager):
        """parallel=True (the default) runs tasks on scheduler lanes, not the caller's thread."""
        p = Pipeline("threads")
        for i in range(3):
            p.add_task(f"t{i}", lambda: threading.current_thread().name)
        result = manager.execute_pipeline(p)
        assert all(n.startswith("xlib-lane-") for n in result.final_result.values())

    def test_single_task_runs_without_a_lane_thread(self, manager):
        """A one-task pipeline needs no extra thread: it runs in the caller's thread."""
        p = Pipeline("one")
        p.add_task("t", lambda: threading.get_ident())
        assert manager.execute_pipeline(p).final_result == threading.get_ident()

    def test_unknown_executor(self, manager):
        """An unknown executor name is refused with the registered ones listed."""
        p = Pipeline("x")
        p.add_task("t", lambda: 1)
        with pytest.raises(ValueError, match=r"'procesess'.*did you mean 'processes'"):
            manager.execute_pipeline(p, executor="procesess")


def test_decorated_module_function_pickles_by_reference(tmp_path, monkeypatch):
    """@pipeline.task returns a wrapper to user code (direct calls can be observed), yet the
    task's own function still pickles by reference for worker processes."""
    import importlib
    import pickle as std_pickle

    import cloudpickle

    (tmp_path / "xlib_byref_mod.py").write_text(
        "from xlib_pipeline import Pipeline\n"
        "p = Pipeline('byref')\n"
        "@p.task('step')\n"
        "def step():\n"
        "    return 7\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module("xlib_byref_mod")
    fn = mod.p["step"].fn
    assert fn is mod.step.__wrapped__
    data = cloudpickle.dumps(fn)
    assert b"xlib_byref_mod" in data and len(data) < 200  # a reference, not the code
    assert std_pickle.loads(data) is fn
    assert mod.step() == 7
