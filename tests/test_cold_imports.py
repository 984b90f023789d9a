"""What a cold ``PipelineManager({})`` imports with every installed plugin (issue 16 item 3).

Every manager loads every installed plugin's entry point. A plugin whose config key is
absent must cost almost nothing: its entry-point module may load, but not its settings
(attrs classes), its runtime hooks or any heavy dependency. These tests run a fresh
interpreter and look at ``sys.modules``; they assert no timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from xlib_pipeline._entrypoints import entry_points

INSTALLED = {ep.name for ep in entry_points("xlib_pipeline")}

#: Third-party and standard-library modules no unconfigured plugin may pull in.
HEAVY = (
    "asyncio",
    "concurrent.futures",
    "cryptography",
    "dask",
    "distributed",
    "importlib.metadata",
    "importlib.resources",
    "openlineage",
    "opentelemetry",
    "prometheus_client",
    "psutil",
    "psycopg",
    "redis",
    "tempfile",
    "tenacity",
    "tornado",
)

#: The only modules of each first-party plugin an unconfigured manager may import: the
#: package and the module of the object its entry point names.
ALLOWED = {
    "alerting": {"_plugin"},
    "audit": {"_plugin"},
    "dask": {"_plugin"},
    "encryption": {"_plugin"},
    "evidence": {"_plugin"},
    "kubernetes": {"_plugin"},
    "metrics": {"_plugin"},
    "postgres": set(),
    "redis": set(),
    "retries": {"_plugin"},
    "tenancy": {"_plugin"},
    "tracing": {"_plugin"},
}


def _last_json(script: str) -> Any:
    """What ``script`` prints last (JSON), run in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def _fresh(code: str) -> Any:
    """``code`` run after ``import xlib_pipeline`` (``before``: the modules loaded by then)."""
    prelude = "import json, sys\nimport xlib_pipeline\nbefore = set(sys.modules)\n"
    return _last_json(prelude + textwrap.dedent(code))


def _loaded_after_manager(config: dict[str, Any]) -> list[str]:
    found: list[str] = _fresh(
        f"""
        from xlib_pipeline import PipelineManager
        pm = PipelineManager({config!r})
        pm.close()
        print(json.dumps(sorted(set(sys.modules) - before)))
        """
    )
    return found


@pytest.fixture(scope="module")
def cold() -> list[str]:
    """Modules a fresh ``PipelineManager({})`` imported after ``import xlib_pipeline``."""
    return _loaded_after_manager({})


def test_unconfigured_manager_imports_no_heavy_module(cold: list[str]) -> None:
    new = cold
    heavy = [m for m in new if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    assert heavy == [], f"PipelineManager({{}}) imported {heavy}"


@pytest.mark.parametrize("plugin", sorted(ALLOWED))
def test_unconfigured_plugin_loads_only_its_entry_module(plugin: str, cold: list[str]) -> None:
    if plugin not in INSTALLED:
        pytest.skip(f"xlib-pipeline-{plugin} is not installed")
    package = f"xlib_pipeline_{plugin}"
    new = cold
    assert package in new  # the entry point did load
    extra = sorted(
        m
        for m in new
        if m.startswith(package + ".") and m[len(package) + 1 :] not in ALLOWED[plugin]
    )
    assert extra == [], f"an unconfigured {plugin} plugin imported {extra}"


def test_every_installed_plugin_is_still_registered_and_listed() -> None:
    names: list[str] = _fresh(
        """
        from xlib_pipeline import PipelineManager
        pm = PipelineManager({})
        print(json.dumps(sorted(p.name for p in pm.plugins)))
        """
    )
    assert set(names) == INSTALLED | {"core"}


@pytest.mark.skipif("audit" not in INSTALLED, reason="xlib-pipeline-audit is not installed")
def test_audit_flag_keys_agree() -> None:
    from xlib_pipeline_audit import _plugin, _settings

    assert _plugin.FLAG_KEYS == _settings.FLAG_KEYS


@pytest.mark.skipif("tenancy" not in INSTALLED, reason="xlib-pipeline-tenancy is not installed")
def test_configured_plugin_still_loads_its_settings() -> None:
    """The lazy converters run when the key is given (and still refuse bad values)."""
    new = _loaded_after_manager({"multi_tenant": True, "retries": {"default": 2}})
    assert "xlib_pipeline_tenancy._policy" in new
    if "retries" in INSTALLED:
        assert "xlib_pipeline_retries._policy" in new


def _modules_after_cli(argv: list[str]) -> list[str]:
    found: list[str] = _fresh(
        f"""
        import contextlib, io
        from xlib_pipeline.cli import main
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
            main({argv!r})
        print(json.dumps(sorted(set(sys.modules) - before)))
        """
    )
    return found


def test_help_imports_no_command_module() -> None:
    """``xlib-pipeline --help`` lists every command (plugins' too) without importing their
    modules, the streams engine (asyncio) or importlib.metadata (``--version`` only)."""
    new = _modules_after_cli(["--help"])
    banned = ("asyncio", "importlib.metadata", "xlib_pipeline.streams")
    loaded = [m for m in new if any(m == b or m.startswith(b + ".") for b in banned)]
    loaded += [
        m for m in new if m.startswith("xlib_pipeline_") and m.endswith(("._cli", "._graph"))
    ]
    assert loaded == [], f"--help imported {loaded}"


def test_chosen_command_gets_its_arguments() -> None:
    """A plugin command's module is imported when the command is chosen, with its options."""
    if "audit" not in INSTALLED:
        pytest.skip("xlib-pipeline-audit is not installed")
    new = _modules_after_cli(["audit", "verify", "--help"])
    assert "xlib_pipeline_audit._cli" in new
    assert "xlib_pipeline.streams" not in new


@pytest.mark.parametrize(
    ("plugin", "factory", "name"),
    [
        ("alerting", "alerts_command", "alerts"),
        ("encryption", "keys_command", "keys"),
        ("evidence", "evidence_command", "evidence"),
        ("tenancy", "tenants_command", "tenants"),
    ],
)
def test_declared_command_help_matches_its_module(plugin: str, factory: str, name: str) -> None:
    """Plugins declare their command's help without importing the command's module; it
    says what the module's own command record says."""
    if plugin not in INSTALLED:
        pytest.skip(f"xlib-pipeline-{plugin} is not installed")
    import importlib

    from xlib_pipeline import PipelineManager

    cli = importlib.import_module(f"xlib_pipeline_{plugin}._cli")
    declared = PipelineManager({}).cli_commands[name]
    assert declared.help == getattr(cli, factory)().help


#: The engine: what running a pipeline needs and neither ``import xlib_pipeline`` nor the
#: CLI's parser may import.
ENGINE = (
    "xlib_pipeline._manager",
    "xlib_pipeline._running",
    "xlib_pipeline._scheduler",
    "xlib_pipeline._store",
    "xlib_pipeline._graph",
    "xlib_pipeline._executors",
    "xlib_pipeline._features",
    "xlib_pipeline.loading",
    "cloudpickle",
    "sqlite3",
    "concurrent.futures",
)


def _new_modules(code: str) -> list[str]:
    """The modules ``code`` leaves loaded beyond a bare interpreter's (``before``)."""
    prelude = "import json, sys\nbefore = set(sys.modules)\n"
    found: list[str] = _last_json(prelude + textwrap.dedent(code))
    return found


def test_import_alone_loads_no_engine() -> None:
    """``import xlib_pipeline`` is lazy (PEP 562): no submodule but the lazy-export helper,
    no attrs, pluggy or inspect; each public name loads its module on first use."""
    new = _new_modules(
        """
        import xlib_pipeline
        print(json.dumps(sorted(set(sys.modules) - before)))
        """
    )
    ours = sorted(m for m in new if m.startswith("xlib_pipeline."))
    assert ours == ["xlib_pipeline._lazy"], f"import xlib_pipeline imported {ours}"
    heavy = [m for m in ("attrs", "pluggy", "inspect", "cloudpickle", "sqlite3") if m in new]
    assert heavy == [], f"import xlib_pipeline imported {heavy}"


def test_help_loads_no_engine() -> None:
    """``xlib-pipeline --help`` builds its parser from the plugins' declarations: neither the
    manager nor the scheduler, the run store, the graph compiler or the executors."""
    new = _new_modules(
        """
        import contextlib, io
        from xlib_pipeline.cli import main
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
            main(["--help"])
        print(json.dumps(sorted(set(sys.modules) - before)))
        """
    )
    loaded = [m for m in new if any(m == e or m.startswith(e + ".") for e in ENGINE)]
    assert loaded == [], f"--help imported {loaded}"


def test_help_lists_every_plugin_command_and_the_core_cache_command() -> None:
    """The light plugin registry behind ``--help`` offers what a full manager offers."""
    import argparse

    from xlib_pipeline import PipelineManager
    from xlib_pipeline.cli._parser import build_parser
    from xlib_pipeline.cli._registry import CliPlugins

    def choices(parser: argparse.ArgumentParser) -> list[str]:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return sorted(sub.choices)

    light, full = CliPlugins(), PipelineManager({})
    assert "cache" in light.cli_commands
    assert sorted(light.cli_commands) == sorted(full.cli_commands)
    assert sorted(light.render_targets) == sorted(full.render_targets)
    assert choices(build_parser(light)) == choices(build_parser(full))
    full.close()
