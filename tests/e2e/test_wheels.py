"""The wheels ``nox -s build`` makes install into a fresh virtual environment and work there.

Offline: the xlib-pipeline wheels are built here (no build isolation) and installed with
``--no-index --find-links``; third-party dependencies come from this environment's
site-packages, shown to the new environment through a folder of links that leaves out every
xlib-pipeline distribution (and, for the core-only environment, PyYAML). pip sees those
dependencies as installed and resolves the extras against the wheels alone.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PLUGINS = sorted(p.parent.name for p in REPO.glob("plugins/*/pyproject.toml"))
FIRST_PARTY = {f"xlib-pipeline-{n}" for n in PLUGINS}

pytestmark = pytest.mark.slow

PIPELINE = textwrap.dedent(
    """
    from xlib_pipeline import Pipeline

    p = Pipeline("wheel_check")

    @p.task("a")
    def a():
        return 20

    @p.task("b", depends_on=["a"])
    def b(x):
        return {"answer": x + 22}
    """
)


def _run(*cmd: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None):
    full = dict(os.environ, NO_COLOR="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    full.pop("PYTHONPATH", None)
    full.update(env or {})
    return subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=full, capture_output=True, text=True, timeout=900
    )


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every wheel of the repository, built as ``nox -s build`` builds them."""
    out = tmp_path_factory.mktemp("dist")
    isolation = [] if importlib.util.find_spec("hatchling") is None else ["--no-build-isolation"]
    proc = _run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q",
        "--wheel-dir", out, ".", *[f"plugins/{n}" for n in PLUGINS], cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(list(out.glob("*.whl"))) == 1 + len(PLUGINS)
    return out


def _is_ours(name: str) -> bool:
    low = name.lower()
    return (
        "xlib" in low
        or low.endswith(".pth")
        or low.startswith(("__editable__", "_editable_impl", "__pycache__"))
    )


def _deps_folder(root: Path, *, yaml: bool) -> Path:
    """Links to this environment's third-party packages, none of ours (nor PyYAML unless
    ``yaml``)."""
    folder = root / ("deps-yaml" if yaml else "deps")
    folder.mkdir()
    sources = dict.fromkeys(Path(sysconfig.get_paths()[k]) for k in ("purelib", "platlib"))
    for src in sources:
        for entry in src.iterdir():
            low = entry.name.lower()
            if _is_ours(entry.name):
                continue
            if not yaml and (low in ("yaml", "_yaml") or low.startswith("pyyaml-")):
                continue
            target = folder / entry.name
            if not target.exists():
                target.symlink_to(entry)
    return folder


def _venv(root: Path, deps: Path) -> Path:
    env_dir = root / "venv"
    proc = _run(sys.executable, "-m", "venv", env_dir)
    assert proc.returncode == 0, proc.stderr
    python = env_dir / "bin" / "python"
    site = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    (Path(site.stdout.strip()) / "_xlib_test_deps.pth").write_text(f"{deps}\n")
    return env_dir


def _install(env_dir: Path, wheels: Path, *requirements: str) -> None:
    proc = _run(
        env_dir / "bin" / "python", "-m", "pip", "install", "--no-index", "--find-links",
        wheels, "--no-input", "-q", *requirements,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _dist_names(env_dir: Path) -> set[str]:
    code = (
        "import importlib.metadata as m, json, sys; "
        "names = {d.metadata['Name'] for d in m.distributions(path=[sys.argv[1]])}; "
        "print(json.dumps(sorted(names)))"
    )
    site = _run(
        env_dir / "bin" / "python",
        "-c",
        "import sysconfig; print(sysconfig.get_paths()['purelib'])",
    )
    out = _run(env_dir / "bin" / "python", "-c", code, site.stdout.strip())
    return set(json.loads(out.stdout))


@pytest.fixture(scope="module")
def core_only(wheels: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("core")
    env_dir = _venv(root, _deps_folder(root, yaml=False))
    _install(env_dir, wheels, "xlib-pipeline")
    return env_dir


@pytest.fixture(scope="module")
def core_with_yaml(wheels: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The core alone, where every third-party dependency of the plugins is at hand."""
    root = tmp_path_factory.mktemp("core-yaml")
    env_dir = _venv(root, _deps_folder(root, yaml=True))
    _install(env_dir, wheels, "xlib-pipeline")
    return env_dir


@pytest.fixture(scope="module")
def everything(wheels: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("all")
    env_dir = _venv(root, _deps_folder(root, yaml=True))
    _install(env_dir, wheels, "xlib-pipeline[all]")
    return env_dir


def cli(env_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return _run(
        env_dir / "bin" / "xlib-pipeline",
        *args,
        cwd=cwd,
        env={"XLIB_PIPELINE_HOME": str(cwd / "home")},
    )


class TestCoreWheel:
    def test_installs_only_the_core(self, core_only):
        """The core wheel alone: no plugin, and the code runs from the installed wheel."""
        ours = {n for n in _dist_names(core_only) if n.lower().startswith("xlib")}
        assert ours == {"xlib-pipeline"}
        where = _run(
            core_only / "bin" / "python",
            "-c",
            "import xlib_pipeline; print(xlib_pipeline.__file__)",
        )
        assert str(core_only) in where.stdout, where.stdout + where.stderr

    def test_runs_a_pipeline(self, core_only, tmp_path):
        (tmp_path / "p.py").write_text(PIPELINE)
        proc = cli(core_only, "run", "p.py", "--json", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["result"] == {"answer": 42}
        version = cli(core_only, "--version", cwd=tmp_path)
        assert version.returncode == 0 and version.stdout.startswith("xlib-pipeline 0.1.0")

    def test_yaml_config_names_the_extra(self, core_only, tmp_path):
        """Without PyYAML a YAML config is an error naming the [yaml] extra, exit 2."""
        (tmp_path / "p.py").write_text(PIPELINE)
        (tmp_path / "c.yaml").write_text("max_workers: 2\n")
        proc = cli(core_only, "run", "p.py", "--config", "c.yaml", cwd=tmp_path)
        assert proc.returncode == 2
        assert "xlib-pipeline[yaml]" in proc.stderr and "c.yaml" in proc.stderr

    @pytest.mark.parametrize(
        ("argv", "package"),
        [
            (["render", "kubernetes", "p.py"], "xlib-pipeline-kubernetes"),
            (["audit", "verify", "t.jsonl"], "xlib-pipeline-audit"),
            (["lineage", "show", "x"], "xlib-pipeline-lineage"),
        ],
    )
    def test_missing_plugin_command_hint(self, core_only, tmp_path, argv, package):
        proc = cli(core_only, *argv, cwd=tmp_path)
        assert proc.returncode == 2
        assert package in proc.stderr and "not installed" in proc.stderr
        assert "invalid choice" not in proc.stderr

    @pytest.mark.parametrize(
        ("extra", "expected"),
        [
            (
                "compliance",
                {"audit", "classification", "encryption", "evidence", "lineage", "tenancy"},
            ),
            ("distributed", {"dask", "kubernetes"}),
        ],
    )
    def test_extras_resolve_to_the_plugins(self, core_with_yaml, wheels, extra, expected):
        """pip resolves each extra to exactly its plugins (a dry run against the wheels)."""
        proc = _run(
            core_with_yaml / "bin" / "python", "-m", "pip", "install", "--dry-run", "--no-index",
            "--find-links", wheels, "--report", "-", "-q", f"xlib-pipeline[{extra}]",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        names = {i["metadata"]["name"] for i in json.loads(proc.stdout)["install"]}
        assert names == {f"xlib-pipeline-{n}" for n in expected}


class TestAllExtra:
    def test_every_plugin_is_found(self, everything, tmp_path):
        """xlib-pipeline[all] installs every first-party plugin; the CLI lists them."""
        proc = cli(everything, "plugins", "--json", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        dists = {p["dist"] for p in json.loads(proc.stdout) if not p["builtin"]}
        assert dists == FIRST_PARTY

    def test_yaml_config_and_plugin_commands_work(self, everything, tmp_path):
        (tmp_path / "p.py").write_text(PIPELINE)
        (tmp_path / "c.yaml").write_text("max_workers: 2\naudit_logging: true\n")
        proc = cli(everything, "run", "p.py", "--config", "c.yaml", "--json", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        trail = tmp_path / "home" / "audit.jsonl"
        verify = cli(everything, "audit", "verify", str(trail), cwd=tmp_path)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        render = cli(everything, "render", "kubernetes", "p.py", cwd=tmp_path)
        assert render.returncode == 0, render.stderr
        assert "kind: Deployment" in render.stdout
