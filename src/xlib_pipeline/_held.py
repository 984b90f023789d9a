"""A run's recording statements, and a stream batch's run held apart until its checkpoint
commits it: part of the store contract, public in :mod:`xlib_pipeline.store`.

:class:`Recording` makes the statements of a run's rows and queues them with ``self.add``:
on a store, its group committer's queue; on a :class:`HeldRun`, a list of the batch's own.
A state transition and a task's terminal row are ``LOG`` rows, the same in every dialect
(the writer turns them into task and event rows with ``split_log``); a backend writes the
other two, :meth:`Recording.run_started` and :meth:`Recording.blob_referenced`, in its own
(:class:`SqliteRecording` is the embedded store's).

A stream batch's run commits **once, with its checkpoint** (docs/run-store.md, guarantees
(b) and (c)). Queued on the store's group committer as it went, any commit asked for before
the checkpoint's (another run's flush on the same store, a lease heartbeat) took its first
rows along in a transaction of their own; a kill right after left an interrupted run row
for a batch that re-runs. A :class:`HeldRun` keeps them out of the queue until the
checkpoint's commit puts them in, before the checkpoint's statements, as one unit
(:meth:`~._group_commit.GroupCommitter.add_unit`, one ``deque.extend``); a batch that is
never checkpointed (it failed, the stream stopped on an error) is released to the queue as
it is (:meth:`HeldRuns.release_held`), committed with the next commit as before.
:class:`HeldRuns` gives a backend that plumbing on top of its ``GroupCommitter``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from ._commit import LOG, run_insert
from ._group_commit import GroupCommitter, Statement


class Recording:
    """The statements of a run's rows, queued with ``self.add`` (committed with the next
    commit of what they are queued on).

    A backend implements :meth:`add`, :meth:`run_started` and :meth:`blob_referenced` in
    its dialect; :meth:`event` and :meth:`task_finished` queue ``LOG`` rows (columns
    ``LOG_COLUMNS``), which its writer turns into rows with ``split_log``.
    """

    def add(self, sql: str, params: tuple[Any, ...]) -> None:  # pragma: no cover
        """Queue one statement (a store binds its group committer's ``add`` here)."""
        raise NotImplementedError

    def run_started(self, row: Mapping[str, Any]) -> None:  # pragma: no cover
        """Record a new run (``row`` has the runs table's columns, ``run_id`` first)."""
        raise NotImplementedError

    def blob_referenced(self, run_id: str, task: str, name: str) -> None:  # pragma: no cover
        """Queue the row saying task ``task`` of ``run_id`` references blob ``name``."""
        raise NotImplementedError

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
        """Queue one state transition (committed with the next commit; ``error`` is a text
        or the bytes the ``encrypt`` hook sealed it into)."""
        self.add(
            LOG,
            (2, run_id, task, event, attempt, None, None, error_type, error, None, None, None,
             None, ts or time.time()),
        )  # fmt: skip

    def task_finished(self, row: tuple[Any, ...]) -> None:
        """Queue a task's terminal state (``row`` follows the tasks table)."""
        self.add(LOG, (1, *row, None))


class SqliteRecording(Recording):
    """The embedded store's runs row and blob reference statements."""

    def run_started(self, row: Mapping[str, Any]) -> None:
        """Record a new run (``row`` has the runs table's columns)."""
        self.add(run_insert(tuple(row)), tuple(row.values()))

    def blob_referenced(self, run_id: str, task: str, name: str) -> None:
        """Queue the row saying task ``task`` of ``run_id`` references blob ``name``."""
        self.add(
            "INSERT OR REPLACE INTO blob_refs (run_id, task, name) VALUES (?, ?, ?)",
            (run_id, task, name),
        )


class HeldRun(Recording):
    """A stream batch's run statements, held apart from the store's queue (see the module
    docstring): ``items`` in order, until the batch's checkpoint takes them.

    A backend's held run is this class before the backend's :class:`Recording` (``class
    Held(HeldRun, MyRecording)``), made by :meth:`HeldRuns.hold` as ``Held(store)``; one that
    needs some of the store's state for its statements takes it in ``__init__``.
    """

    def __init__(self, store: Any) -> None:
        self.items: list[Statement] = []

    def add(self, sql: str, params: tuple[Any, ...]) -> None:
        """Append one statement to ``items`` (no lock: one thread records a run at a time)."""
        self.items.append((sql, params))

    def claim_new(self, holder: str) -> None:
        """Nothing to write: a held run's rows commit in one transaction (with its
        checkpoint, or released as they are), so its lease would be inserted and deleted in
        that transaction, never seen by another process. A run that never ended shows as
        interrupted without a lease, as with a dead owner's."""

    def release_leases(self, holder: str) -> None:
        """Nothing to release (see :meth:`claim_new`)."""

    def let_go(self, holder: str) -> None:
        """Nothing to stop: a held run takes no lease heartbeat (see :meth:`claim_new`)."""


class HeldRuns:
    """A store's stream batches' runs, held apart from its group committer's queue until
    their checkpoint's commit (see the module docstring). A backend mixes this in, sets
    :attr:`held_run` and calls :meth:`hold_runs` with its ``GroupCommitter`` in
    ``__init__``; its ``run_finished`` calls :meth:`release_held` with the run's id first
    (a held run refused before it ran) and its ``close`` with none (every batch whose
    checkpoint never came). Its checkpoint table's ``commit`` queues
    ``take_held(runs) + checkpoint statements`` with :meth:`add_unit`.

    The core finds these methods by name: a store without them records a batch's run on
    its queue as it goes (a plain run's way).
    """

    #: The class of this store's held runs: :class:`HeldRun` with the store's
    #: :class:`Recording` (its dialect), called with the store.
    held_run: ClassVar[type[HeldRun]]
    #: Queue statements at once, so that no commit of the queue takes only some of them
    #: (the committer's ``add_unit``, bound by :meth:`hold_runs`).
    add_unit: Callable[[list[Statement]], None]

    def hold_runs(self, committer: GroupCommitter) -> None:
        """Start with no held run; units go to ``committer``'s queue."""
        self._held: dict[str, HeldRun] = {}
        self.add_unit = committer.add_unit

    def hold(self, run_id: str) -> HeldRun:
        """A stream batch's run ``run_id``: its statements are held apart from the queue
        until :meth:`take_held` (its checkpoint's commit) or :meth:`release_held`."""
        held = self._held[run_id] = self.held_run(self)
        return held

    def take_held(self, run_ids: tuple[str, ...]) -> list[Statement]:
        """The held statements of ``run_ids``, in order, no longer held (the caller queues
        them with :meth:`add_unit`)."""
        pop = self._held.pop
        if len(run_ids) == 1:
            held = pop(run_ids[0], None)
            return [] if held is None else held.items
        return [item for rid in run_ids for item in getattr(pop(rid, None), "items", ())]

    def release_held(self, run_ids: tuple[str, ...] | None = None) -> None:
        """Queue the held statements of ``run_ids`` (every held run: ``None``) as they are,
        committed with the next commit: a batch that will not be checkpointed."""
        if not self._held:
            return
        items = self.take_held(tuple(self._held) if run_ids is None else run_ids)
        if items:
            self.add_unit(items)
