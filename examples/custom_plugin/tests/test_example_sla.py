"""Tests of the example SLA plugin. Run after ``pip install -e examples/custom_plugin``."""

from __future__ import annotations

import importlib.metadata as md
import json
import time

import pytest

sla = pytest.importorskip(
    "xlib_pipeline_example_sla", reason="install it first: pip install -e examples/custom_plugin"
)

from xlib_pipeline import (  # noqa: E402 - after the skip above
    ConfigError,
    DefinitionError,
    Pipeline,
    PipelineManager,
)
from xlib_pipeline.cli import build_parser  # noqa: E402


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """Keep default report files out of the working directory."""
    monkeypatch.setenv("XLIB_PIPELINE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def explicit(config=None) -> PipelineManager:
    """A manager with only this plugin, passed explicitly."""
    return PipelineManager(config, plugins=[sla.SlaPlugin()], entry_points=False)


def slow_pipeline() -> Pipeline:
    p = Pipeline("nightly")
    p.add_task("slow", lambda: time.sleep(0.2) or "slow", sla_seconds=0.05)
    p.add_task("fast", lambda x: x + "!", depends_on=["slow"], sla_seconds=30)
    p.add_task("unbudgeted", lambda: time.sleep(0.2))
    return p


class TestDiscovery:
    def test_installed_plugin_is_listed(self):
        """The installed distribution is discovered through its entry point."""
        try:
            version = md.version("xlib-pipeline-example-sla")
        except md.PackageNotFoundError:
            pytest.skip("not installed as a distribution")
        pm = PipelineManager()
        info = {i.name: i for i in pm.plugins}["example_sla"]
        assert info.dist == "xlib-pipeline-example-sla" and info.version == version
        assert {"configure", "prepare_run", "register_task_options"} <= set(info.hooks)
        assert "after_task" not in info.hooks  # on the recorder, registered only when needed


class TestBreaches:
    def test_slow_task_is_reported(self, home):
        """A task slower than its sla_seconds is recorded and written to the report."""
        pm = explicit()
        result = pm.execute_pipeline(slow_pipeline())
        assert result.success
        plugin = pm.get_plugin("example_sla")
        breaches = plugin.breaches_for(result.run_id)
        assert [b.task for b in breaches] == ["slow"]
        assert breaches[0].seconds > breaches[0].budget == 0.05
        lines = (home / "sla-breaches.jsonl").read_text().splitlines()
        assert [json.loads(line)["task"] for line in lines] == ["slow"]

    def test_default_budget(self, tmp_path):
        """sla.default_seconds covers tasks without sla_seconds; report_file moves the report."""
        report = tmp_path / "report.jsonl"
        pm = explicit({"sla": {"default_seconds": 0.05, "report_file": str(report)}})
        result = pm.execute_pipeline(slow_pipeline())
        names = sorted(b.task for b in sla.read_report(report))
        assert names == ["slow", "unbudgeted"]
        assert result.success

    def test_inert_without_budgets(self, home):
        """Without any budget nothing is recorded and no file is written."""
        p = Pipeline("plain")
        p.add_task("a", lambda: time.sleep(0.05))
        pm = explicit()
        pm.execute_pipeline(p)
        assert pm.get_plugin("example_sla").breaches == []
        assert not home.exists()
        # nothing registered: runs pay no per-task hook for this plugin
        assert not pm.has_plugin("example_sla.recorder") and not pm.hooks.has["after_task"]

    def test_recorder_registered_by_a_task_option(self):
        """A task with sla_seconds registers the recorder before that run starts."""
        pm = explicit()
        assert not pm.has_plugin("example_sla.recorder")
        pm.execute_pipeline(slow_pipeline())
        assert pm.has_plugin("example_sla.recorder") and pm.hooks.has["after_task"]

    def test_decorator(self):
        """pm.sla(seconds=...) attaches the option under @pipeline.task."""
        pm = explicit()
        p = Pipeline("decorated")

        @p.task("t")
        @pm.sla(seconds=2)
        def t():
            return 1

        assert p["t"].options == {"sla_seconds": 2.0}
        with pytest.raises(ValueError, match="positive number of seconds"):
            pm.sla(seconds=-1)


class TestValidation:
    def test_bad_option(self):
        """A bad sla_seconds value is refused before running, naming the task."""
        p = Pipeline("bad")
        p.add_task("t", lambda: 1, sla_seconds="fast")
        with pytest.raises(DefinitionError, match=r"'t'.*sla_seconds"):
            explicit().execute_pipeline(p)

    def test_bad_config(self):
        """A bad config value names the key."""
        with pytest.raises(ConfigError) as info:
            explicit({"sla": {"default_seconds": 0}})
        assert info.value.key == "sla.default_seconds"


class TestCli:
    def test_sla_command(self, home, capsys):
        """`xlib-pipeline sla` lists the recorded breaches; --fail-on-breach exits 1."""
        pm = explicit()
        result = pm.execute_pipeline(slow_pipeline())
        parser = build_parser(pm)
        args = parser.parse_args(["sla"])
        assert args.func(args) == 0
        out = capsys.readouterr().out
        assert "1 SLA breach(es)" in out and "nightly.slow" in out and result.run_id in out
        args = parser.parse_args(["sla", "--json", "--fail-on-breach"])
        assert args.func(args) == 1
        assert json.loads(capsys.readouterr().out)["task"] == "slow"

    def test_sla_command_without_report(self, capsys):
        """With no report file the command says there are no breaches."""
        parser = build_parser(explicit())
        args = parser.parse_args(["sla", "--fail-on-breach"])
        assert args.func(args) == 0
        assert "no SLA breaches" in capsys.readouterr().out
