"""The run store's recording statements, and a stream batch's run held apart until its
checkpoint commits it.

:class:`Recording` makes the statements of a run's rows (its runs row, state transitions,
blob references, task rows) and queues them with ``self.add``: on
:class:`~._store.RunStore` the group committer's queue, on :class:`HeldRun` a list of the
batch's own.

A stream batch's run commits **once, with its checkpoint** (docs/run-store.md, guarantees
(b) and (c)). Its statements were queued on the store's group committer, where any commit
asked for before the checkpoint's (another run's flush on the same manager, a heartbeat)
took its first rows along in a transaction of their own; a kill right after left an
interrupted run row for a batch that re-runs. A :class:`HeldRun` keeps them out of the
queue until the checkpoint's commit puts them in, with the checkpoint's statements, as one
unit (one ``deque.extend``); a batch that is never checkpointed (it failed, the stream
stopped on an error) is released to the queue as it is (:meth:`RunStore.release_held`),
committed with the next commit as before.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ._commit import LOG, run_insert
from ._group_commit import Statement


class Recording:
    """The statements of a run's rows, queued with ``self.add`` (committed with the next
    commit of what they are queued on)."""

    def add(self, sql: str, params: tuple[Any, ...]) -> None:  # pragma: no cover
        raise NotImplementedError

    def run_started(self, row: Mapping[str, Any]) -> None:
        """Record a new run (``row`` has the runs table's columns)."""
        self.add(run_insert(tuple(row)), tuple(row.values()))

    def event(
        self,
        run_id: str,
        task: str | None,
        event: str,
        *,
        attempt: int | None = None,
        error_type: str | None = None,
        error: str | None = None,
        ts: float | None = None,
    ) -> None:
        """Queue one state transition (committed with the next commit)."""
        self.add(
            LOG,
            (2, run_id, task, event, attempt, None, None, error_type, error, None, None, None,
             None, ts or time.time()),
        )  # fmt: skip

    def blob_referenced(self, run_id: str, task: str, name: str) -> None:
        """Queue the row saying task ``task`` of ``run_id`` references blob ``name``."""
        self.add(
            "INSERT OR REPLACE INTO blob_refs (run_id, task, name) VALUES (?, ?, ?)",
            (run_id, task, name),
        )

    def task_finished(self, row: tuple[Any, ...]) -> None:
        """Queue a task's terminal state (``row`` follows the tasks table)."""
        self.add(LOG, (1, *row, None))


class HeldRun(Recording):
    """A stream batch's run statements, held apart from the store's queue (see the module
    docstring): ``items`` in order, until the batch's checkpoint takes them."""

    def __init__(self) -> None:
        self.items: list[Statement] = []

    def add(self, sql: str, params: tuple[Any, ...]) -> None:
        """Append one statement to ``items`` (no lock: one thread records a run at a time)."""
        self.items.append((sql, params))

    def claim_new(self, holder: str) -> None:
        """Nothing to write: a held run's rows commit in one transaction (with its
        checkpoint, or released as they are), so its lease would be inserted and deleted in
        that transaction, never seen (the writer elided both statements). A run that never
        ended shows as interrupted without a lease, as with a dead owner's."""

    def release_leases(self, holder: str) -> None:
        """Nothing to release (see :meth:`claim_new`)."""

    def let_go(self, holder: str) -> None:
        """Nothing to stop: a held run takes no lease heartbeat (see :meth:`claim_new`)."""
