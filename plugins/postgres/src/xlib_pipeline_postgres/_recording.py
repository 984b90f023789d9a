"""The PostgreSQL store's own recording statements (its runs row and blob references), on
the core's :class:`~xlib_pipeline.store.Recording`; :class:`HeldRun` is a stream batch's run
held apart from the writer's queue until its checkpoint commits it (the core's
:class:`~xlib_pipeline.store.HeldRuns`, docs/run-store.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from xlib_pipeline import store as core


class Recording(core.Recording):
    """The runs row and blob reference statements in PostgreSQL's dialect. ``url`` and
    ``path`` are the store's (the runs row's config is stored without the URL's password)."""

    url: str
    path: str

    def run_started(self, row: Mapping[str, Any]) -> None:
        """Record a new run (``row`` has the runs table's columns)."""
        if self.url != self.path and isinstance(row.get("config"), str):
            row = {**row, "config": row["config"].replace(self.url, self.path)}  # no password
        cols = ", ".join(row)
        marks = ", ".join("%s" for _ in row)
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in row if c != "run_id")
        self.add(
            f"INSERT INTO runs ({cols}) VALUES ({marks}) ON CONFLICT (run_id) DO UPDATE SET "
            + updates,
            tuple(row.values()),
        )

    def blob_referenced(self, run_id: str, task: str, name: str) -> None:
        """Queue the row saying task ``task`` of ``run_id`` references blob ``name``."""
        self.add(
            "INSERT INTO blob_refs (run_id, task, name) VALUES (%s, %s, %s) "
            "ON CONFLICT (run_id, task) DO UPDATE SET name = EXCLUDED.name",
            (run_id, task, name),
        )


class HeldRun(core.HeldRun, Recording):
    """A stream batch's run on a PostgreSQL store, held until its checkpoint's commit."""

    def __init__(self, store: Any) -> None:
        super().__init__(store)
        self.url = store.url
        self.path = store.path
