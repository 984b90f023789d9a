"""The executor against a stock ``distributed.LocalCluster`` with two worker processes.

The plugin's own embedded cluster starts workers as fresh interpreters (see docs); here the
test starts the library's standard LocalCluster itself and hands its address over through
config, as a user with an existing cluster would.
"""

from __future__ import annotations

import os

import pytest

from xlib_pipeline import Pipeline, PipelineManager

distributed = pytest.importorskip("distributed")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as c:
        yield c


@pytest.fixture(scope="module")
def pm(cluster, tmp_path_factory):
    manager = PipelineManager(
        {"distributed": {"address": cluster.scheduler_address}}, entry_points=True
    )
    yield manager
    manager.close()


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("XLIB_PIPELINE_HOME", str(tmp_path / "home"))


class TestStockLocalCluster:
    def test_bodies_run_in_the_two_worker_processes(self, cluster, pm):
        """Every task body ran in one of the LocalCluster's worker processes, not the driver."""
        with distributed.Client(cluster) as client:
            worker_pids = set(client.run(os.getpid).values())
        assert len(worker_pids) == 2 and os.getpid() not in worker_pids
        p = Pipeline("stock_pids")
        p.add_task("seed", lambda: list(range(40)))
        for k in range(8):
            p.add_task(f"w{k}", lambda xs, k=k: (k, os.getpid(), sum(xs)), depends_on=["seed"])
        result = pm.execute_pipeline(p, distributed=True)
        assert result.success, result.error
        pids = {result.tasks[f"w{k}"].output[1] for k in range(8)}
        assert pids <= worker_pids
        assert all(result.tasks[f"w{k}"].output[2] == 780 for k in range(8))

    def test_remote_traceback_and_ordered_map(self, pm):
        """A failing remote task's traceback reaches the result; a 100-way map keeps order."""
        p = Pipeline("stock_map")
        p.add_task("parts", lambda: list(range(100)))
        p.add_task("square", lambda x: x * x, depends_on=["parts"], map_over=0)

        def boom(squares):
            raise LookupError(f"no partition {len(squares)}")

        p.add_task("explode", boom, depends_on=["square"])
        result = pm.execute_pipeline(p, distributed=True)
        assert result.tasks["square"].output == [i * i for i in range(100)]
        assert result.failed_task == "explode"
        assert isinstance(result.error.cause, LookupError)
        assert "no partition 100" in result.error.traceback
