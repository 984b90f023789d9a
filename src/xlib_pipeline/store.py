"""The run store's public API, for tools and for plugins that provide a store backend.

A backend plugin implements the ``open_run_store`` hook and returns an object with the
methods of :class:`RunStore` (the embedded SQLite store): recording (``run_started``,
``event``, ``task_finished``, ``blob_referenced``, ``run_finished``, ``add``/``commit``/
``flush``/``submit`` for the scheduler's commit barrier), leases (``acquire_leases``,
``claim_new``, ``heartbeat``, ``keep_alive``, ``let_go``, ``release_leases``, ``lease``),
reading (``get_run``, ``list_runs``, ``get_tasks``, ``get_events``, ``iter_outputs``,
``iter_sealed_texts``, ``blob_names``), maintenance (``replace_output``,
``replace_sealed_text``, ``prune``, ``close``) and a ``blobs`` attribute (a
:class:`BlobStore`). ``GroupCommitter`` gives it the windowless group commit of the embedded
store with its own ``write(batch)`` (a batch is a list of :data:`Statement`); ``split_log``
turns a batch's log rows into task and event rows, folding a task's ``running`` event into
its terminal row when both are in the batch (columns ``ran``, ``ran_attempt``;
``get_events`` puts the event back, ordered by :data:`FOLDED_ORDER` after the task's other
events of the same time).

Its recording methods come from :class:`Recording`: the backend binds ``add`` (its
committer's) and writes ``run_started`` and ``blob_referenced`` in its dialect; ``event``
and ``task_finished`` queue :data:`LOG` rows (columns :data:`LOG_COLUMNS`).

A stream batch's run commits once, with its checkpoint (docs/run-store.md, "Crash
guarantees"): :class:`HeldRuns` holds its statements apart from the committer's queue until
then. The backend mixes it in, sets ``held_run`` to ``class Held(HeldRun, ItsRecording)``
(a :class:`HeldRun` records into a list and takes no lease) and calls
``hold_runs(committer)`` in ``__init__``; it then has ``hold``, ``take_held``, ``add_unit``
and ``release_held``, which its ``run_finished`` (with the run's id) and ``close`` (with
none) call first. :class:`xlib_pipeline.testing.HeldBatchesConformance` tests a backend
for it.

A store also holds the result cache and stream checkpoints: ``open_cache()`` returns a
:class:`CacheTable`, ``open_checkpoints()`` a :class:`CheckpointTable` (records
:class:`CacheEntry`, :class:`StreamRecord`, :class:`BatchRecord`), whose ``commit`` queues
``store.take_held(runs)`` (the batch's run, and a quarantined batch's runs), then its own
statements, with ``store.add_unit``: one transaction. See docs/run-store.md ("Where the
cache and checkpoints live"). The SQLite checkpoint table asks for a stream's commits with
the store's optional ``commit_soon(then)`` (else ``commit``) and groups up to 8 batches per
transaction when the store's ``commits_here`` says ``commit_soon`` writes on the asking
thread (:meth:`GroupCommitter.commit_here`), 4 otherwise.
"""

from __future__ import annotations

from ._blobs import (
    DEFAULT_CHUNK,
    DEFAULT_THRESHOLD,
    BlobRef,
    BlobStore,
    StreamOpener,
    StreamSealer,
    blobs_section,
)
from ._commit import FOLDED_ORDER, LOG, LOG_COLUMNS, split_log
from ._group_commit import GroupCommitter, Statement
from ._held import HeldRun, HeldRuns, Recording
from ._lease import HEARTBEAT_S, STALE_S, Lease, me
from ._prune import PruneReport, parse_duration, remove_blobs
from ._store import (
    DEFAULT_STORE_FILE,
    RunRecord,
    RunStore,
    TaskRecord,
    default_blob_url,
    store_section,
)
from ._tables import BatchRecord, CacheEntry, CacheTable, CheckpointTable, StreamRecord
from .exceptions import RunLeasedError

__all__ = [
    "DEFAULT_CHUNK",
    "DEFAULT_STORE_FILE",
    "DEFAULT_THRESHOLD",
    "FOLDED_ORDER",
    "HEARTBEAT_S",
    "LOG",
    "LOG_COLUMNS",
    "STALE_S",
    "BatchRecord",
    "BlobRef",
    "BlobStore",
    "CacheEntry",
    "CacheTable",
    "CheckpointTable",
    "GroupCommitter",
    "HeldRun",
    "HeldRuns",
    "Lease",
    "PruneReport",
    "Recording",
    "RunLeasedError",
    "RunRecord",
    "RunStore",
    "Statement",
    "StreamOpener",
    "StreamRecord",
    "StreamSealer",
    "TaskRecord",
    "blobs_section",
    "default_blob_url",
    "me",
    "parse_duration",
    "remove_blobs",
    "split_log",
    "store_section",
]
