"""The PostgreSQL store's recording statements, and a stream batch's run held apart from the
writer's queue until its checkpoint commits it (as the embedded store does).

:class:`Recording` makes the statements of a run's rows (its runs row, state transitions,
blob references, task rows) and queues them with ``self.add``: on
:class:`~._store.PostgresStore` the writer's queue, on :class:`HeldRun` a list of the
batch's own.

A stream batch's run commits **once, with its checkpoint** (docs/run-store.md, guarantees
(b) and (c)). Queued on the writer as it went, any commit asked for before the
checkpoint's (another run's flush on the same store, a lease heartbeat) took the batch's
first rows along in a transaction of their own; a kill right after left an interrupted run
row for a batch that re-runs. A :class:`HeldRun` keeps them out of the queue until the
checkpoint's commit puts them in, before the checkpoint's statements, as one unit
(``GroupCommitter.add_unit``); a batch that is never checkpointed (it failed, the stream
stopped on an error) is released to the queue as it is (``PostgresStore.release_held``),
committed with the next commit as before.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from xlib_pipeline.store import LOG

#: One queued statement: SQL (a str, ``LOG`` or a ``Native``) and its parameters.
Statement = tuple[str, tuple[Any, ...]]


class Recording:
    """The statements of a run's rows, queued with ``self.add`` (committed with the next
    commit of what they are queued on). ``url`` and ``path`` are the store's (the runs row's
    config is stored without the URL's password)."""

    url: str
    path: str

    def add(self, sql: str, params: tuple[Any, ...]) -> None:  # pragma: no cover
        raise NotImplementedError

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

    def event(
        self,
        run_id: str,
        task: str | None,
        event: str,
        *,
        attempt: int | None = None,
        error_type: str | None = None,
        error: Any = None,
        ts: float | None = None,
    ) -> None:
        """Queue one state transition (committed with the next commit)."""
        self.add(
            LOG,
            (2, run_id, task, event, attempt, None, None, error_type, error, None, None, None,
             None, ts or time.time()),
        )  # fmt: skip

    def task_finished(self, row: tuple[Any, ...]) -> None:
        """Queue a task's terminal state (``row`` follows the tasks table)."""
        self.add(LOG, (1, *row, None))

    def blob_referenced(self, run_id: str, task: str, name: str) -> None:
        """Queue the row saying task ``task`` of ``run_id`` references blob ``name``."""
        self.add(
            "INSERT INTO blob_refs (run_id, task, name) VALUES (%s, %s, %s) "
            "ON CONFLICT (run_id, task) DO UPDATE SET name = EXCLUDED.name",
            (run_id, task, name),
        )


class HeldRun(Recording):
    """A stream batch's run statements, held apart from the writer's queue (see the module
    docstring): ``items`` in order, until the batch's checkpoint takes them."""

    def __init__(self, url: str, path: str) -> None:
        self.url = url
        self.path = path
        self.items: list[Statement] = []

    def add(self, sql: str, params: tuple[Any, ...]) -> None:
        """Append one statement to ``items`` (no lock: one thread records a run at a time)."""
        self.items.append((sql, params))

    def claim_new(self, holder: str) -> None:
        """Nothing to write: a held run's rows commit in one transaction (with its
        checkpoint, or released as they are), so its lease would be inserted and deleted in
        that transaction, never seen by another driver. A run that never ended shows as
        interrupted without a lease, as with a dead owner's."""

    def release_leases(self, holder: str) -> None:
        """Nothing to release (see :meth:`claim_new`)."""

    def let_go(self, holder: str) -> None:
        """Nothing to stop: a held run takes no lease heartbeat (see :meth:`claim_new`)."""
