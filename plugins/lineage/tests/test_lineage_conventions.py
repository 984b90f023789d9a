"""Lineage follows the OpenLineage conventions (issue 17 item 8): dataset names from
openlineage-python's naming helpers, the ``jobType`` job facet, the ``processing_engine``
run facet and the ``jobDependencies`` run facet for task edges, each checked against the
spec and the client's model of it (``facet_checks.py``).
"""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openlineage.client.naming import dataset as naming
from openlineage.client.serde import Serde
from xlib_pipeline_lineage import (
    LineagePlugin,
    parse_dataset,
    read_events,
    run_events,
    task_run_id,
    to_mermaid,
)

from xlib_pipeline import Pipeline, PipelineManager
from xlib_pipeline.exceptions import DefinitionError

jsonschema = pytest.importorskip("jsonschema")
referencing = pytest.importorskip("referencing")


def _facet_checks() -> Any:
    """``facet_checks.py`` beside this file (tests run with --import-mode=importlib)."""
    import importlib.util
    import sys

    name = "xlib_pipeline_lineage_facet_checks"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).with_name("facet_checks.py")
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


CHECKS = _facet_checks()
check_job_type = CHECKS.check_job_type
check_engine = CHECKS.check_engine
check_dependencies = CHECKS.check_dependencies


def pipeline() -> Pipeline:
    p = Pipeline("orders")

    @p.task("extract", outputs=["postgres://db:5432/shop.orders"])
    def extract():
        return [1, 2]

    @p.task(
        "clean",
        depends_on=["extract"],
        inputs=["postgres://db:5432/shop.orders"],
        outputs=["s3://lake/clean/orders"],
    )
    def clean(rows):
        return rows

    @p.task("count", depends_on=["extract"])
    def count(rows):
        return len(rows)

    @p.task("report", depends_on=["clean", "count"], outputs=["file:///reports/orders.csv"])
    def report(rows, n):
        return n

    return p


@pytest.fixture
def events(tmp_path: Path) -> tuple[str, list[dict[str, Any]]]:
    path = tmp_path / "lineage.jsonl"
    cfg = {"lineage": {"transport": {"type": "file", "path": str(path)}}}
    with PipelineManager(cfg, entry_points=False, plugins=[LineagePlugin()]) as pm:
        result = pm.execute_pipeline(pipeline())
    assert result.success, result.error
    return result.run_id, run_events(read_events(path), result.run_id)


_SCHEMES = ("postgres", "postgresql", "mysql", "hive", "trino", "s3", "gs", "kafka", "hdfs")
_SCHEMES += ("file", "abfss", "wasbs", "custom")


@st.composite
def _uris(draw: Any) -> str:
    """Dataset URIs, complete or missing parts: host, port, path segments, separators."""
    part = st.text(alphabet="abz09_-", min_size=0, max_size=4)
    scheme = draw(st.sampled_from(_SCHEMES))
    host = draw(part)
    if scheme in ("abfss", "wasbs") and draw(st.booleans()):
        host = f"{host}@{draw(part)}.dfs.core.windows.net"
    port = draw(st.sampled_from(["", ":5432", ":9092", ":x", ":"]))
    sep = draw(st.sampled_from([".", "/"]))
    path = sep.join(draw(st.lists(part, max_size=4)))
    return f"{scheme}://{host}{port}/{path}"


def task_events(events: list[dict[str, Any]], task: str) -> list[dict[str, Any]]:
    return [e for e in events if e["job"]["name"] == f"orders.{task}"]


class TestDatasetNames:
    @pytest.mark.parametrize(
        ("uri", "helper"),
        [
            (
                "postgres://db:5432/shop.public.orders",
                naming.Postgres(
                    host="db",
                    port="5432",
                    database="shop",
                    schema="public",
                    table="orders",
                ),
            ),
            (
                "s3://lake/clean/orders",
                naming.S3(bucket_name="lake", object_key="clean/orders"),
            ),
            (
                "gs://lake/raw/a.csv",
                naming.GCS(bucket_name="lake", object_key="raw/a.csv"),
            ),
            (
                "mysql://db:3306/shop.orders",
                naming.MySQL(host="db", port="3306", database="shop", table="orders"),
            ),
            (
                "kafka://broker:9092/orders",
                naming.Kafka(bootstrap_server_host="broker", port="9092", topic="orders"),
            ),
            (
                "hdfs://nn:8020/warehouse/orders",
                naming.HDFS(namenode_host="nn", namenode_port="8020", path="/warehouse/orders"),
            ),
            (
                "file:///reports/orders.csv",
                naming.LocalFileSystem(path="/reports/orders.csv"),
            ),
        ],
    )
    def test_uris_follow_the_naming_helpers(self, uri, helper):
        """A URI is named exactly as openlineage-python's naming helper names it."""
        assert parse_dataset(uri) == {
            "namespace": helper.get_namespace(),
            "name": helper.get_name(),
        }

    def test_no_leading_slash(self):
        """The issue's examples: no leading slash on a table or object name."""
        assert parse_dataset("postgres://db:5432/shop.orders") == {
            "namespace": "postgres://db:5432",
            "name": "shop.orders",
        }
        assert parse_dataset("s3://lake/clean/orders")["name"] == "clean/orders"
        assert parse_dataset("postgresql://db/shop/public/orders") == {
            "namespace": "postgres://db:5432",
            "name": "shop.public.orders",
        }

    @pytest.mark.parametrize("uri", ["s3://lake/", "postgres:///shop.orders", "kafka://b:x/t"])
    def test_incomplete_uris_are_refused(self, uri):
        with pytest.raises(ValueError, match="dataset"):
            parse_dataset(uri)
        with pytest.raises(ValueError, match="dataset"):
            parse_dataset(uri, check_only=True)

    def test_a_bad_uri_is_refused_before_the_run(self):
        """The task option's error names the task, the dataset and the missing part, and no
        task runs."""
        ran: list[str] = []
        p = Pipeline("bad")
        p.add_task("first", lambda: ran.append("first"))
        p.add_task("load", lambda: 1, outputs=["s3://lake/"])
        with (
            PipelineManager({}, entry_points=False, plugins=[LineagePlugin()]) as pm,
            pytest.raises(DefinitionError, match=r"'load'.*s3://lake/.*object_key"),
        ):
            pm.execute_pipeline(p)
        assert ran == []

    def test_declaring_datasets_imports_no_openlineage(self, tmp_path: Path):
        """With lineage off, tasks declaring dataset URIs (checked when the pipeline is
        validated) do not import openlineage; a bad one is still refused."""
        import json
        import os
        import subprocess
        import sys
        import textwrap

        code = textwrap.dedent(
            """
            import json, sys
            from xlib_pipeline import Pipeline, PipelineManager
            from xlib_pipeline.exceptions import DefinitionError
            pm = PipelineManager({})
            p = Pipeline("cold")
            p.add_task("a", lambda: 1, outputs=["postgres://db/shop.public.orders"])
            p.add_task("b", lambda a: a, depends_on="a",
                       inputs=["postgresql://db/shop.public.orders", "kafka://k/t"],
                       outputs=["s3://lake/clean/orders", "file:///tmp/x.csv"])
            ok = pm.execute_pipeline(p).success
            bad = Pipeline("bad")
            bad.add_task("c", lambda: 1, inputs=["s3://lake/"])
            try:
                pm.execute_pipeline(bad)
                refused = ""
            except DefinitionError as exc:
                refused = str(exc)
            print(json.dumps({"ok": ok, "refused": refused,
                              "openlineage": "openlineage" in sys.modules}))
            """
        )
        out = subprocess.run(
            [sys.executable, "-c", code],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env={**os.environ, "XLIB_PIPELINE_HOME": str(tmp_path)},
        ).stdout
        answer = json.loads(out.strip().splitlines()[-1])
        assert answer["ok"] is True
        assert "'c'" in answer["refused"] and "s3://lake/" in answer["refused"]
        assert answer["openlineage"] is False

    @settings(max_examples=300, deadline=None)
    @given(uri=_uris())
    def test_the_declaration_check_agrees_with_the_helpers(self, uri):
        """Model: the openlineage-free check at declaration refuses exactly what naming the
        dataset through the client's helpers refuses, and a name never starts with a slash
        except for file systems (whose names are absolute paths) and an unknown scheme's
        root (``/``)."""
        try:
            named = parse_dataset(uri)
        except ValueError as exc:
            assert str(uri) in str(exc)
            with pytest.raises(ValueError):
                parse_dataset(uri, check_only=True)
            return
        assert parse_dataset(uri, check_only=True)["name"] == uri
        assert named["namespace"] and named["name"].strip()
        if uri.startswith("custom:") and named["name"] == "/":
            assert uri.endswith("/")  # an unknown scheme's root: the documented fallback
        elif not uri.startswith(("file:", "hdfs:")):
            assert not named["name"].startswith("/")

    def test_events_carry_the_names(self, events):
        _, evs = events
        assert task_events(evs, "extract")[0]["outputs"] == [
            {"namespace": "postgres://db:5432", "name": "shop.orders"}
        ]
        clean = task_events(evs, "clean")[1]
        assert clean["outputs"] == [{"namespace": "s3://lake", "name": "clean/orders"}]
        report = task_events(evs, "report")[1]
        assert report["outputs"] == [{"namespace": "file", "name": "/reports/orders.csv"}]


class TestStandardFacets:
    def test_job_type_on_every_event(self, events):
        """jobType: DAG on the pipeline's events, TASK on the tasks'; BATCH, XLIB_PIPELINE."""
        _, evs = events
        for e in evs:
            facet = e["job"]["facets"]["jobType"]
            check_job_type(facet)
            assert facet["processingType"] == "BATCH"
            assert facet["integration"] == "XLIB_PIPELINE"
            assert facet["jobType"] == ("DAG" if e["job"]["name"] == "orders" else "TASK")

    def test_processing_engine(self, events):
        """processing_engine on the pipeline's events and on each task's START."""
        _, evs = events
        starts = [e for e in evs if e["eventType"] == "START"]
        pipeline_events = [e for e in evs if e["job"]["name"] == "orders"]
        for e in starts + pipeline_events:
            facet = e["run"]["facets"]["processing_engine"]
            check_engine(facet)
            assert facet["name"] == "xlib-pipeline"
            assert facet["version"] == md.version("xlib-pipeline")
            assert facet["openlineageAdapterVersion"] == md.version("xlib-pipeline-lineage")

    def test_job_dependencies_are_the_task_edges(self, events):
        """jobDependencies on each task START names its upstream and downstream task runs."""
        run_id, evs = events

        def edges(task: str, side: str) -> list[tuple[str, str]]:
            facet = task_events(evs, task)[0]["run"]["facets"]["jobDependencies"]
            check_dependencies(facet)
            assert facet["trigger_rule"] == "ALL_SUCCESS"
            return [(d["job"]["name"], d["run"]["runId"]) for d in facet[side]]

        def ref(task: str) -> tuple[str, str]:
            return (f"orders.{task}", task_run_id(run_id, task))

        assert edges("extract", "upstream") == []
        assert sorted(edges("extract", "downstream")) == sorted([ref("clean"), ref("count")])
        assert edges("report", "upstream") == [ref("clean"), ref("count")]
        assert edges("report", "downstream") == []
        # the edges point at the runIds the task runs really have
        for task in ("clean", "count"):
            assert task_events(evs, task)[0]["run"]["runId"] == task_run_id(run_id, task)

    def test_job_dependencies_fragments_equal_the_reference_facet(self, events):
        """The emitter assembles jobDependencies from per-task JSON fragments; it equals the
        facet built as a dict by job_dependencies_facet, field for field."""
        from xlib_pipeline_lineage._events import job_dependencies_facet

        run_id, evs = events
        p = pipeline()
        downstream: dict[str, list[str]] = {}
        for t in p.tasks.values():
            for up in t.depends_on:
                downstream.setdefault(up, []).append(t.name)
        for t in p.tasks.values():
            start = task_events(evs, t.name)[0]
            assert start["eventType"] == "START"
            assert start["run"]["facets"]["jobDependencies"] == job_dependencies_facet(
                start["producer"],
                "xlib-pipeline",
                "orders",
                run_id,
                list(t.depends_on),
                downstream.get(t.name, []),
                lambda name: task_run_id(run_id, name),
            )

    def test_trigger_rule_follows_the_merge_strategy(self, tmp_path: Path):
        """ALL_SUCCESS for the default merge strategy, NONE_FAILED for collect_available
        (the task also runs when an upstream was skipped)."""
        p = Pipeline("merge")
        p.add_task("a", lambda: 1)
        p.add_task("b", lambda: 2, condition=lambda: False)
        p.add_task("all", lambda a, b: a, depends_on=["a", "b"])
        p.add_task("any", lambda a, b: a, depends_on=["a", "b"], merge_strategy="collect_available")
        path = tmp_path / "lineage.jsonl"
        cfg = {"lineage": {"transport": {"type": "file", "path": str(path)}}}
        with PipelineManager(cfg, entry_points=False, plugins=[LineagePlugin()]) as pm:
            result = pm.execute_pipeline(p)
        assert result.tasks["all"].status == "skipped"
        assert result.tasks["any"].status == "succeeded"
        evs = run_events(read_events(path), result.run_id)
        rules = {
            e["job"]["name"]: e["run"]["facets"]["jobDependencies"]["trigger_rule"]
            for e in evs
            if e["eventType"] == "START" and e["job"]["name"] != "merge"
        }
        assert rules == {
            "merge.a": "ALL_SUCCESS",
            "merge.b": "ALL_SUCCESS",
            "merge.all": "ALL_SUCCESS",
            "merge.any": "NONE_FAILED",
        }
        for e in evs:
            if "jobDependencies" in e["run"].get("facets", {}):
                check_dependencies(e["run"]["facets"]["jobDependencies"])

    def test_the_graph_is_drawn_from_job_dependencies(self, events):
        """lineage show draws the task edges from jobDependencies."""
        import re

        run_id, evs = events
        mermaid = to_mermaid(evs, run_id)
        ids = dict(re.findall(r'^\s+(t\d+)\["([^"]+)"\]', mermaid, re.M))
        edges = {(ids[a], ids[b]) for a, b in re.findall(r"^\s+(t\d+) --> (t\d+)$", mermaid, re.M)}
        assert edges == {
            ("extract", "clean"),
            ("extract", "count"),
            ("clean", "report"),
            ("count", "report"),
        }

    def test_client_transport_keeps_the_facets(self, events):
        """Converted for a non-file transport, the events keep jobType (typed) and the rest."""
        from xlib_pipeline_lineage._events import to_client_event

        _, evs = events
        for e in evs:
            client = Serde.to_dict(to_client_event(e))
            assert client["job"]["facets"]["jobType"] == e["job"]["facets"]["jobType"]
            assert client["run"].get("facets", {}).keys() == e["run"].get("facets", {}).keys()
