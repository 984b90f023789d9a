"""xlib-pipeline-postgres: the run store in PostgreSQL (psycopg 3 and a connection pool).

``store: {url: "postgresql://user@host:5432/db"}``. psycopg is imported only when such a
store is opened, never when the plugin is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from xlib_pipeline import hookimpl

__version__ = "0.1.0"
__all__ = ["SCHEMES", "PostgresPlugin", "__version__"]

#: URL schemes this plugin serves.
SCHEMES = ("postgresql://", "postgres://")


class PostgresPlugin:
    """Opens ``postgresql://`` run stores (see :class:`._store.PostgresStore`)."""

    name = "postgres"

    @hookimpl
    def open_run_store(self, section: Mapping[str, Any]) -> Any:
        url = str(section.get("url", ""))
        if not url.startswith(SCHEMES):
            return None
        from ._store import PostgresStore  # psycopg loads here, when configured

        return PostgresStore(section)
