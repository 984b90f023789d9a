"""The dask plugin against a real local cluster (two fresh worker processes, one per module)."""

from __future__ import annotations

import os
import threading

import pytest
from xlib_pipeline_dask import STASH, DaskPlugin, RemoteResult

from xlib_pipeline import (
    ConfigError,
    Pipeline,
    PipelineManager,
    TaskFailedError,
    hookimpl,
)

pytestmark = pytest.mark.slow


class Recorder:
    """A plugin recording where hooks run (they must stay in the driver)."""

    name = "recorder"

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.outcomes: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    @hookimpl
    def before_task(self, task, run, inputs):
        with self.lock:
            self.pids.append(os.getpid())

    @hookimpl
    def after_task(self, task, run, outcome):
        with self.lock:
            self.outcomes.append((task.name, str(outcome.status)))


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("XLIB_PIPELINE_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(scope="module")
def pm(recorder: Recorder, tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("xlib-home")
    old = os.environ.get("XLIB_PIPELINE_HOME")
    os.environ["XLIB_PIPELINE_HOME"] = str(home)
    manager = PipelineManager(
        {"distributed": {"n_workers": 2, "threads_per_worker": 1}},
        plugins=[recorder],
    )
    try:
        yield manager
    finally:
        manager.close()
        if old is None:
            os.environ.pop("XLIB_PIPELINE_HOME", None)
        else:
            os.environ["XLIB_PIPELINE_HOME"] = old


def _plugin(pm: PipelineManager) -> DaskPlugin:
    plugin = pm.get_plugin("dask")
    assert isinstance(plugin, DaskPlugin)
    return plugin


class TestRemoteExecution:
    def test_tasks_run_in_worker_processes(self, pm, recorder):
        """Task bodies run in Dask worker processes; hooks run in the driver."""
        p = Pipeline("pids")

        @p.task("root")
        def root():
            return os.getpid()

        @p.task("left", depends_on=["root"])
        def left(x):
            return (x, os.getpid())

        @p.task("right", depends_on=["root"])
        def right(x):
            return (x, os.getpid())

        recorder.pids.clear()
        result = pm.execute_pipeline(p, distributed=True)
        assert result.success, result.error
        driver = os.getpid()
        worker_pids = {result.tasks["root"].output}
        for name in ("left", "right"):
            upstream_pid, pid = result.tasks[name].output
            worker_pids.add(pid)
            assert upstream_pid == result.tasks["root"].output
        assert driver not in worker_pids
        handle = _plugin(pm).handle
        assert handle.source == "local" and handle.address.startswith("tcp://127.0.0.1:")
        client = handle.client()
        assert len(client.nthreads()) == 2
        assert recorder.pids and set(recorder.pids) == {driver}
        assert ("left", "succeeded") in recorder.outcomes

    def test_async_tasks_run_to_completion_on_workers(self, pm):
        """A coroutine task is awaited on the Dask worker; its output is the awaited value."""
        import asyncio

        p = Pipeline("async-remote")

        @p.task("fetch")
        async def fetch():
            await asyncio.sleep(0.01)
            return os.getpid()

        @p.task("combine", depends_on=["fetch"])
        def combine(pid):
            return (pid, os.getpid())

        @p.task("forgot", depends_on=["combine"])
        def forgot(_):
            async def inner():
                return 1

            return inner()

        result = pm.execute_pipeline(p, distributed=True)
        fetched, combined = result.tasks["combine"].output
        assert fetched != os.getpid() and combined != os.getpid()
        err = result.tasks["forgot"].error
        assert type(err).__name__ == "LazyResultError" and "'forgot'" in str(err)

    def test_remote_failure_traceback_reaches_result(self, pm):
        """A failing remote task's traceback, with the worker frame, is in result.error."""
        p = Pipeline("fails")

        @p.task("load")
        def load():
            return {"rows": 3}

        @p.task("explode", depends_on=["load"])
        def explode_in_worker(data):
            raise ValueError(f"cannot handle {len(data)} field(s)")

        result = pm.execute_pipeline(p, distributed=True)
        assert not result.success
        err = result.error
        assert isinstance(err, TaskFailedError) and err.task == "explode"
        assert isinstance(err.cause, ValueError)
        tb = err.traceback
        assert "Remote traceback" in tb
        assert "dask worker tcp://" in tb
        assert "in explode_in_worker" in tb
        assert "ValueError: cannot handle 1 field(s)" in tb
        assert f"pid {os.getpid()}," not in tb

    def test_map_over_hundred_partitions_in_order(self, pm):
        """map_over makes each partition its own Dask task; results come back in order."""
        p = Pipeline("fanout")

        @p.task("partition")
        def partition():
            return [{"id": i, "rows": i * 10} for i in range(100)]

        @p.task("offset")
        def offset():
            return 7

        @p.task("process", depends_on=["offset", "partition"], map_over=1)
        def process(off, part):
            return (part["id"], part["rows"] + off, os.getpid())

        @p.task("total", depends_on=["process"])
        def total(parts):
            return [pid_free[:2] for pid_free in parts]

        result = pm.execute_pipeline(p, distributed=True)
        assert result.success, result.error
        out = result.tasks["process"].output
        assert [o[0] for o in out] == list(range(100))
        assert [o[1] for o in out] == [i * 10 + 7 for i in range(100)]
        assert os.getpid() not in {o[2] for o in out}
        assert result.final_result == [(i, i * 10 + 7) for i in range(100)]

    def test_map_partition_failure_names_partition(self, pm):
        """A failing partition fails the task and its remote traceback names the partition."""
        p = Pipeline("fanout_fail")

        @p.task("items")
        def items():
            return list(range(10))

        @p.task("check", depends_on=["items"], distribute={"map_over": 0, "parallelism": 3})
        def check(i):
            if i == 6:
                raise RuntimeError("bad partition")
            return i

        result = pm.execute_pipeline(p, distributed=True)
        assert not result.success
        assert "partition 6 of 10" in result.error.traceback
        assert "RuntimeError: bad partition" in result.error.traceback

    def test_keep_remote_passes_futures_downstream(self, pm):
        """keep_remote leaves an output on the cluster; a downstream dask task gets the value."""
        p = Pipeline("keep")

        @p.task("big")
        @p.distribute_across_nodes(keep_remote=True)
        def big():
            return list(range(1000))

        @p.task("parts", depends_on=["big"], distribute={"keep_remote": True, "map_over": 0})
        def parts(x):
            return x * 2

        @p.task("summary", depends_on=["big", "parts"])
        def summary(values, doubled):
            return (len(values), sum(doubled))

        result = pm.execute_pipeline(p, distributed=True)
        assert result.success, result.error
        assert isinstance(result.tasks["big"].output, RemoteResult)
        assert result.final_result == (1000, 2 * sum(range(1000)))
        assert result.tasks["parts"].output.result()[:3] == [0, 2, 4]

    def test_distributed_mode_config_and_opt_out(self, pm):
        """distributed=False keeps a run local even when the cluster is up."""
        p = Pipeline("local")

        @p.task("where")
        def where():
            return os.getpid()

        assert pm.execute_pipeline(p, distributed=False).final_result == os.getpid()
        assert pm.execute_pipeline(p, executor="dask").final_result != os.getpid()


class TestInert:
    def test_plain_manager_untouched(self):
        """Without distributed config or flag nothing starts and the run uses threads."""
        seen = {}

        class Spy:
            name = "spy"

            @hookimpl
            def after_pipeline(self, run, result):
                seen["executor"] = run.executor
                seen["dask_state"] = STASH in run.stash

        pm = PipelineManager(plugins=[Spy()])
        p = Pipeline("plain")

        @p.task("a")
        def a():
            return os.getpid()

        assert pm.execute_pipeline(p).final_result == os.getpid()
        assert seen["executor"] == "threads" and not seen["dask_state"]
        assert not _plugin(pm).handle.started

    def test_map_over_without_cluster_runs_locally(self):
        """A map_over task in a non-distributed run maps item by item in the driver."""
        pm = PipelineManager()
        p = Pipeline("local_map")

        @p.task("xs")
        def xs():
            return [1, 2, 3]

        @p.task("sq", depends_on=["xs"], map_over=0)
        def sq(x):
            return (x * x, os.getpid())

        result = pm.execute_pipeline(p)
        assert result.final_result == [(1, os.getpid()), (4, os.getpid()), (9, os.getpid())]
        assert not _plugin(pm).handle.started


class TestConfig:
    def test_unknown_section_key(self):
        """A misspelled key of the distributed section names the key."""
        with pytest.raises(ConfigError, match="n_worker"):
            PipelineManager({"distributed": {"n_worker": 2}})

    def test_bad_option_values(self):
        """Bad option values are refused before anything runs."""
        pm = PipelineManager()
        p = Pipeline("bad")

        @p.task("a", map_over="first")
        def a():
            return 1

        with pytest.raises(ValueError, match="map_over"):
            pm.execute_pipeline(p)
        ok = Pipeline("ok")
        ok.add_task("b", lambda: 1)
        with pytest.raises(ConfigError, match="distributed"):
            pm.execute_pipeline(ok, distributed="yes")

    def test_dask_cluster_type_needs_address(self, monkeypatch):
        """cluster_type 'dask' without an address refuses the run with a clear error."""
        monkeypatch.delenv("XLIB_PIPELINE_DASK_ADDRESS", raising=False)
        pm = PipelineManager({"distributed_mode": True, "cluster_type": "dask"})
        p = Pipeline("needs")

        @p.task("a")
        def a():
            return 1

        with pytest.raises(ConfigError, match="XLIB_PIPELINE_DASK_ADDRESS"):
            pm.execute_pipeline(p)

    def test_unreachable_address_refuses_run(self):
        """An address nobody listens on fails fast with the address in the message."""
        from xlib_pipeline_dask import ClusterStartError

        pm = PipelineManager(
            {"distributed": {"address": "tcp://127.0.0.1:9", "startup_timeout": 2}}
        )
        p = Pipeline("unreachable")

        @p.task("a")
        def a():
            return 1

        with pytest.raises(ClusterStartError, match=r"127\.0\.0\.1:9"):
            pm.execute_pipeline(p, distributed=True)


class TestClusterShape:
    """auto_scaling and resource_management shape the local cluster the plugin starts."""

    def _handle(self, config):
        with PipelineManager(config) as manager:
            return _plugin(manager).handle

    def test_fixed_by_default(self):
        shape = self._handle({"distributed": {"n_workers": 3}}).local_shape()
        assert shape == {
            "workers": 3,
            "adaptive": None,
            "threads_per_worker": 1,
            "memory_limit": None,
        }

    def test_auto_scaling_and_resource_management(self):
        handle = self._handle(
            {
                "distributed": {"n_workers": 1, "minimum_workers": 2, "maximum_workers": 5},
                "auto_scaling": True,
                "resource_management": "kubernetes",
            }
        )
        shape = handle.local_shape()
        assert shape["adaptive"] == (2, 5) and shape["workers"] == 2
        assert shape["memory_limit"] == "auto"
        local = self._handle({"resource_management": "local"}).local_shape()
        assert local["memory_limit"] == 0

    def test_bounds_are_checked(self):
        with pytest.raises(ConfigError, match="maximum_workers"):
            PipelineManager({"distributed": {"minimum_workers": 4, "maximum_workers": 2}})

    def test_adaptive_local_cluster_really_adapts(self):
        """A real adaptive cluster: starts at the minimum and runs a pipeline."""
        config = {
            "distributed": {"n_workers": 1, "minimum_workers": 1, "maximum_workers": 2},
            "auto_scaling": True,
        }
        p = Pipeline("adaptive")
        p.add_task("a", lambda: os.getpid())
        with PipelineManager(config) as manager:
            result = manager.execute_pipeline(p, distributed=True)
            assert result.success and result.final_result != os.getpid()
            cluster = _plugin(manager).handle._cluster
            assert cluster._adaptive is not None
            assert cluster._adaptive.minimum == 1 and cluster._adaptive.maximum == 2

    def test_kubernetes_without_address_warns_visibly(self, monkeypatch):
        from xlib_pipeline import SettingWithoutEffectWarning

        monkeypatch.delenv("XLIB_PIPELINE_DASK_ADDRESS", raising=False)
        handle = self._handle({"cluster_type": "kubernetes"})
        with pytest.warns(SettingWithoutEffectWarning, match="distributed.address"):
            assert handle.target() == (None, "local")


class TestWorkerResources:
    def test_resources_map_to_dask_worker_resources(self, pm):
        p = Pipeline("dask-resources")

        @p.task("heavy", resources={"cpu": 1, "memory_gb": 0.01})
        def heavy():
            return os.getpid()

        result = pm.execute_pipeline(p, distributed=True)
        assert result.success, result.error
        assert result.final_result != os.getpid()  # ran on a worker that has the resources
        workers = _plugin(pm).handle.client().scheduler_info()["workers"].values()
        assert all(w["resources"]["cpu"] >= 1 for w in workers)
        assert all(w["resources"]["memory_gb"] > 0 for w in workers)

    def test_cluster_without_the_resource_is_refused_by_name(self, pm):
        from xlib_pipeline_dask._executor import worker_resources

        from xlib_pipeline import ResourceError, Task

        client = _plugin(pm).handle.client()
        task = Task(name="needs_gpu", fn=lambda: 1, options={"resources": {"gpu": 1}})
        with pytest.raises(ResourceError, match=r"'needs_gpu'.*gpu=1"):
            worker_resources(client, task)
