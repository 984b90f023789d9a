"""A third-party plugin is discovered through its entry point once pip-installed.

Builds a virtual environment that sees exactly what the test's own environment has (the nox
session's venv: the core, pytest, hatchling ...) and nothing of the base interpreter,
pip-installs ``examples/custom_plugin`` into it, and checks that the ``xlib-pipeline`` CLI of
that environment lists the plugin, that a run uses it, that its CLI command works, and that the
example's own tests pass there.
"""

from __future__ import annotations

import importlib.util
import json
import os
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "custom_plugin"
DIST = "xlib-pipeline-example-sla"

pytestmark = pytest.mark.slow

PIPELINE = textwrap.dedent(
    """
    import time
    from xlib_pipeline import Pipeline

    p = Pipeline("sla_demo")

    @p.task("slow_step", sla_seconds=0.05)
    def slow_step():
        time.sleep(0.3)
        return 21

    @p.task("quick_step", depends_on=["slow_step"], sla_seconds=60)
    def quick_step(x):
        return {"answer": x * 2}
    """
)


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with the example plugin installed (not editable), built once for the module."""
    root = tmp_path_factory.mktemp("venv")
    env_dir = root / "venv"
    # No --system-site-packages: that would expose the *base* interpreter (whatever was
    # installed there by hand), not this environment. Instead a .pth file adds this
    # environment's site-packages (processing their .pth files, so editable installs work).
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True, timeout=300)
    python = env_dir / "bin" / "python"
    child_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    parents = [p for p in site.getsitepackages() if Path(p).is_dir()]
    lines = "".join(f"import site; site.addsitedir({p!r})\n" for p in parents)
    (Path(child_site) / "_xlib_parent_env.pth").write_text(lines)
    # Without build isolation when the build backend is already here (fast, offline);
    # otherwise pip fetches hatchling into an isolated build environment.
    isolation = [] if importlib.util.find_spec("hatchling") is None else ["--no-build-isolation"]
    proc = subprocess.run(
        [
            str(python), "-m", "pip", "install", "--no-deps", *isolation,
            "--no-input", "--disable-pip-version-check", "-q", str(EXAMPLE),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return env_dir


def run(venv: Path, *args: str, cwd: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, XLIB_PIPELINE_HOME=str(home), NO_COLOR="1")
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        [str(venv / "bin" / "python"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


class TestExamplePluginDiscovery:
    def test_listed_with_version_and_hooks(self, venv, tmp_path):
        """`xlib-pipeline plugins --json` in the venv lists the plugin, version and hooks."""
        proc = run(
            venv, "-m", "xlib_pipeline.cli", "plugins", "--json", cwd=tmp_path, home=tmp_path
        )
        assert proc.returncode == 0, proc.stderr
        by_name = {p["name"]: p for p in json.loads(proc.stdout)}
        info = by_name["example_sla"]
        assert info["dist"] == "xlib-pipeline-example-sla"
        assert info["version"] == "0.1.0"
        assert info["builtin"] is False
        assert {
            "configure",
            "prepare_run",
            "register_task_options",
            "register_config_keys",
            "register_cli_commands",
            "register_manager_decorators",
        } <= set(info["hooks"])

    def test_not_visible_outside_the_venv(self, tmp_path):
        """The host interpreter does not have the example installed (the test is honest)."""
        proc = subprocess.run(
            [sys.executable, "-c", f"import importlib.metadata as m; m.version({DIST!r})"],
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
        if proc.returncode == 0:
            pytest.skip("the example plugin is also installed in the host environment")
        assert "PackageNotFoundError" in proc.stderr

    def test_works_in_a_run_and_its_cli_command(self, venv, tmp_path):
        """A run uses the plugin's task option; `xlib-pipeline sla` then shows the breach."""
        home = tmp_path / "home"
        (tmp_path / "sla_demo.py").write_text(PIPELINE)
        proc = run(
            venv, "-m", "xlib_pipeline.cli", "run", "sla_demo.py", "--no-monitor",
            cwd=tmp_path, home=home,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert '"answer": 42' in proc.stdout
        run_id = proc.stdout.split("run_id: ", 1)[1].split()[0]
        report = home / "sla-breaches.jsonl"
        records = [json.loads(line) for line in report.read_text().splitlines()]
        assert [(r["task"], r["run_id"]) for r in records] == [("slow_step", run_id)]
        proc = run(venv, "-m", "xlib_pipeline.cli", "sla", cwd=tmp_path, home=home)
        assert proc.returncode == 0, proc.stderr
        assert "sla_demo.slow_step" in proc.stdout and run_id in proc.stdout
        proc = run(
            venv, "-m", "xlib_pipeline.cli", "sla", "--fail-on-breach", cwd=tmp_path, home=home
        )
        assert proc.returncode == 1

    def test_the_examples_own_tests_pass_there(self, venv, tmp_path):
        """The example's test suite passes against the installed distribution, nothing skipped."""
        proc = run(
            venv, "-m", "pytest", str(EXAMPLE / "tests"), "-q", "-p", "no:cacheprovider",
            "-p", "no:randomly", "-rs", "--rootdir", str(EXAMPLE),
            cwd=tmp_path, home=tmp_path / "home",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "skipped" not in proc.stdout and " passed" in proc.stdout
