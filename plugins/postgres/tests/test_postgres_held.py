"""A stream batch's run rows are held apart from the PostgreSQL store's writer queue until
its checkpoint commits them (the core's xlib_pipeline.store.HeldRuns), as on the embedded
store: the backends' shared scenarios (xlib_pipeline.testing.HeldBatchesConformance, which
tests/test_held_batches.py runs on SQLite) on a real local server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from xlib_pipeline.testing import HeldBatchesConformance


class TestHeldBatchesPostgres(HeldBatchesConformance):
    """A plain run flushed during a batch (fails when the store queues a batch's rows as
    they are recorded), a failed batch still recorded, a quarantined batch's runs in its
    checkpoint's write only: each on an empty database of its own."""

    url = ""

    @pytest.fixture(autouse=True)
    def _database(self, postgres_url: str) -> None:
        self.url = postgres_url

    def store_section(self, tmp_path: Path) -> dict[str, Any]:
        return {"url": self.url}
