"""Dask results stay on the cluster (issue 16, item 4).

An intermediate output reaches the driver during the run only when something there needs
it: the run store, a hook that reads outputs (audit digests, PII scanning), a condition, a
contract, the cache, or the final result. Otherwise successors receive its future and the
workers move the data. The run result still gives values: an output left on the cluster is
fetched when it is read (one gather, cached), and ``keep_remote`` is the only way to get a
``RemoteResult`` back.
"""

from __future__ import annotations

import threading

import pytest
from xlib_pipeline_dask import RemoteResult

from xlib_pipeline import (
    DeferredOutput,
    OutputUnavailableError,
    Pipeline,
    PipelineManager,
    hookimpl,
)

pytest.importorskip("distributed")
pytestmark = pytest.mark.slow


class Seen:
    """Records the type of each output the driver's hooks see while the run goes on."""

    name = "seen"

    def __init__(self) -> None:
        self.kinds: dict[str, type] = {}
        self.lock = threading.Lock()

    @hookimpl
    def after_task(self, task, run, outcome):
        with self.lock:
            self.kinds[task.name] = type(outcome.output)


@pytest.fixture(scope="module")
def address():
    import distributed

    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None
    ) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("XLIB_PIPELINE_HOME", str(tmp_path / "home"))


def _fan() -> Pipeline:
    p = Pipeline("fan")
    p.add_task("root", lambda: list(range(10)))
    for k in range(3):
        p.add_task(f"m{k}", lambda xs, k=k: [x * k for x in xs], depends_on="root")
    p.add_task("sink", lambda *parts: sum(sum(x) for x in parts), depends_on=["m0", "m1", "m2"])
    return p


def _kept(kind: type) -> bool:
    """True for an output the driver did not fetch during the run."""
    return issubclass(kind, DeferredOutput)


def test_intermediates_stay_on_the_cluster_and_the_result_gives_values(address):
    seen = Seen()
    with PipelineManager({"distributed": {"address": address}}, plugins=[seen]) as pm:
        result = pm.execute_pipeline(_fan(), distributed=True)
        assert result.success, result.error
        for name in ("root", "m0", "m1", "m2"):
            assert _kept(seen.kinds[name]), name  # the driver never fetched it in the run
            assert not result.tasks[name].output_fetched, name
        assert seen.kinds["sink"] is int  # the final result is a value
        assert result.final_result == sum(range(10)) * 3
        # Reading an output fetches the value (one gather) and caches it.
        root = result.tasks["root"]
        assert root.output == list(range(10))
        assert type(root.output) is list and root.output_fetched
        assert result.tasks["root"] is root
        assert result.tasks["m2"].output == [2 * x for x in range(10)]
        assert "output=ClusterOutput(task='m1')" in repr(result.tasks["m1"])  # repr never fetches


def test_outputs_fetches_every_remaining_output_in_one_batch(address):
    with PipelineManager({"distributed": {"address": address}}) as pm:
        result = pm.execute_pipeline(_fan(), distributed=True)
        assert result.success, result.error
        outputs = result.tasks.outputs()
        assert outputs == {
            "root": list(range(10)),
            "m0": [0] * 10,
            "m1": list(range(10)),
            "m2": [2 * x for x in range(10)],
            "sink": 135,
        }
        assert all(result.tasks[n].output_fetched for n in outputs)
        assert result.tasks.outputs(["m1"]) == {"m1": list(range(10))}
        with pytest.raises(KeyError):
            result.tasks.outputs(["nope"])


def test_an_unread_output_after_close_names_the_task(address):
    with PipelineManager({"distributed": {"address": address}}) as pm:
        result = pm.execute_pipeline(_fan(), distributed=True)
        assert result.success, result.error
        assert result.tasks["m0"].output == [0] * 10  # read in time: cached
    assert result.tasks["m0"].output == [0] * 10
    assert result.final_result == 135
    m1 = result.tasks["m1"]
    assert m1.succeeded and m1.error is None  # the rest of the result stays readable
    with pytest.raises(OutputUnavailableError) as info:
        _ = m1.output
    assert info.value.task == "m1"
    text = str(info.value)
    assert "'m1'" in text and "stayed on the Dask cluster" in text
    assert "result.tasks['m1'].output" in text and "before closing the PipelineManager" in text
    with pytest.raises(OutputUnavailableError) as info:
        result.tasks.outputs(["m2", "root"])
    assert info.value.task in ("m2", "root")


def test_mapped_partitions_left_on_the_cluster_come_back_as_a_list(address):
    p = Pipeline("mapped")
    p.add_task("items", lambda: [1, 2, 3, 4])
    p.add_task("double", lambda x: x * 2, depends_on="items", map_over=0)
    p.add_task("total", lambda xs: sum(xs), depends_on="double")
    seen = Seen()
    with PipelineManager({"distributed": {"address": address}}, plugins=[seen]) as pm:
        result = pm.execute_pipeline(p, distributed=True)
        assert result.success, result.error
        assert _kept(seen.kinds["double"])
        assert result.final_result == 20
        assert result.tasks["double"].output == [2, 4, 6, 8]


def test_keep_remote_still_gives_a_remote_result(address):
    p = Pipeline("kept")
    p.add_task("big", lambda: list(range(5)), distribute={"keep_remote": True})
    p.add_task("n", lambda xs: len(xs), depends_on="big")
    with PipelineManager({"distributed": {"address": address}}) as pm:
        result = pm.execute_pipeline(p, distributed=True)
        assert result.success, result.error
        out = result.tasks["big"].output
        assert type(out) is RemoteResult  # asked for: never fetched behind the user's back
        assert out.result() == list(range(5))
        assert result.tasks.outputs()["big"] is out
        assert result.final_result == 5


def test_a_condition_brings_its_inputs_to_the_driver(address):
    p = Pipeline("cond")
    p.add_task("a", lambda: 5)
    p.add_task("b", lambda a: a * 2, depends_on="a", condition=lambda a: a > 3)
    p.add_task("c", lambda b: b + 1, depends_on="b")
    seen = Seen()
    with PipelineManager({"distributed": {"address": address}}, plugins=[seen]) as pm:
        result = pm.execute_pipeline(p, distributed=True)
        assert result.success, result.error
        assert seen.kinds["a"] is int  # the condition read it in the driver
        assert _kept(seen.kinds["b"])
        assert result.tasks["b"].output == 10
        assert result.final_result == 11


def test_contracts_and_the_cache_bring_their_values_to_the_driver(address, tmp_path):
    p = Pipeline("checked")
    p.add_task("a", lambda: 3, contract=int)
    p.add_task("b", lambda a: a + 1, depends_on="a", cache=True)
    p.add_task("c", lambda b: b * 10, depends_on="b")
    p.add_task("d", lambda c: c, depends_on="c")
    seen = Seen()
    config = {  # the cache lives in the store; outputs are not recorded there
        "distributed": {"address": address},
        "store": {"path": str(tmp_path / "runs.sqlite"), "record_outputs": False},
    }
    with PipelineManager(config, plugins=[seen]) as pm:
        result = pm.execute_pipeline(p, distributed=True)
        assert result.success, result.error
        assert seen.kinds["a"] is int and seen.kinds["b"] is int  # contract, cache entry
        assert _kept(seen.kinds["c"])
        again = pm.execute_pipeline(p, distributed=True)
        assert again.tasks["b"].status == "cached" and again.final_result == 40


def test_the_run_store_gets_every_output(address, tmp_path):
    config = {
        "distributed": {"address": address},
        "store": {"path": str(tmp_path / "runs.sqlite")},
    }
    seen = Seen()
    with PipelineManager(config, plugins=[seen]) as pm:
        result = pm.execute_pipeline(_fan(), distributed=True)
        assert result.success, result.error
    assert not any(_kept(kind) for kind in seen.kinds.values())
    assert seen.kinds["root"] is list
    assert all(result.tasks[n].output_fetched for n in result.tasks)
    from xlib_pipeline.loading import open_store

    store = open_store(tmp_path / "runs.sqlite")
    try:
        assert store.get_run(result.run_id) is not None
    finally:
        store.close()


def test_a_hook_reading_outputs_gets_values(address):
    pytest.importorskip("xlib_pipeline_classification")
    seen = Seen()
    config = {"distributed": {"address": address}, "classification": {"detect_pii": True}}
    p = Pipeline("pii")
    p.add_task("a", lambda: "mail me at jane@example.com")
    p.add_task("b", lambda a: len(a), depends_on="a")
    with PipelineManager(config, plugins=[seen]) as pm:
        result = pm.execute_pipeline(p, distributed=True)
        assert result.success, result.error
    assert seen.kinds["a"] is str
