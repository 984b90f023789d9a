"""OpenLineage events of the lineage plugin: schema, START/terminal pairs, parents, datasets."""

from __future__ import annotations

import json
import logging
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xlib_pipeline_lineage import (
    LINEAGE_RUN,
    LineagePlugin,
    parse_dataset,
    read_events,
    run_events,
    task_run_id,
    to_mermaid,
)
from xlib_pipeline_lineage._events import RUN_FACET, fast_uuid5

from xlib_pipeline import (
    CLASSIFICATION,
    Classification,
    ComplianceError,
    ConfigError,
    DefinitionError,
    OutputLevel,
    Pipeline,
    PipelineManager,
    RetryDecision,
    hookimpl,
)

jsonschema = pytest.importorskip("jsonschema")
referencing = pytest.importorskip("referencing")

SCHEMAS = Path(__file__).parent / "schemas"
PACKAGE_SCHEMAS = Path(__file__).parents[1] / "src" / "xlib_pipeline_lineage" / "schemas"


# -- schema validation -------------------------------------------------------------------------


def _validators() -> tuple[Any, dict[str, Any]]:
    from referencing.jsonschema import DRAFT202012

    core = json.loads((SCHEMAS / "OpenLineage.json").read_text())
    defs = core["definitions"]
    alias = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$defs": defs,
        "definitions": defs,
    }
    registry = referencing.Registry()
    for version in ("1-0-1", "1-0-2", "2-0-2"):
        uri = f"https://openlineage.io/spec/{version}/OpenLineage.json"
        registry = registry.with_resource(
            uri,
            referencing.Resource.from_contents(alias, default_specification=DRAFT202012),
        )
    cls = jsonschema.Draft202012Validator
    fc = cls.FORMAT_CHECKER
    event_validator = cls(core, format_checker=fc)
    facets: dict[str, Any] = {}
    files = {
        "parent": (SCHEMAS / "ParentRunFacet.json", "ParentRunFacet"),
        "errorMessage": (SCHEMAS / "ErrorMessageRunFacet.json", "ErrorMessageRunFacet"),
        "xlibPipeline_run": (
            PACKAGE_SCHEMAS / "XlibPipelineTaskRunFacet.json",
            "XlibPipelineTaskRunFacet",
        ),
        "xlibPipeline_classification": (
            PACKAGE_SCHEMAS / "XlibPipelineClassificationDatasetFacet.json",
            "XlibPipelineClassificationDatasetFacet",
        ),
    }
    for key, (path, name) in files.items():
        schema = json.loads(path.read_text())
        sub = {"$ref": f"{schema['$id']}#/$defs/{name}"}
        reg = registry.with_resource(
            schema["$id"],
            referencing.Resource.from_contents(schema, default_specification=DRAFT202012),
        )
        facets[key] = cls(sub, registry=reg, format_checker=fc)
    return event_validator, facets


EVENT_VALIDATOR, FACET_VALIDATORS = _validators()


def validate_event(e: dict[str, Any]) -> None:
    """Validate an event and every facet we know a schema for; the standard facets that
    openlineage-python models (``jobType``, ``processing_engine``, ``jobDependencies``) are
    checked against the client's model (see test_lineage_conventions.py)."""
    import importlib.util
    import sys

    name = "xlib_pipeline_lineage_facet_checks"
    if name not in sys.modules:  # facet_checks.py beside this file (importlib import mode)
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).with_name("facet_checks.py")
        )
        assert spec is not None and spec.loader is not None
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    checks = sys.modules[name]
    check_engine, check_job_type = checks.check_engine, checks.check_job_type
    check_dependencies = checks.check_dependencies

    EVENT_VALIDATOR.validate(e)
    client = {"processing_engine": check_engine, "jobDependencies": check_dependencies}
    for key, facet in (e["run"].get("facets") or {}).items():
        if key in client:
            client[key](facet)
            continue
        assert key in FACET_VALIDATORS, f"unexpected run facet {key}"
        FACET_VALIDATORS[key].validate(facet)
    for key, facet in (e["job"].get("facets") or {}).items():
        assert key == "jobType", f"unexpected job facet {key}"
        check_job_type(facet)
    for d in e.get("outputs", []) + e.get("inputs", []):
        for key, facet in (d.get("facets") or {}).items():
            if key in FACET_VALIDATORS:
                FACET_VALIDATORS[key].validate(facet)


# -- helpers -------------------------------------------------------------------------------------


def manager(tmp_path: Path, *plugins: object, **section: Any) -> tuple[PipelineManager, Path]:
    path = tmp_path / "lineage.jsonl"
    cfg = {"transport": {"type": "file", "path": str(path)}, **section}
    pm = PipelineManager({"lineage": cfg}, entry_points=False, plugins=[LineagePlugin(), *plugins])
    return pm, path


def mixed_pipeline() -> Pipeline:
    p = Pipeline("orders")

    @p.task("extract", outputs=["postgres://db:5432/shop.orders"])
    def extract():
        return [1, 2, 3]

    @p.task(
        "clean",
        depends_on=["extract"],
        inputs=["postgres://db:5432/shop.orders"],
        outputs=[{"namespace": "s3://lake", "name": "clean/orders"}],
    )
    def clean(rows):
        return rows

    @p.task("boom", depends_on=["extract"])
    def boom(rows):
        raise ValueError("no good")

    @p.task("after_boom", depends_on=["boom"])
    def after_boom(x):
        return x

    @p.task("maybe", depends_on=["clean"], condition=lambda rows: False)
    def maybe(rows):
        return rows

    return p


def by_task(events: list[dict[str, Any]], pipeline: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        name = e["job"]["name"]
        if name != pipeline:
            out.setdefault(name[len(pipeline) + 1 :], []).append(e)
    return out


# -- tests ---------------------------------------------------------------------------------------


class TestEvents:
    def test_every_event_validates_against_the_openlineage_schema(self, tmp_path):
        """Each written event validates against the spec and its facet schemas."""
        pm, path = manager(tmp_path)
        result = pm.execute_pipeline(mixed_pipeline())
        events = list(read_events(path))
        assert events
        for e in events:
            validate_event(e)
        assert {e["run"]["runId"] for e in events if e["job"]["name"] == "orders"} == {
            result.run_id
        }

    def test_cached_and_fallback_tasks_validate_too(self, tmp_path):
        """A task served from the cache and one whose fallback supplied the output end
        COMPLETE with their own status in xlibPipeline_run, which the shipped schema
        accepts (and a parametrized run's params too)."""
        p = Pipeline("served")

        @p.task("load", cache=True)
        def load(day: str):
            return [day]

        @p.task("fx", fallback=lambda exc: 1.0)
        def fx():
            raise ValueError("rate service down")

        path = tmp_path / "lineage.jsonl"
        cfg = {
            "store": {"path": str(tmp_path / "runs.sqlite")},
            "lineage": {"transport": {"type": "file", "path": str(path)}},
        }
        with PipelineManager(cfg, entry_points=False, plugins=[LineagePlugin()]) as pm:
            pm.execute_pipeline(p, params={"day": "2024-05-01"})
            second = pm.execute_pipeline(p, params={"day": "2024-05-01"})
        assert second.tasks["load"].status == "cached"
        assert second.tasks["fx"].status == "fallback"
        events = run_events(read_events(path), second.run_id)
        for e in events:
            validate_event(e)
        ends = {
            e["job"]["name"]: (e["eventType"], e["run"]["facets"][RUN_FACET]["status"])
            for e in events
            if e["eventType"] != "START"
        }
        assert ends == {
            "served": ("COMPLETE", "succeeded"),
            "served.load": ("COMPLETE", "cached"),
            "served.fx": ("COMPLETE", "fallback"),
        }
        pipeline_facet = next(e for e in events if e["job"]["name"] == "served")
        assert pipeline_facet["run"]["facets"][RUN_FACET]["params"] == {"day": "2024-05-01"}

    def test_one_start_and_one_terminal_per_task_with_parent(self, tmp_path):
        """Every task run has exactly one START and one terminal event under the pipeline run."""
        pm, path = manager(tmp_path)
        result = pm.execute_pipeline(mixed_pipeline())
        events = run_events(read_events(path), result.run_id)
        tasks = by_task(events, "orders")
        assert set(tasks) == {"extract", "clean", "boom", "after_boom", "maybe"}
        expected = {
            "extract": "COMPLETE",
            "clean": "COMPLETE",
            "boom": "FAIL",
            "after_boom": "ABORT",
            "maybe": "ABORT",
        }
        for name, evs in tasks.items():
            kinds = [e["eventType"] for e in evs]
            assert kinds == ["START", expected[name]], (name, kinds)
            run_ids = {e["run"]["runId"] for e in evs}
            assert run_ids == {task_run_id(result.run_id, name)}
            uuid.UUID(run_ids.pop())
            for e in evs:
                parent = e["run"]["facets"]["parent"]
                assert parent["run"]["runId"] == result.run_id
                assert parent["job"] == {"namespace": "xlib-pipeline", "name": "orders"}
        fail = tasks["boom"][1]["run"]["facets"]
        assert "ValueError: no good" in fail["errorMessage"]["message"]
        assert tasks["after_boom"][1]["run"]["facets"]["xlibPipeline_run"]["status"] == (
            "upstream_failed"
        )
        assert tasks["maybe"][1]["run"]["facets"]["xlibPipeline_run"]["status"] == "skipped"
        pipeline = [e for e in events if e["job"]["name"] == "orders"]
        assert [e["eventType"] for e in pipeline] == ["START", "FAIL"]

    def test_declared_datasets_are_on_the_task_events(self, tmp_path):
        """inputs=/outputs= become InputDataset/OutputDataset on START and terminal events."""
        pm, path = manager(tmp_path)
        result = pm.execute_pipeline(mixed_pipeline())
        tasks = by_task(run_events(read_events(path), result.run_id), "orders")
        for e in tasks["extract"]:
            assert e["outputs"] == [{"namespace": "postgres://db:5432", "name": "shop.orders"}]
            assert e["inputs"] == []
        for e in tasks["clean"]:
            assert e["inputs"] == [{"namespace": "postgres://db:5432", "name": "shop.orders"}]
            assert e["outputs"] == [{"namespace": "s3://lake", "name": "clean/orders"}]

    def test_upstream_names_are_recorded_for_the_graph(self, tmp_path):
        """The START event's standard jobDependencies facet names the upstream task runs."""
        pm, path = manager(tmp_path)
        result = pm.execute_pipeline(mixed_pipeline())
        tasks = by_task(run_events(read_events(path), result.run_id), "orders")
        deps = tasks["clean"][0]["run"]["facets"]["jobDependencies"]["upstream"]
        assert [d["job"]["name"] for d in deps] == ["orders.extract"]
        assert "upstream" not in tasks["clean"][0]["run"]["facets"]["xlibPipeline_run"]

    def test_retries_emit_one_start_and_only_the_final_outcome(self, tmp_path):
        """A task retried twice has one START and one COMPLETE carrying attempts=3."""

        class RetryTwice:
            name = "retry_twice"

            @hookimpl
            def on_task_error(self, task, run, outcome):
                return RetryDecision(retry=True) if outcome.attempt < 3 else None

        calls = []
        p = Pipeline("flaky")

        @p.task("t")
        def t():
            calls.append(1)
            if len(calls) < 3:
                raise RuntimeError("transient")
            return "ok"

        pm, path = manager(tmp_path, RetryTwice())
        result = pm.execute_pipeline(p)
        assert result.success
        evs = by_task(run_events(read_events(path), result.run_id), "flaky")["t"]
        assert [e["eventType"] for e in evs] == ["START", "COMPLETE"]
        assert evs[1]["run"]["facets"]["xlibPipeline_run"]["attempts"] == 3

    def test_task_refused_in_before_task_gets_start_and_fail(self, tmp_path):
        """A task failed by another plugin's before_task still gets START and FAIL."""

        class Refuse:
            name = "refuse"

            @hookimpl(tryfirst=True)
            def before_task(self, task, run, inputs):
                if task.name == "b":
                    raise ComplianceError("b may not run")

        p = Pipeline("guarded")

        @p.task("a")
        def a():
            return 1

        @p.task("b", depends_on=["a"])
        def b(x):
            return x

        pm, path = manager(tmp_path, Refuse())
        result = pm.execute_pipeline(p)
        evs = by_task(run_events(read_events(path), result.run_id), "guarded")
        assert [e["eventType"] for e in evs["b"]] == ["START", "FAIL"]
        assert "ComplianceError" in evs["b"][1]["run"]["facets"]["errorMessage"]["message"]

    def test_a_refused_run_gets_start_and_fail_and_no_task_events(self, tmp_path):
        """validate_pipeline refusing a run: pipeline START+FAIL, no task events."""

        class Veto:
            name = "veto"

            @hookimpl
            def validate_pipeline(self, pipeline, run):
                raise ComplianceError("not today")

        p = Pipeline("vetoed")

        @p.task("a")
        def a():
            return 1

        pm, path = manager(tmp_path, Veto())
        with pytest.raises(ComplianceError):
            pm.execute_pipeline(p)
        events = list(read_events(path))
        assert [(e["job"]["name"], e["eventType"]) for e in events] == [
            ("vetoed", "START"),
            ("vetoed", "FAIL"),
        ]
        for e in events:
            validate_event(e)

    def test_classification_levels_become_a_dataset_facet(self, tmp_path):
        """Levels in run.stash[CLASSIFICATION] appear as a facet on the task's outputs."""

        class FakeClassifier:
            name = "fake_classifier"

            @hookimpl
            def before_pipeline(self, run):
                run.stash[CLASSIFICATION] = Classification(levels=("public", "confidential"))

            @hookimpl(tryfirst=True)
            def after_task(self, task, run, outcome):
                run.stash[CLASSIFICATION].outputs[task.name] = OutputLevel(
                    level="confidential", detected=("email",)
                )

        p = Pipeline("cls")

        @p.task("a", outputs=["db:people"])
        def a():
            return 1

        @p.task("b", depends_on=["a"])
        def b(x):
            return x

        pm, path = manager(tmp_path, FakeClassifier())
        result = pm.execute_pipeline(p)
        evs = by_task(run_events(read_events(path), result.run_id), "cls")
        out_a = evs["a"][1]["outputs"]
        assert out_a[0]["name"] == "people"
        facet = out_a[0]["facets"]["xlibPipeline_classification"]
        assert facet["level"] == "confidential" and facet["detected"] == ["email"]
        out_b = evs["b"][1]["outputs"]
        assert out_b[0]["name"] == "cls.b.result"
        for e in evs["a"] + evs["b"]:
            validate_event(e)
        assert "confidential" in to_mermaid(
            run_events(read_events(path), result.run_id), result.run_id
        )

    def test_runs_in_parallel_threads_keep_the_invariant(self, tmp_path):
        """A wide DAG on 4 threads: every task has exactly START then one terminal event."""
        p = Pipeline("wide")
        for i in range(60):
            p.add_task(
                f"t{i}",
                lambda *a: None,
                depends_on=[f"t{j}" for j in range(i % 5) if j < i],
            )
        pm, path = manager(tmp_path)
        result = pm.execute_pipeline(p, max_workers=4)
        evs = by_task(run_events(read_events(path), result.run_id), "wide")
        assert len(evs) == 60
        assert all([e["eventType"] for e in v] == ["START", "COMPLETE"] for v in evs.values())


class TestConfig:
    def test_inert_without_config(self, tmp_path, monkeypatch):
        """A manager with no lineage config writes nothing and keeps no run state."""
        monkeypatch.setenv("XLIB_PIPELINE_HOME", str(tmp_path))
        seen = {}

        class Peek:
            name = "peek"

            @hookimpl(trylast=True)
            def after_pipeline(self, run, result):
                seen["lineage"] = LINEAGE_RUN in run.stash

        p = Pipeline("quiet")
        p.add_task("a", lambda: 1)
        pm = PipelineManager(entry_points=False, plugins=[LineagePlugin(), Peek()])
        assert pm.execute_pipeline(p).success
        assert seen == {"lineage": False}
        assert not pm.has_plugin("lineage.recorder")  # no run or task hooks registered
        assert not (tmp_path / "lineage.jsonl").exists()

    def test_data_lineage_flag_uses_the_default_file(self, tmp_path, monkeypatch):
        """data_lineage=True writes to data_dir()/lineage.jsonl."""
        monkeypatch.setenv("XLIB_PIPELINE_HOME", str(tmp_path))
        p = Pipeline("flagged")
        p.add_task("a", lambda: 1)
        pm = PipelineManager({"data_lineage": True}, entry_points=False, plugins=[LineagePlugin()])
        result = pm.execute_pipeline(p)
        events = run_events(read_events(tmp_path / "lineage.jsonl"), result.run_id)
        assert Counter(e["eventType"] for e in events) == {"START": 2, "COMPLETE": 2}

    def test_data_lineage_false_wins(self, tmp_path, monkeypatch):
        """data_lineage=False turns lineage off even with a section."""
        monkeypatch.setenv("XLIB_PIPELINE_HOME", str(tmp_path))
        pm = PipelineManager(
            {"data_lineage": False, "lineage": {"namespace": "x"}},
            entry_points=False,
            plugins=[LineagePlugin()],
        )
        assert pm.get_plugin("lineage").enabled is False

    def test_unknown_section_key_names_the_closest(self, tmp_path):
        """A typo in the lineage section is a ConfigError with a suggestion."""
        with pytest.raises(ConfigError, match="namespace"):
            PipelineManager(
                {"lineage": {"namespce": "x"}},
                entry_points=False,
                plugins=[LineagePlugin()],
            )

    def test_bad_transport_is_a_config_error(self):
        """A transport the client cannot build is reported against lineage.transport."""
        with pytest.raises(ConfigError, match=r"lineage\.transport"):
            PipelineManager(
                {"lineage": {"transport": {"type": "no_such_transport"}}},
                entry_points=False,
                plugins=[LineagePlugin()],
            )

    def test_invalid_dataset_option_is_refused(self, tmp_path):
        """A malformed inputs= entry fails validation naming the task."""
        p = Pipeline("bad")
        p.add_task("a", lambda: 1, inputs=[{"nam": "x"}])
        pm, _ = manager(tmp_path)
        with pytest.raises(DefinitionError, match="'a'"):
            pm.execute_pipeline(p)

    def test_console_transport_goes_through_openlineage_client(self, caplog):
        """type=console emits through openlineage-python's ConsoleTransport."""
        caplog.set_level(logging.INFO, logger="openlineage.client.transport.console")
        p = Pipeline("console")
        p.add_task("a", lambda: 1, outputs=["db:t"])
        pm = PipelineManager(
            {"lineage": {"transport": {"type": "console"}}},
            entry_points=False,
            plugins=[LineagePlugin()],
        )
        result = pm.execute_pipeline(p)
        logged = [
            json.loads(r.getMessage())
            for r in caplog.records
            if r.name == "openlineage.client.transport.console"
        ]
        mine = run_events(logged, result.run_id)
        assert Counter(e["eventType"] for e in mine) == {"START": 2, "COMPLETE": 2}
        task_events = [e for e in mine if e["job"]["name"] == "console.a"]
        assert task_events[0]["run"]["facets"]["parent"]["run"]["runId"] == result.run_id
        assert task_events[0]["outputs"][0]["name"] == "t"


class TestHelpers:
    @settings(max_examples=50, deadline=None)
    @given(st.uuids(), st.text(min_size=1, max_size=40))
    def test_fast_uuid5_matches_uuid5(self, ns, name):
        """The fast task-run-id derivation equals uuid.uuid5."""
        assert fast_uuid5(ns.bytes, name) == str(uuid.uuid5(ns, name))

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("db:table", {"namespace": "db", "name": "table"}),
            ("plain", {"namespace": "xlib-pipeline", "name": "plain"}),
            ("s3://bucket/a/b", {"namespace": "s3://bucket", "name": "a/b"}),
            ({"name": "n"}, {"namespace": "xlib-pipeline", "name": "n"}),
        ],
    )
    def test_parse_dataset(self, value, expected):
        """Dataset strings and dicts normalise to namespace and name."""
        assert parse_dataset(value) == expected

    @pytest.mark.parametrize("value", ["", ":x", "db:", 3, {"namespace": "x"}, {"name": ""}])
    def test_parse_dataset_rejects(self, value):
        """Malformed dataset references raise ValueError."""
        with pytest.raises(ValueError):
            parse_dataset(value)


class TestCli:
    def test_lineage_show_prints_mermaid(self, tmp_path, capsys, monkeypatch):
        """`xlib-pipeline lineage show RUN_ID --file` prints jobs and datasets as Mermaid."""
        from xlib_pipeline.cli import main

        monkeypatch.setenv("XLIB_PIPELINE_HOME", str(tmp_path))
        pm, path = manager(tmp_path)
        result = pm.execute_pipeline(mixed_pipeline())
        capsys.readouterr()
        assert main(["lineage", "show", result.run_id, "--file", str(path)]) == 0
        out = capsys.readouterr().out
        assert out.startswith("flowchart LR")
        assert '["extract"]:::succeeded' in out and '["boom"]:::failed' in out
        assert '[("s3://lake:clean/orders")]' in out
        assert "-->" in out and "-.->" in out

    def test_lineage_show_unknown_run(self, tmp_path, capsys, monkeypatch):
        """An unknown run id exits non-zero with a message naming it."""
        from xlib_pipeline.cli import main

        monkeypatch.setenv("XLIB_PIPELINE_HOME", str(tmp_path))
        pm, path = manager(tmp_path)
        pm.execute_pipeline(mixed_pipeline())
        assert main(["lineage", "show", str(uuid.uuid4()), "--file", str(path)]) == 1
        assert "no lineage events" in capsys.readouterr().err


@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
def test_iso_is_datetime_isoformat(ts: float) -> None:
    from datetime import UTC, datetime

    from xlib_pipeline_lineage._events import iso

    assert iso(ts) == datetime.fromtimestamp(ts, UTC).isoformat()
    assert iso(ts + 0.5) == datetime.fromtimestamp(ts + 0.5, UTC).isoformat()  # cache reused
