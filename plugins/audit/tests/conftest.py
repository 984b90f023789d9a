"""Fixtures for the audit plugin tests: an isolated data dir and a recorded trail."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _audit_home(tmp_path, monkeypatch):
    """Every test writes its embedded defaults into its own temporary folder."""
    monkeypatch.setenv("XLIB_PIPELINE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="session", autouse=True)
def _audit_keys_dir(tmp_path_factory):
    """Trails are keyed by default: one default key folder (outside every data folder) for
    the session, so trails recorded by shared fixtures verify in every test. The nox
    session sets it already; running the suite alone gets a temporary one, never ~/.config."""
    if not os.environ.get("XLIB_PIPELINE_KEYS_DIR"):
        os.environ["XLIB_PIPELINE_KEYS_DIR"] = str(tmp_path_factory.mktemp("keys"))
