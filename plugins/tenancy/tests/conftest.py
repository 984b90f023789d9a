from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path, monkeypatch):
    """Keep every embedded default (data folder, default key file) inside tmp_path."""
    monkeypatch.setenv("XLIB_PIPELINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XLIB_PIPELINE_KEYS_DIR", str(tmp_path / "keys"))
