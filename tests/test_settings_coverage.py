"""No accepted setting silently does nothing.

Enumerates every config key, task option and run option that the core and each installed
plugin register, and checks that each one is

* read by its owner's code (its name occurs in the owner's source outside the
  ``ConfigKey``/``TaskOption``/``RunOption`` that registers it, and outside doc strings), or
  listed in docs/configuration.md as affecting rendering only; and
* documented, in docs/configuration.md or the owner's page under docs/plugins/.

A new key added without either fails here.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from xlib_pipeline import PipelineManager

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
REGISTRARS = {"ConfigKey", "TaskOption", "RunOption", "ManagerDecorator", "ExecutorSpec"}


def _rendering_only() -> set[str]:
    text = (DOCS / "configuration.md").read_text()
    m = re.search(r"<!-- rendering-only keys: (.*?) -->", text)
    assert m, "docs/configuration.md lost its rendering-only marker"
    return {k.strip() for k in m.group(1).split(",") if k.strip()}


def _owner_sources(pm: PipelineManager, owner: str) -> list[Path]:
    if owner == "core":
        return sorted((REPO / "src" / "xlib_pipeline").glob("*.py"))
    plugin = pm.get_plugin(owner)
    assert plugin is not None, owner
    package = importlib.import_module(type(plugin).__module__.split(".")[0])
    assert package.__file__ is not None
    return sorted(Path(package.__file__).parent.glob("*.py"))


def _references(files: list[Path]) -> Iterator[str]:
    """String constants of ``files``, minus registrations' names and doc strings."""
    for file in files:
        tree = ast.parse(file.read_text())
        skip: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", getattr(node.func, "attr", ""))
                if name in REGISTRARS:
                    for kw in node.keywords:
                        if kw.arg in ("name", "doc"):
                            skip.update(id(n) for n in ast.walk(kw.value))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                doc = node.body[0] if node.body else None
                if isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant):
                    skip.add(id(doc.value))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in skip
            ):
                yield node.value


def _registered() -> list[tuple[str, str, str]]:
    """``(kind, name, owner)`` for every key and option registered here."""
    out: list[tuple[str, str, str]] = []
    with PipelineManager() as pm:
        for kind, hook in (
            ("config key", "register_config_keys"),
            ("task option", "register_task_options"),
            ("run option", "register_run_options"),
        ):
            for name in getattr(pm.hooks, hook)():
                out.append((kind, name, pm.hooks.owner(hook, name) or "core"))
    return out


REGISTERED = _registered()


def test_every_installed_plugin_contributes() -> None:
    """The enumeration sees the core and the plugins (so the checks below mean something)."""
    owners = {owner for _, _, owner in REGISTERED}
    assert "core" in owners
    assert len(owners) >= 2, owners


@pytest.mark.parametrize(
    ("kind", "name", "owner"), REGISTERED, ids=[f"{k}:{n}" for k, n, _ in REGISTERED]
)
def test_setting_is_read_or_rendering_only(kind: str, name: str, owner: str) -> None:
    if name in _rendering_only():
        return
    with PipelineManager() as pm:
        files = _owner_sources(pm, owner)
    leaf = name.rsplit(".", 1)[-1]
    refs = set(_references(files))
    assert name in refs or leaf in refs or any(name in r for r in refs if "." in r), (
        f"{kind} {name!r} of {owner!r} is registered but never read by {owner}'s code; "
        "make it take effect, or list it as rendering-only in docs/configuration.md"
    )


@pytest.mark.parametrize(
    ("kind", "name", "owner"), REGISTERED, ids=[f"{k}:{n}" for k, n, _ in REGISTERED]
)
def test_setting_is_documented(kind: str, name: str, owner: str) -> None:
    pages = [DOCS / "configuration.md"]
    if owner != "core":
        pages.append(DOCS / "plugins" / f"{owner}.md")
    text = "\n".join(p.read_text() for p in pages if p.exists())
    leaf = name.rsplit(".", 1)[-1]
    assert f"`{name}`" in text or f"`{leaf}`" in text or f"{leaf}=" in text, (
        f"{kind} {name!r} of {owner!r} is not documented in "
        f"{', '.join(str(p.relative_to(REPO)) for p in pages)}"
    )


def test_the_checker_catches_a_key_nobody_reads(tmp_path: Path) -> None:
    """The reference scan really excludes registrations: a dead key is reported."""
    source = inspect.cleandoc(
        '''
        from xlib_pipeline import ConfigKey

        class P:
            def register_config_keys(self):
                """Mentions never_read_key in a doc string only."""
                return (ConfigKey(name="never_read_key", convert=bool, doc="never_read_key"),)
        '''
    )
    probe = tmp_path / "dead_key_probe.py"
    probe.write_text(source)
    assert "never_read_key" not in set(_references([probe]))
    probe.write_text(source + "\n\ndef read(config):\n    return config.get('never_read_key')\n")
    assert "never_read_key" in set(_references([probe]))
