"""Fixtures for the audit plugin tests: an isolated data dir and a recorded trail."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _audit_home(tmp_path, monkeypatch):
    """Every test writes its embedded defaults into its own temporary folder."""
    monkeypatch.setenv("XLIB_PIPELINE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"
