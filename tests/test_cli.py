"""The ``xlib-pipeline`` command line, run as a real subprocess."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

PIPELINES = textwrap.dedent(
    """
    from xlib_pipeline import Pipeline

    PIPELINE_CONFIG = {"max_workers": 2}

    ok = Pipeline("ok_pipeline")

    @ok.task("extract")
    def extract():
        return [1, 2, 3]

    @ok.task("double", depends_on=["extract"])
    def double(rows):
        return [r * 2 for r in rows]

    @ok.task("total", depends_on=["double"])
    def total(rows):
        return {"total": sum(rows)}

    def make_failing_pipeline():
        p = Pipeline("failing_pipeline")

        @p.task("load")
        def load():
            return {}

        @p.task("parse_orders", depends_on=["load"])
        def parse_orders(data):
            return data["orders"]

        return p
    """
)


def cli() -> list[str]:
    """The console script next to this interpreter, else ``python -m xlib_pipeline.cli``."""
    script = Path(sys.executable).with_name("xlib-pipeline")
    if script.exists():
        return [str(script)]
    found = shutil.which("xlib-pipeline")
    return [found] if found else [sys.executable, "-m", "xlib_pipeline.cli"]


def run_cli(*args: str, cwd: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, XLIB_PIPELINE_HOME=str(home), NO_COLOR="1", COLUMNS="200")
    return subprocess.run(
        [*cli(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "pipes.py").write_text(PIPELINES)
    return tmp_path


class TestRun:
    def test_run_prints_run_id_and_final_result(self, workdir, xlib_home):
        """run FILE:NAME prints the run id and the final result as JSON and exits 0."""
        proc = run_cli("run", "pipes.py:ok", "--no-monitor", cwd=workdir, home=xlib_home)
        assert proc.returncode == 0, proc.stderr
        match = re.search(r"^run_id: (\S+)$", proc.stdout, re.M)
        assert match, proc.stdout
        body = proc.stdout[match.end() :]
        assert json.loads(body) == {"total": 12}
        assert "succeeded" in proc.stderr

    def test_run_without_name_finds_the_only_pipeline(self, workdir, xlib_home):
        """run FILE picks the module's single Pipeline object."""
        proc = run_cli("run", "pipes.py", "--no-monitor", "--inline", cwd=workdir, home=xlib_home)
        assert proc.returncode == 0, proc.stderr
        assert '"total": 12' in proc.stdout

    def test_run_factory(self, workdir, xlib_home):
        """run FILE:factory calls a zero-argument factory returning a Pipeline."""
        proc = run_cli(
            "run", "pipes.py:make_failing_pipeline", "--no-monitor", cwd=workdir, home=xlib_home
        )
        assert proc.returncode == 1
        assert "run_id:" in proc.stdout
        assert "parse_orders" in proc.stderr and "KeyError" in proc.stderr
        # the original traceback is shown
        assert 'return data["orders"]' in proc.stderr

    def test_run_with_processes(self, workdir, xlib_home):
        """--executor processes runs the file's functions in workers."""
        proc = run_cli(
            "run", "pipes.py:ok", "--executor", "processes", "--no-monitor",
            cwd=workdir, home=xlib_home,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert '"total": 12' in proc.stdout

    def test_monitor_prints_progress_and_summary(self, workdir, xlib_home):
        """--monitor (the default) reports each task and a closing summary."""
        proc = run_cli("run", "pipes.py:ok", cwd=workdir, home=xlib_home)
        assert proc.returncode == 0, proc.stderr
        assert "double" in proc.stderr and "critical path" in proc.stderr

    def test_missing_file(self, workdir, xlib_home):
        """A file that does not exist exits 2 with a message naming it."""
        proc = run_cli("run", "nope.py", cwd=workdir, home=xlib_home)
        assert proc.returncode == 2
        assert "nope.py" in proc.stderr and "does not exist" in proc.stderr

    def test_missing_name_suggests(self, workdir, xlib_home):
        """An unknown pipeline name exits 2, naming it and suggesting the closest."""
        proc = run_cli("run", "pipes.py:okk", cwd=workdir, home=xlib_home)
        assert proc.returncode == 2
        assert "'okk'" in proc.stderr and "did you mean 'ok'" in proc.stderr

    def test_name_that_is_not_a_pipeline(self, workdir, xlib_home):
        """A name bound to something else exits 2 saying what it is."""
        proc = run_cli("run", "pipes.py:PIPELINE_CONFIG", cwd=workdir, home=xlib_home)
        assert proc.returncode == 2
        assert "expected a Pipeline" in proc.stderr

    def test_invalid_graph_exits_2(self, workdir, xlib_home):
        """A pipeline whose graph is invalid exits 2 with the graph error."""
        (workdir / "bad.py").write_text(
            "from xlib_pipeline import Pipeline\n"
            "p = Pipeline('bad')\n"
            "p.add_task('a', lambda x: x, depends_on=['b'])\n"
            "p.add_task('b', lambda x: x, depends_on=['a'])\n"
        )
        proc = run_cli("run", "bad.py", cwd=workdir, home=xlib_home)
        assert proc.returncode == 2
        assert "CycleError" in proc.stderr and "a -> b -> a" in proc.stderr

    def test_config_file(self, workdir, xlib_home):
        """--config reads a JSON file; an unknown key in it exits 2 naming the key."""
        (workdir / "bad.json").write_text(json.dumps({"max_wokers": 2}))
        proc = run_cli("run", "pipes.py:ok", "--config", "bad.json", cwd=workdir, home=xlib_home)
        assert proc.returncode == 2
        assert "max_wokers" in proc.stderr and "max_workers" in proc.stderr


class TestGraph:
    def test_mermaid(self, workdir, xlib_home):
        """graph --format mermaid prints a flowchart with the pipeline's edges."""
        proc = run_cli("graph", "pipes.py:ok", "--format", "mermaid", cwd=workdir, home=xlib_home)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("flowchart LR")
        assert proc.stdout.count("-->") == 2
        assert '["extract"]' in proc.stdout

    def test_dot(self, workdir, xlib_home):
        """graph --format dot prints a digraph with quoted edges."""
        proc = run_cli("graph", "pipes.py:ok", "--format", "dot", cwd=workdir, home=xlib_home)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith('digraph "ok_pipeline" {')
        assert '"extract" -> "double";' in proc.stdout
        assert '"double" -> "total";' in proc.stdout


class TestPlugins:
    def test_plugins_json(self, workdir, xlib_home):
        """plugins --json lists the builtin core plugin with its hooks, and every entry's fields."""
        proc = run_cli("plugins", "--json", cwd=workdir, home=xlib_home)
        assert proc.returncode == 0, proc.stderr
        listing = json.loads(proc.stdout)
        by_name = {p["name"]: p for p in listing}
        core = by_name["core"]
        assert core["builtin"] is True
        assert {"register_executors", "register_config_keys"} <= set(core["hooks"])
        for entry in listing:
            assert set(entry) == {"name", "dist", "version", "hooks", "builtin"}
            if not entry["builtin"]:
                assert entry["dist"] and entry["version"]

    def test_plugins_table(self, workdir, xlib_home):
        """plugins without --json prints a table."""
        proc = run_cli("plugins", cwd=workdir, home=xlib_home)
        assert proc.returncode == 0, proc.stderr
        assert "core" in proc.stdout and "register_executors" in proc.stdout

    def test_help_lists_commands(self, workdir, xlib_home):
        """--help lists the built-in commands."""
        proc = run_cli("--help", cwd=workdir, home=xlib_home)
        assert proc.returncode == 0
        for command in ("run", "graph", "plugins"):
            assert command in proc.stdout
