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
