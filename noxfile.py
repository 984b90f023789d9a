"""Developer tasks: ``nox -s tests``, ``tests-versions``, ``lint``, ``demo``, ``bench``,
``plugins``, ``build``.

Plugins are found by globbing ``plugins/*/pyproject.toml``; there is no hand-kept list.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nox

ROOT = Path(__file__).parent
PLUGINS = sorted(p.parent.name for p in ROOT.glob("plugins/*/pyproject.toml"))
nox.options.sessions = ["tests"]
nox.options.reuse_venv = "yes"
# requires-python is ">=3.11"; the versions ``nox -s tests-versions`` runs the suite on.
SUPPORTED_PYTHONS = ["3.11", "3.12", "3.13"]


def _install_all(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    args: list[str] = []
    for name in PLUGINS:
        extra = (
            "[test]" if "test" in (ROOT / "plugins" / name / "pyproject.toml").read_text() else ""
        )
        args += ["-e", f"plugins/{name}{extra}"]
    if args:
        session.install(*args)


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite: core and every plugin, installed together."""
    _whole_suite(session)


@nox.session(python=SUPPORTED_PYTHONS, name="tests-versions")
def tests_versions(session: nox.Session) -> None:
    """The whole suite on each supported Python (``nox -s tests-versions-3.13`` for one).

    Not among the default sessions: ``nox -s tests`` stays one run on the default interpreter.
    """
    _whole_suite(session)


def _whole_suite(session: nox.Session) -> None:
    _install_all(session)
    session.env.setdefault("XLIB_PIPELINE_HOME", str(Path(session.create_tmp()) / "home"))
    session.env.setdefault("XLIB_PIPELINE_KEYS_DIR", str(Path(session.create_tmp()) / "keys"))
    suites = [
        "tests",
        *[f"plugins/{n}/tests" for n in PLUGINS if (ROOT / "plugins" / n / "tests").is_dir()],
    ]
    # `nox -s tests -- tests/test_graph.py -x` runs just those paths; bare options keep every suite.
    paths = [
        a for a in session.posargs if not a.startswith("-") and (ROOT / a.split("::")[0]).exists()
    ]
    session.run("python", "-m", "pytest", *([] if paths else suites), *session.posargs)


@nox.session
@nox.parametrize("plugin", PLUGINS)
def plugins(session: nox.Session, plugin: str) -> None:
    """One plugin alone with the core, in a fresh venv: proves discovery and independence."""
    session.install("-e", ".[test]")
    extra = "[test]" if "test" in (ROOT / "plugins" / plugin / "pyproject.toml").read_text() else ""
    session.install("-e", f"plugins/{plugin}{extra}")
    session.run("python", "-m", "pytest", f"plugins/{plugin}/tests", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over everything; mypy (strict) over the core, every plugin package and the
    example plugin, each installed with its dependencies so their types are real."""
    session.install("ruff", "mypy", "types-PyYAML", "-e", ".")
    session.install(*[a for n in PLUGINS for a in ("-e", f"plugins/{n}")])
    session.install("-e", "examples/custom_plugin")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")
    packages = [
        str(p.relative_to(ROOT)) for p in sorted(ROOT.glob("plugins/*/src/xlib_pipeline_*"))
    ]
    session.run("mypy", *packages, "examples/custom_plugin/src/xlib_pipeline_example_sla")


@nox.session
def demo(session: nox.Session) -> None:
    """The main job: a real pipeline with compliance plugins on, parallel, monitored."""
    _install_all(session)
    home = ROOT / ".xlib-pipeline"
    session.env["XLIB_PIPELINE_HOME"] = str(home)
    session.env.setdefault("XLIB_PIPELINE_KEYS_DIR", str(ROOT / ".xlib-pipeline-keys"))
    session.run("xlib-pipeline", "run", "examples/quickstart.py", "--monitor")
    trail = home / "audit.jsonl"
    if trail.exists():
        session.run("xlib-pipeline", "audit", "verify", str(trail))
    session.run("xlib-pipeline", "runs", "list", "--limit", "5", success_codes=[0, 2])
    # The demo run's evidence pack, verified offline with the signer's public key only.
    pack = home / "evidence-pack"
    keys = Path(session.env["XLIB_PIPELINE_KEYS_DIR"])
    session.run("xlib-pipeline", "evidence", "build", "latest", "-o", str(pack))
    session.run(
        "xlib-pipeline",
        "evidence",
        "verify",
        str(pack),
        "--public-key",
        str(keys / "evidence-signing.pub.pem"),
    )


@nox.session
def bench(session: nox.Session) -> None:
    """Every benchmark under benchmarks/; results go to benchmarks/RESULTS.md by hand."""
    _install_all(session)
    quick = ["--quick"] if "quick" in session.posargs else []
    for script in sorted((ROOT / "benchmarks").glob("bench_*.py")):
        session.run("python", str(script), *quick, env={"PYTHONHASHSEED": "0", **os.environ})


@nox.session
def build(session: nox.Session) -> None:
    """Every wheel: the core and each ``plugins/*`` distribution, into ``dist/``.

    ``pip install --find-links dist "xlib-pipeline[all]"`` installs from them (see
    docs/installation.md). ``dist/`` is emptied first, so it holds exactly this build.
    """
    session.install("hatchling>=1.24")
    dist = ROOT / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    dist.mkdir()
    projects = [".", *[f"plugins/{n}" for n in PLUGINS]]
    session.run(
        "python", "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
        "--wheel-dir", str(dist), *projects,
    )  # fmt: skip
    wheels = sorted(p.name for p in dist.glob("*.whl"))
    if len(wheels) != len(projects):
        session.error(f"expected {len(projects)} wheels in dist/, got {wheels}")
    session.log(f"{len(wheels)} wheels in dist/: " + ", ".join(wheels))
