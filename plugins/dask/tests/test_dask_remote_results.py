"""Dask results stay on the cluster (issue 16, item 4).

An intermediate output reaches the driver only when something there needs it: the run
store, a hook that reads outputs (audit digests, PII scanning), a condition, or the final
result. Otherwise successors receive its future and the workers move the data.
"""

from __future__ import annotations

import os

import pytest
from xlib_pipeline_dask import RemoteResult

from xlib_pipeline import Pipeline, PipelineManager

pytest.importorskip("distributed")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory):
    import distributed

    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None
    ) as cluster:
        yield cluster.scheduler_address


def _fan() -> Pipeline:
    p = Pipeline("fan")
    p.add_task("root", lambda: list(range(10)))
    for k in range(3):
        p.add_task(f"m{k}", lambda xs, k=k: [x * k for x in xs], depends_on="root")
    p.add_task("sink", lambda *parts: sum(sum(x) for x in parts), depends_on=["m0", "m1", "m2"])
    return p


def _run(config: dict, p: Pipeline, tmp_path) -> object:
    os.environ["XLIB_PIPELINE_HOME"] = str(tmp_path / "home")
    with PipelineManager(config) as pm:
        result = pm.execute_pipeline(p, distributed=True)
        assert result.success, result.error
        # read while the client is open: a RemoteResult fetches from the cluster
        outputs = {
            n: (
                type(t.output),
                t.output.result() if isinstance(t.output, RemoteResult) else t.output,
            )
            for n, t in result.tasks.items()
        }
    return result, outputs


def test_intermediates_stay_on_the_cluster_with_the_store_off(address, tmp_path):
    result, outputs = _run({"distributed": {"address": address}}, _fan(), tmp_path)
    assert result.final_result == sum(range(10)) * 3  # the final result is a value
    for name in ("root", "m0", "m1", "m2"):
        assert outputs[name][0] is RemoteResult, name  # never fetched by the driver
    assert outputs["root"][1] == list(range(10))
    assert outputs["m2"][1] == [2 * x for x in range(10)]


def test_a_condition_brings_its_inputs_to_the_driver(address, tmp_path):
    p = Pipeline("cond")
    p.add_task("a", lambda: 5)
    p.add_task("b", lambda a: a * 2, depends_on="a", condition=lambda a: a > 3)
    p.add_task("c", lambda b: b + 1, depends_on="b")
    result, outputs = _run({"distributed": {"address": address}}, p, tmp_path)
    assert outputs["a"] == (int, 5)  # the condition read it in the driver
    assert outputs["b"][0] is RemoteResult and outputs["b"][1] == 10
    assert result.final_result == 11


def test_the_run_store_gets_every_output(address, tmp_path):
    config = {
        "distributed": {"address": address},
        "store": {"path": str(tmp_path / "runs.sqlite")},
    }
    result, outputs = _run(config, _fan(), tmp_path)
    assert all(kind is not RemoteResult for kind, _ in outputs.values())
    from xlib_pipeline.loading import open_store

    store = open_store(tmp_path / "runs.sqlite")
    try:
        run = store.get_run(result.run_id)
        assert run is not None
    finally:
        store.close()


def test_a_hook_reading_outputs_gets_values(address, tmp_path):
    pytest.importorskip("xlib_pipeline_classification")
    config = {
        "distributed": {"address": address},
        "classification": {"detect_pii": True},
    }
    p = Pipeline("pii")
    p.add_task("a", lambda: "mail me at jane@example.com")
    p.add_task("b", lambda a: len(a), depends_on="a")
    _, outputs = _run(config, p, tmp_path)
    assert outputs["a"][0] is str
