from __future__ import annotations

from collections.abc import Iterator

import pytest
from xlib_pipeline_postgres.testing import fresh_database, local_server, server_binaries


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path, monkeypatch):
    """Keep every embedded default (data folder, blob folder, keys) inside tmp_path."""
    monkeypatch.setenv("XLIB_PIPELINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XLIB_PIPELINE_KEYS_DIR", str(tmp_path / "keys"))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A real PostgreSQL server started for this test session (Debian's binaries)."""
    if server_binaries() is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) are not installed: "
            "apt-get install postgresql (.ci/run installs it)"
        )
    with local_server() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """An empty database of its own for one test."""
    return fresh_database(postgres_server)
