"""The layers stay clean: the core never imports a plugin, plugins use the public API only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


CORE = sorted((ROOT / "src").rglob("*.py"))
PLUGIN_SOURCES = sorted(ROOT.glob("plugins/*/src/**/*.py"))


class TestLayers:
    @pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(ROOT)))
    def test_core_imports_no_plugin(self, path: Path) -> None:
        """No core module imports a plugin package (it may only name them in strings)."""
        bad = {m for m in imported_modules(path) if m.startswith("xlib_pipeline_")}
        assert not bad, f"{path} imports plugin(s) {sorted(bad)}"

    @pytest.mark.parametrize("path", PLUGIN_SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
    def test_plugins_use_the_public_api(self, path: Path) -> None:
        """Plugins import xlib_pipeline's public modules, never its private ``_x`` modules."""
        bad = {
            m
            for m in imported_modules(path)
            if m.startswith("xlib_pipeline.") and m.split(".")[1].startswith("_")
        }
        assert not bad, f"{path} imports private core module(s) {sorted(bad)}"

    def test_every_plugin_found(self) -> None:
        """The layer checks actually see the plugin sources."""
        assert len({p.parts[len(ROOT.parts) + 1] for p in PLUGIN_SOURCES}) == 9
