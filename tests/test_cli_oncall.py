"""What an on-call engineer needs from the command line (issue 17, items 4 and 6): history
with attempts, errors and tracebacks; ``run --json``; ISO-8601 times; whole run ids; validated
filters; ``--version``; global flags anywhere; help on every option; an install hint for a
missing plugin's command; config layers file < ``XLIB_PIPELINE_*`` < flags; early checks."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path

import pytest

from xlib_pipeline import PipelineManager
from xlib_pipeline.cli import build_parser
from xlib_pipeline.cli._parser import fill_all
from xlib_pipeline.exceptions import ConfigError

pytestmark = pytest.mark.slow

FLAKY = textwrap.dedent(
    """
    import os
    from pathlib import Path
    from xlib_pipeline import Pipeline

    p = Pipeline("oncall")
    MARK = Path(os.environ["ONCALL_MARKS"])

    @p.task("extract", retries={"max_attempts": 3, "initial_delay": 0.01})
    def extract():
        n = len(list(MARK.glob("x*")))
        (MARK / f"x{n}").touch()
        if n < 2:
            raise ConnectionError(f"flaky source, try {n + 1}")
        return [1, 2, 3]

    @p.task("load", depends_on=["extract"])
    def load(rows):
        if not (MARK / "fixed").exists():
            raise KeyError("orders_table_missing")
        return {"rows": len(rows)}
    """
)

SIMPLE = textwrap.dedent(
    """
    from xlib_pipeline import Pipeline

    p = Pipeline("simple")

    @p.task("a")
    def a():
        return 1

    @p.task("b", depends_on=["a"])
    def b(x):
        return {"b": x + 1}
    """
)


def run_cli(
    *args: str, cwd: Path, home: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, XLIB_PIPELINE_HOME=str(home), NO_COLOR="1", COLUMNS="80")
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "xlib_pipeline.cli", *args],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=180,
    )


def is_iso(text: object) -> bool:
    assert isinstance(text, str), text
    parsed = datetime.fromisoformat(text)
    return parsed.tzinfo is not None


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "flaky.py").write_text(FLAKY)
    (tmp_path / "simple.py").write_text(SIMPLE)
    (tmp_path / "marks").mkdir()
    return tmp_path


def flaky_env(work: Path) -> dict[str, str]:
    return {"ONCALL_MARKS": str(work / "marks")}


class TestRunsShow:
    @pytest.fixture
    def failed_then_resumed(self, work: Path) -> tuple[Path, str, str]:
        pytest.importorskip("xlib_pipeline_retries", reason="needs the retries plugin")
        env = flaky_env(work)
        first = run_cli("run", "flaky.py", "--json", cwd=work, home=work / "home", env=env)
        assert first.returncode == 1, first.stderr
        run_id = json.loads(first.stdout)["run_id"]
        (work / "marks" / "fixed").touch()
        second = run_cli("resume", run_id, "--json", cwd=work, home=work / "home", env=env)
        assert second.returncode == 0, second.stderr
        return work, run_id, json.loads(second.stdout)["run_id"]

    def test_attempts_errors_and_traceback_json(self, failed_then_resumed):
        """runs show --json gives each failed attempt's error and time, and the traceback."""
        work, run_id, _ = failed_then_resumed
        proc = run_cli("runs", "show", run_id, "--json", cwd=work, home=work / "home")
        assert proc.returncode == 0, proc.stderr
        shown = json.loads(proc.stdout)
        extract = shown["tasks"]["extract"]
        assert extract["status"] == "succeeded" and extract["attempts"] == 3
        failed = extract["failed_attempts"]
        assert [a["attempt"] for a in failed] == [1, 2]
        assert [a["error_type"] for a in failed] == ["ConnectionError"] * 2
        assert "flaky source, try 1" in failed[0]["error"]
        assert all(is_iso(a["at"]) for a in failed)
        load = shown["tasks"]["load"]
        assert load["status"] == "failed" and load["error_type"] == "KeyError"
        assert "Traceback" in load["traceback"] and 'raise KeyError("orders' in load["traceback"]
        assert is_iso(shown["started"]) and is_iso(shown["finished"])

    def test_attempts_and_traceback_text(self, failed_then_resumed):
        """The table view lists the failed attempts and prints the traceback."""
        work, run_id, _ = failed_then_resumed
        proc = run_cli("runs", "show", run_id, cwd=work, home=work / "home")
        assert proc.returncode == 0, proc.stderr
        out = proc.stdout
        assert "attempt 1 failed at" in out and "attempt 2 failed at" in out
        assert "ConnectionError: flaky source, try 2" in out
        assert "traceback of the last attempt" in out
        assert 'raise KeyError("orders_table_missing")' in out
        assert run_id in out  # the id whole on one line

    def test_reused_tasks_are_marked(self, failed_then_resumed):
        """A task a resume reused (did not run) is marked, naming the run it came from."""
        work, run_id, resumed_id = failed_then_resumed
        proc = run_cli("runs", "show", resumed_id, "--json", cwd=work, home=work / "home")
        shown = json.loads(proc.stdout)
        assert shown["resumed_from"] == run_id
        assert shown["tasks"]["extract"]["reused"] is True
        assert shown["tasks"]["extract"]["reused_from"] == run_id
        assert shown["tasks"]["load"]["reused"] is False
        text = run_cli("runs", "show", resumed_id, cwd=work, home=work / "home").stdout
        assert f"succeeded (reused from {run_id})" in text.replace("\n", "") or (
            "reused from" in text
        )


class TestRunJson:
    def test_success(self, work):
        """run --json prints one JSON object: ids, status, ISO times, tasks, result."""
        proc = run_cli("run", "simple.py", "--json", cwd=work, home=work / "home")
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert out["status"] == "succeeded" and out["success"] is True
        assert out["result"] == {"b": 2}
        assert out["pipeline"] == "simple" and len(out["run_id"]) == 36
        assert is_iso(out["started"]) and is_iso(out["finished"])
        assert out["tasks"]["b"]["status"] == "succeeded" and out["tasks"]["b"]["attempts"] == 1
        assert is_iso(out["tasks"]["a"]["started"])

    def test_failure(self, work):
        """A failed run still prints JSON, with the failed task, error and traceback; exit 1."""
        pytest.importorskip("xlib_pipeline_retries", reason="needs the retries plugin")
        proc = run_cli(
            "run", "flaky.py", "--json", cwd=work, home=work / "home", env=flaky_env(work)
        )
        assert proc.returncode == 1
        out = json.loads(proc.stdout)
        assert out["status"] == "failed" and out["failed_task"] == "load"
        assert out["error_type"] == "TaskFailedError" or "load" in out["error"]
        assert "KeyError" in out["error"] and "Traceback" in out["traceback"]
        assert out["tasks"]["extract"]["attempts"] == 3


class TestListing:
    def test_runs_json_times_are_iso(self, work):
        """runs list --json gives ISO-8601 times, not epoch floats."""
        assert (
            run_cli("run", "simple.py", "--no-monitor", cwd=work, home=work / "home").returncode
            == 0
        )
        runs = json.loads(run_cli("runs", "list", "--json", cwd=work, home=work / "home").stdout)
        assert len(runs) == 1
        assert is_iso(runs[0]["started"]) and is_iso(runs[0]["finished"])

    def test_ids_do_not_wrap(self, work):
        """In an 80-column table each run id stays whole on one line."""
        home = work / "home"
        first = json.loads(run_cli("run", "simple.py", "--json", cwd=work, home=home).stdout)
        proc = run_cli("runs", "list", cwd=work, home=home, env={"COLUMNS": "80"})
        assert proc.returncode == 0, proc.stderr
        assert first["run_id"] in proc.stdout
        started = datetime.fromisoformat(first["started"]).strftime("%Y-%m-%dT%H:%M:%S")
        assert started in proc.stdout

    def test_status_filter_is_validated(self, work):
        """--status faild exits 2 naming the valid statuses."""
        proc = run_cli("runs", "list", "--status", "faild", cwd=work, home=work / "home")
        assert proc.returncode == 2
        assert "did you mean 'failed'" in proc.stderr and "interrupted" in proc.stderr

    def test_pipeline_filter_is_validated(self, work):
        """--pipeline naming no pipeline of the store exits 2 with the known ones."""
        home = work / "home"
        assert run_cli("run", "simple.py", "--no-monitor", cwd=work, home=home).returncode == 0
        proc = run_cli("runs", "list", "--pipeline", "simpel", cwd=work, home=home)
        assert proc.returncode == 2
        assert "did you mean 'simple'" in proc.stderr
        ok = run_cli("runs", "list", "--pipeline", "simple", "--json", cwd=work, home=home)
        assert ok.returncode == 0 and len(json.loads(ok.stdout)) == 1


class TestGlobalFlags:
    def test_version(self, work):
        """--version prints the installed version and exits 0."""
        from importlib.metadata import version

        proc = run_cli("--version", cwd=work, home=work / "home")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"xlib-pipeline {version('xlib-pipeline')}")

    @pytest.mark.parametrize("where", ["before", "after"])
    def test_verbose_in_any_position(self, work, where):
        """-v works before the sub-command and after it (logs reach standard error)."""
        args = ["run", "simple.py", "--no-monitor"]
        args = ["-v", *args] if where == "before" else [*args, "-v"]
        proc = run_cli(*args, cwd=work, home=work / "home")
        assert proc.returncode == 0, proc.stderr
        assert " INFO " in proc.stderr

    def test_verbose_after_nested_sub_command(self, work):
        proc = run_cli("runs", "list", "-vv", "--json", cwd=work, home=work / "home")
        assert "unrecognized arguments" not in proc.stderr


def _walk(parser: argparse.ArgumentParser, prog: str = "xlib-pipeline"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _walk(child, f"{prog} {name}")
        else:
            yield prog, action


def test_every_option_has_help():
    """Every option and argument of every command (plugins' included) has help text."""
    parser = fill_all(build_parser(PipelineManager(entry_points=True)))
    missing = [
        f"{prog}: {'/'.join(a.option_strings) or a.dest}"
        for prog, a in _walk(parser)
        if not a.help and not isinstance(a, argparse._HelpAction)
    ]
    assert not missing, missing


class TestMissingPlugin:
    @pytest.mark.parametrize(
        ("argv", "package"),
        [
            (["audit", "verify", "x"], "xlib-pipeline-audit"),
            (["render", "kubernetes", "f.py"], "xlib-pipeline-kubernetes"),
            (["keys", "list"], "xlib-pipeline-encryption"),
        ],
    )
    def test_install_hint(self, argv, package, capsys):
        """A plugin's command without its plugin names the package to install."""
        parser = build_parser(PipelineManager(entry_points=False))
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert package in err and "not installed" in err and "invalid choice" not in err

    def test_unknown_command_still_lists_choices(self, capsys):
        parser = build_parser(PipelineManager(entry_points=False))
        with pytest.raises(SystemExit):
            parser.parse_args(["rnu"])
        assert "invalid choice" in capsys.readouterr().err


class TestConfigLayers:
    def _executor(self, work: Path, *args: str, env: dict[str, str] | None = None) -> str:
        home = work / "home"
        proc = run_cli("run", "simple.py", "--json", *args, cwd=work, home=home, env=env)
        assert proc.returncode == 0, proc.stderr
        run_id = json.loads(proc.stdout)["run_id"]
        shown = run_cli("runs", "show", run_id, "--json", cwd=work, home=home)
        return str(json.loads(shown.stdout)["executor"])

    def test_file_then_environment_then_flags(self, work):
        """The config file < XLIB_PIPELINE_* variables < flags."""
        (work / "c.json").write_text(json.dumps({"executor": "inline"}))
        assert self._executor(work, "--config", "c.json") == "inline"
        env = {"XLIB_PIPELINE_EXECUTOR": "threads"}
        assert self._executor(work, "--config", "c.json", env=env) == "threads"
        assert (
            self._executor(work, "--config", "c.json", "--executor", "processes", env=env)
            == "processes"
        )

    def test_config_file_from_environment(self, work):
        """$XLIB_PIPELINE_CONFIG names the config file when --config is not given."""
        (work / "c.json").write_text(json.dumps({"executor": "inline"}))
        env = {"XLIB_PIPELINE_CONFIG": str(work / "c.json")}
        assert self._executor(work, env=env) == "inline"

    def test_bad_variable_is_named(self, work):
        """A bad value or unknown key from the environment names the variable."""
        env = {"XLIB_PIPELINE_MAX_WORKERS": "0"}
        proc = run_cli("run", "simple.py", cwd=work, home=work / "home", env=env)
        assert proc.returncode == 2
        assert "XLIB_PIPELINE_MAX_WORKERS" in proc.stderr
        env = {"XLIB_PIPELINE_MAX_WORKRS": "2"}
        proc = run_cli("run", "simple.py", cwd=work, home=work / "home", env=env)
        assert proc.returncode == 2
        assert "XLIB_PIPELINE_MAX_WORKRS" in proc.stderr and "max_workers" in proc.stderr

    def test_nested_keys_and_json_values(self):
        from xlib_pipeline._config_env import apply_env

        environ = {
            "XLIB_PIPELINE_MAX_WORKERS": "8",
            "XLIB_PIPELINE_PLUGINS__DISABLE": '["audit"]',
            "XLIB_PIPELINE_STORE__SYNCHRONOUS": "full",
            "XLIB_PIPELINE_HOME": "/elsewhere",
            "XLIB_PIPELINE_KEYS_PROD": "secret",
        }
        got = apply_env({"store": {"path": "r.sqlite"}, "max_workers": 2}, environ)
        assert got == {
            "max_workers": 8,
            "plugins": {"disable": ["audit"]},
            "store": {"path": "r.sqlite", "synchronous": "full"},
        }

    def test_yaml_without_pyyaml(self, tmp_path, monkeypatch):
        """A YAML config file without PyYAML names the file and the [yaml] extra."""
        from xlib_pipeline.exceptions import UsageError
        from xlib_pipeline.loading import load_config

        (tmp_path / "c.yaml").write_text("max_workers: 2\n")
        monkeypatch.setitem(sys.modules, "yaml", None)  # what a core-only install has
        with pytest.raises(UsageError) as exc:
            load_config(str(tmp_path / "c.yaml"))
        assert "c.yaml" in str(exc.value) and "xlib-pipeline[yaml]" in str(exc.value)


class TestEarlyValidation:
    def test_unknown_executor_when_built(self):
        with pytest.raises(ConfigError) as exc:
            PipelineManager({"executor": "proccesses"}, entry_points=False)
        assert exc.value.key == "executor" and "did you mean 'processes'" in str(exc.value)

    def test_unknown_disabled_plugin_when_built(self):
        with pytest.raises(ConfigError) as exc:
            PipelineManager({"plugins": {"disable": ["retrys"]}})
        assert "retrys" in str(exc.value) and "did you mean 'retries'" in str(exc.value)

    def test_first_party_plugin_may_be_disabled_when_absent(self):
        PipelineManager({"plugins": {"disable": ["kubernetes"]}}, entry_points=False).close()

    def test_cli_refuses_before_running(self, work):
        (work / "c.json").write_text(json.dumps({"executor": "proccesses"}))
        proc = run_cli("run", "simple.py", "--config", "c.json", cwd=work, home=work / "home")
        assert proc.returncode == 2 and "did you mean 'processes'" in proc.stderr
        assert not (work / "home" / "runs.sqlite").exists()
