"""Stream metrics against the real exposition: real streams (a JSON-lines file, an
iterable) through a manager with a run store, the plugin's HTTP endpoint scraped and
parsed with prometheus_client.parser, and the textfile node_exporter would read."""

from __future__ import annotations

import json
import math
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from xlib_pipeline import Pipeline, PipelineManager

STREAM_FAMILIES = (
    "xlib_pipeline_stream_batches",
    "xlib_pipeline_stream_records",
    "xlib_pipeline_stream_outputs",
    "xlib_pipeline_stream_late_records",
    "xlib_pipeline_stream_dead_letters",
    "xlib_pipeline_stream_lag",
    "xlib_pipeline_stream_state",
    "xlib_pipeline_stream_last_batch_timestamp_seconds",
)


def screening(name: str = "screening", fail_on: int | None = None) -> Pipeline:
    p = Pipeline(name)

    @p.task("keep")
    def keep(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if fail_on is not None and any(r["id"] == fail_on for r in rows):
            raise ValueError(f"record {fail_on} is malformed")
        return [r for r in rows if r["amount"] > 0]

    return p


def write_jsonl(path: Path, n: int) -> None:
    with open(path, "a") as f:
        for i in range(n):
            f.write(json.dumps({"id": i, "amount": i % 4 - 1}) + "\n")  # 1 in 4 is negative


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(fams: dict[str, Any], family: str, **labels: str) -> list[Any]:
    return [
        s
        for s in fams[family].samples
        if all(s.labels.get(k) == v for k, v in labels.items()) and not s.name.endswith("_created")
    ]


def one(fams: dict[str, Any], family: str, **labels: str) -> float:
    got = samples(fams, family, **labels)
    assert len(got) == 1, f"{family}{labels}: {got}"
    return float(got[0].value)


def state(fams: dict[str, Any], stream: str) -> str:
    got = {
        s.labels["state"]: s.value
        for s in samples(fams, "xlib_pipeline_stream_state", stream=stream)
    }
    assert sorted(got) == ["completed", "failed", "running", "stopped"]
    hot = [st for st, v in got.items() if v == 1]
    assert len(hot) == 1 and sum(got.values()) == 1, f"exactly one state is 1: {got}"
    return hot[0]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def manager(tmp_path: Path, metrics: Any) -> PipelineManager:
    from xlib_pipeline_metrics import MetricsPlugin

    cfg = {"store": {"path": str(tmp_path / "runs.sqlite")}, "metrics": metrics}
    return PipelineManager(cfg, plugins=[MetricsPlugin()], entry_points=False)


def test_a_file_stream_is_served_per_stream(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    write_jsonl(src, 250)
    seen: list[tuple[float, float, str]] = []
    with manager(tmp_path, {"port": 0}) as pm:
        port = pm.get_plugin("metrics").port

        def during(stream: Any) -> None:  # after each committed batch: scrape the endpoint
            fams = families(scrape(port))
            seen.append(
                (
                    one(fams, "xlib_pipeline_stream_batches", stream="payments"),
                    one(fams, "xlib_pipeline_stream_records", stream="payments"),
                    state(fams, "payments"),
                )
            )

        s = pm.stream(
            screening(),
            source=f"jsonl:{src}",
            sink=f"jsonl:{tmp_path / 'out.jsonl'}",
            name="payments",
            batch_size=100,
            on_batch=during,
        )
        assert s.status == "completed" and s.batches == 3
        fams = families(scrape(port))
    assert seen == [(1, 100, "running"), (2, 200, "running"), (3, 250, "running")]
    key = {"pipeline": "screening", "stream": "payments"}
    assert one(fams, "xlib_pipeline_stream_batches", **key) == 3
    assert one(fams, "xlib_pipeline_stream_records", **key) == 250
    out = len((tmp_path / "out.jsonl").read_text().splitlines())
    assert one(fams, "xlib_pipeline_stream_outputs", **key) == out == s.outputs
    assert one(fams, "xlib_pipeline_stream_dead_letters", **key) == 0
    assert one(fams, "xlib_pipeline_stream_late_records", **key) == 0
    assert one(fams, "xlib_pipeline_stream_lag", **key) == 0  # the file was read to its end
    assert state(fams, "payments") == "completed"
    last = one(fams, "xlib_pipeline_stream_last_batch_timestamp_seconds", **key)
    assert s.started is not None and s.finished is not None
    assert s.started <= last <= s.finished
    for fam in STREAM_FAMILIES:  # labels: pipeline and stream (and state), never a run id
        for smp in samples(fams, fam):
            assert set(smp.labels) - {"state"} == {"pipeline", "stream"}, smp


def test_one_series_set_per_stream_however_many_batches(tmp_path: Path) -> None:
    with manager(tmp_path, True) as pm:
        plugin = pm.get_plugin("metrics")
        rows = [{"id": i, "amount": 5} for i in range(40)]
        pm.stream(screening(), source=rows, sink=lambda out: None, name="a", batch_size=10)
        first = families(plugin.text())
        pm.stream(screening(), source=rows, sink=lambda out: None, name="b", batch_size=1)
        # "a" again, continuing after its checkpoint: the same series, counters go on
        more = [{"id": i, "amount": 5} for i in range(40, 45)]
        pm.stream(screening(), source=rows + more, sink=lambda out: None, name="a", batch_size=10)
        fams = families(plugin.text())
    assert len(samples(first, "xlib_pipeline_stream_batches")) == 1
    assert one(fams, "xlib_pipeline_stream_batches", stream="b") == 40
    assert one(fams, "xlib_pipeline_stream_batches", stream="a") == 5
    assert one(fams, "xlib_pipeline_stream_records", stream="a") == 45
    for fam in STREAM_FAMILIES:
        per = 4 if fam == "xlib_pipeline_stream_state" else 1
        assert len(samples(fams, fam)) == 2 * per, (fam, samples(fams, fam))
    # an iterable reports no lag: NaN, not 0 (0 would say "caught up")
    assert math.isnan(one(fams, "xlib_pipeline_stream_lag", stream="b"))


def test_a_failed_stream_is_written_to_the_textfile_at_its_end(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    write_jsonl(src, 30)
    prom = tmp_path / "xlib.prom"
    with manager(tmp_path, {"textfile": str(prom)}) as pm:
        s = pm.stream(
            screening(fail_on=25),
            source=f"jsonl:{src}",
            sink=f"jsonl:{tmp_path / 'out.jsonl'}",
            name="payments",
            batch_size=10,
        )
        assert s.status == "failed"
        fams = families(prom.read_text())  # written by the "failed" event, no run after it
    assert state(fams, "payments") == "failed"
    assert one(fams, "xlib_pipeline_stream_batches", stream="payments") == 2
    assert one(fams, "xlib_pipeline_stream_records", stream="payments") == 20
    failed = samples(fams, "xlib_pipeline_runs", pipeline="screening", status="failed")
    assert [x.value for x in failed] == [1.0]  # the failed batch is a failed run


def test_not_configured_adds_no_stream_hook(tmp_path: Path) -> None:
    from xlib_pipeline_metrics import MetricsPlugin

    cfg = {"store": {"path": str(tmp_path / "runs.sqlite")}}
    with PipelineManager(cfg, plugins=[MetricsPlugin()], entry_points=False) as pm:
        assert not pm.hooks.has["stream_event"]  # the stream skips its events entirely
    with manager(tmp_path, True) as pm:
        assert pm.hooks.has["stream_event"]


@pytest.mark.parametrize("stop", ["max_batches", "stop"])
def test_stopped_streams(tmp_path: Path, stop: str) -> None:
    rows = [{"id": i, "amount": 5} for i in range(30)]
    with manager(tmp_path, True) as pm:
        if stop == "max_batches":
            s = pm.stream(
                screening(),
                source=rows,
                sink=lambda out: None,
                max_batches=1,
                batch_size=10,
                name="x",
            )
        else:
            s = pm.stream(
                screening(),
                source=rows,
                sink=lambda out: None,
                batch_size=10,
                name="x",
                on_batch=lambda st: st.stop(),
            )
        assert s.status == "stopped"
        fams = families(pm.get_plugin("metrics").text())
    assert state(fams, "x") == "stopped"
    assert one(fams, "xlib_pipeline_stream_batches", stream="x") == 1


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(min_value=0, max_value=120),
    batch_size=st.integers(min_value=1, max_value=40),
    in_flight=st.integers(min_value=1, max_value=3),
    dead_every=st.sampled_from([None, 3, 7]),
)
def test_counters_match_the_streams_own(
    n: int, batch_size: int, in_flight: int, dead_every: int | None
) -> None:
    """The model: a fresh stream's own counters (records, batches, outputs, dead-lettered)
    are what its committed batches reported; the metrics must say the same."""
    p = Pipeline("screening")

    @p.task("keep")
    def keep(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if dead_every is not None and any(r["id"] % dead_every == 0 for r in rows):
            raise ValueError("a poisoned record")
        return [r for r in rows if r["amount"] > 0]

    rows = [{"id": i + 1, "amount": i % 3 - 1} for i in range(n)]
    dead: list[Any] = []
    with tempfile.TemporaryDirectory() as tmp, manager(Path(tmp), True) as pm:
        s = pm.stream(
            p,
            source=rows,
            sink=lambda out: None,
            name="prop",
            batch_size=batch_size,
            max_in_flight=in_flight,
            dead_letter=dead.extend,
        )
        text = pm.get_plugin("metrics").text()
    assert s.status == "completed"
    fams = families(text)
    assert one(fams, "xlib_pipeline_stream_batches", stream="prop") == s.batches
    assert one(fams, "xlib_pipeline_stream_records", stream="prop") == s.records == n
    assert one(fams, "xlib_pipeline_stream_outputs", stream="prop") == s.outputs
    assert one(fams, "xlib_pipeline_stream_dead_letters", stream="prop") == s.dead == len(dead)
    assert state(fams, "prop") == "completed"
