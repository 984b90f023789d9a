"""Shared fixtures for the core test suite.

* every test runs with ``XLIB_PIPELINE_HOME`` in its own temporary folder, so nothing a
  run writes by default (run store, audit trail ...) lands in the repository;
* ``manager`` is a :class:`PipelineManager` that ignores installed plugins;
* the random-DAG strategies in ``tests/strategies.py`` are importable as
  ``xlib_pipeline_core_strategies`` (a distinctive name: every suite of the repository runs
  together with ``--import-mode=importlib``) and are pickled by value, so task functions
  built there also work in worker processes.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from hypothesis import HealthCheck, settings

from xlib_pipeline import PipelineManager

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

settings.register_profile(
    "xlib-core",
    max_examples=30,
    deadline=None,  # two shared cores: wall-clock deadlines would only measure the machine
    # The autouse XLIB_PIPELINE_HOME fixture is function-scoped but only sets an env var.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile(
    "xlib-core-ci", parent=settings.get_profile("xlib-core"), max_examples=100
)
if not os.environ.get("HYPOTHESIS_PROFILE"):
    settings.load_profile("xlib-core")
else:  # pragma: no cover - chosen by the caller
    settings.load_profile(os.environ["HYPOTHESIS_PROFILE"])


def _load_strategies() -> None:
    name = "xlib_pipeline_core_strategies"
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, HERE / "strategies.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    cloudpickle.register_pickle_by_value(module)


_load_strategies()


@pytest.fixture(autouse=True)
def xlib_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point ``XLIB_PIPELINE_HOME`` at a fresh folder for the test."""
    home = tmp_path_factory.mktemp("xlib-home")
    monkeypatch.setenv("XLIB_PIPELINE_HOME", str(home))
    return home


@pytest.fixture
def manager() -> Iterator[PipelineManager]:
    """A manager with the core only (installed plugins ignored), closed afterwards."""
    pm = PipelineManager(entry_points=False)
    try:
        yield pm
    finally:
        pm.close()


@pytest.fixture(scope="module")
def process_manager() -> Iterator[PipelineManager]:
    """A core-only manager whose process pool stays warm for a whole test module."""
    pm = PipelineManager({"max_workers": 2}, entry_points=False)
    try:
        yield pm
    finally:
        pm.close()


class StoreBackend:
    """One run store backend for tests that run against every backend (``store_backend``):
    the embedded SQLite file, or a fresh database on a real PostgreSQL server."""

    def __init__(self, name: str, section: dict[str, Any], plugins: list[Any]) -> None:
        self.name = name
        #: The ``store`` config section.
        self.section = section
        #: Plugins a core-only manager (``entry_points=False``) needs for this backend.
        self.plugins = plugins

    @property
    def target(self) -> str:
        """What ``--store`` takes: the file path or the URL."""
        return str(self.section.get("url") or self.section["path"])

    def manager(self, config: dict[str, Any] | None = None, **kwargs: Any) -> PipelineManager:
        """A core-only manager recording into this backend."""
        plugins = [*self.plugins, *kwargs.pop("plugins", [])]
        return PipelineManager(
            {**(config or {}), "store": self.section},
            entry_points=False,
            plugins=plugins,
            **kwargs,
        )


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A real PostgreSQL server for the session (Debian's binaries), or a skip saying why."""
    testing = pytest.importorskip(
        "xlib_pipeline_postgres.testing",
        reason="the xlib-pipeline-postgres plugin is not installed (nox -s tests installs it)",
    )
    if testing.server_binaries() is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) are not installed: "
            "apt-get install postgresql (.ci/run installs it)"
        )
    with testing.local_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def store_backend(request: pytest.FixtureRequest, tmp_path: Path) -> StoreBackend:
    """Each run store backend in turn, empty (see :class:`StoreBackend`)."""
    if request.param == "sqlite":
        return StoreBackend("sqlite", {"path": str(tmp_path / "runs.sqlite")}, [])
    server: str = request.getfixturevalue("postgres_server_url")
    from xlib_pipeline_postgres import PostgresPlugin
    from xlib_pipeline_postgres.testing import fresh_database

    section = {"url": fresh_database(server), "blobs": {"url": str(tmp_path / "blobs")}}
    return StoreBackend("postgres", section, [PostgresPlugin()])
