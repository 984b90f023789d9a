"""The layers stay clean: the core never imports a plugin; plugins use the core's public API
only (no private module, no private name, not the CLI), never import another plugin and never
reach another first-party plugin through ``get_plugin``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from xlib_pipeline._plugins import PLUGIN_PACKAGES

ROOT = Path(__file__).resolve().parents[1]
CORE = sorted((ROOT / "src").rglob("*.py"))
PLUGIN_SOURCES = sorted(ROOT.glob("plugins/*/src/**/*.py"))
EXAMPLE_SOURCES = sorted(ROOT.glob("examples/custom_plugin/src/**/*.py"))
FIRST_PARTY = set(PLUGIN_PACKAGES)


def package_of(path: Path) -> str:
    """The import package a source file belongs to (``xlib_pipeline_audit`` ...)."""
    src = next(p for p in path.parents if p.name == "src")
    return path.relative_to(src).parts[0]


def imports(path: Path) -> list[tuple[str, str | None]]:
    """``(module, name)`` for every absolute import (``name`` None for ``import m``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out: list[tuple[str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.extend((node.module, alias.name) for alias in node.names)
    return out


def get_plugin_names(path: Path) -> list[str]:
    """String arguments of every ``....get_plugin("name")`` call."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get_plugin"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            out.append(node.args[0].value)
    return out


def layer_violations(path: Path, own_plugin: str) -> list[str]:
    """What a plugin source file does that the layering forbids."""
    own_package = package_of(path)
    bad = []
    for module, name in imports(path):
        top = module.split(".")[0]
        if top.startswith("xlib_pipeline_") and top != own_package:
            bad.append(f"imports another plugin: {module}")
        if top != "xlib_pipeline":
            continue
        parts = module.split(".")
        if any(p.startswith("_") for p in parts[1:]):
            bad.append(f"imports a private core module: {module}")
        if module == "xlib_pipeline.cli" or (module == "xlib_pipeline" and name == "cli"):
            bad.append("imports the CLI module (use xlib_pipeline.loading)")
        if name is not None and name.startswith("_"):
            bad.append(f"imports a private name: from {module} import {name}")
    for target in get_plugin_names(path):
        if target in FIRST_PARTY and target != own_plugin:
            bad.append(f"reaches another plugin: get_plugin({target!r}) (use a hook or a StashKey)")
    return bad


def _id(p: Path) -> str:
    return str(p.relative_to(ROOT))


class TestLayers:
    @pytest.mark.parametrize("path", CORE, ids=_id)
    def test_core_imports_no_plugin(self, path: Path) -> None:
        """No core module imports a plugin package (it may only name them in strings)."""
        bad = [m for m, _ in imports(path) if m.startswith("xlib_pipeline_")]
        assert not bad, f"{path} imports plugin(s) {sorted(bad)}"

    @pytest.mark.parametrize("path", PLUGIN_SOURCES + EXAMPLE_SOURCES, ids=_id)
    def test_plugins_use_the_public_api(self, path: Path) -> None:
        """Plugins (and the example third-party plugin) keep to the core's public API."""
        own = package_of(path).removeprefix("xlib_pipeline_")
        bad = layer_violations(path, own)
        assert not bad, f"{_id(path)}: " + "; ".join(bad)

    def test_every_plugin_found(self) -> None:
        """The layer checks actually see the plugin sources."""
        expected = {p.parent.name for p in ROOT.glob("plugins/*/pyproject.toml")}
        assert len(expected) >= 11  # ten compliance/deployment/stream/evidence plugins + metrics
        assert {p.parts[len(ROOT.parts) + 1] for p in PLUGIN_SOURCES} == expected
        assert EXAMPLE_SOURCES


class TestTheChecksBite:
    """Each rule refuses a file that breaks it (the checks can fail)."""

    @pytest.mark.parametrize(
        ("source", "message"),
        [
            ("from xlib_pipeline._manager import PipelineManager\n", "private core module"),
            ("from xlib_pipeline.cli import _with_store\n", "CLI module"),
            ("from xlib_pipeline.cli import load_config\n", "CLI module"),
            ("from xlib_pipeline import _plugins\n", "private name"),
            ("from xlib_pipeline.loading import _is_candidate\n", "private name"),
            ("import xlib_pipeline_tenancy\n", "another plugin"),
            ("def f(pm):\n    return pm.get_plugin('tenancy')\n", "get_plugin('tenancy')"),
        ],
    )
    def test_refused(self, tmp_path: Path, source: str, message: str) -> None:
        path = tmp_path / "src" / "xlib_pipeline_demo" / "mod.py"
        path.parent.mkdir(parents=True)
        path.write_text(source)
        bad = layer_violations(path, "demo")
        assert any(message in b for b in bad), bad

    def test_own_plugin_and_public_api_allowed(self, tmp_path: Path) -> None:
        path = tmp_path / "src" / "xlib_pipeline_tenancy" / "mod.py"
        path.parent.mkdir(parents=True)
        path.write_text(
            "from xlib_pipeline import StashKey\n"
            "from xlib_pipeline.loading import load_config\n"
            "from xlib_pipeline_tenancy import _policy\n"
            "def f(pm):\n    return pm.get_plugin('tenancy')\n"
        )
        assert layer_violations(path, "tenancy") == []


def exception_classes(path: Path) -> list[str]:
    """Names of the classes ``path`` defines whose bases name an exception (``...Error``,
    ``...Exception``, ``...Warning``, ``Exception`` itself): what must live in
    exceptions.py."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        for base in node.bases:
            name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")
            if name.endswith(("Error", "Exception", "Warning", "Exceeded")):
                out.append(node.name)
                break
    return out


def test_every_core_exception_lives_in_exceptions_py() -> None:
    where = {
        f"{path.relative_to(ROOT)}: class {name}"
        for path in CORE
        if path.name != "exceptions.py"
        for name in exception_classes(path)
    }
    assert not where, f"exception classes outside exceptions.py: {sorted(where)}"


def test_exception_finder_sees_a_class_outside(tmp_path: Path) -> None:
    """The check above can fail: a module defining an error class is found."""
    src = tmp_path / "m.py"
    src.write_text("class Oops(ValueError):\n    pass\nclass Fine:\n    pass\n")
    assert exception_classes(src) == ["Oops"]


def test_no_module_is_over_500_lines() -> None:
    """Issue 15's size rule, for the core and every first-party plugin."""
    long = {
        str(path.relative_to(ROOT)): n
        for path in CORE + PLUGIN_SOURCES
        if (n := len(path.read_text().splitlines())) > 500
    }
    assert not long, f"modules over 500 lines: {long}"
