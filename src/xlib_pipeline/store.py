"""The run store's public API, for tools and for plugins that provide a store backend.

A backend plugin implements the ``open_run_store`` hook and returns an object with the
methods of :class:`RunStore` (the embedded SQLite store): recording (``run_started``,
``event``, ``task_finished``, ``blob_referenced``, ``run_finished``, ``add``/``commit``/
``flush``/``submit`` for the scheduler's commit barrier), leases (``acquire_leases``,
``heartbeat``, ``release_leases``, ``lease``), reading (``get_run``, ``list_runs``,
``get_tasks``, ``get_events``, ``iter_outputs``, ``iter_sealed_texts``, ``blob_names``),
maintenance (``replace_output``, ``replace_sealed_text``, ``prune``, ``close``) and a
``blobs`` attribute (a :class:`BlobStore`). ``GroupCommitter`` gives it the windowless group
commit of the embedded store with its own ``write(batch)``; ``split_log`` turns a batch's log
rows into task and event rows, folding a task's ``running`` event into its terminal row when
both are in the batch (columns ``ran``, ``ran_attempt``; ``get_events`` puts the event back,
ordered by :data:`FOLDED_ORDER` after the task's other events of the same time).

A store also holds the result cache and stream checkpoints: ``open_cache()`` returns a
:class:`CacheTable`, ``open_checkpoints()`` a :class:`CheckpointTable` (records
:class:`CacheEntry`, :class:`StreamRecord`, :class:`BatchRecord`), whose ``commit`` goes
through the store's writer with the batch run's rows, in one transaction. See
docs/run-store.md ("Where the cache and checkpoints live").
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
from ._group_commit import GroupCommitter
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
    "Lease",
    "PruneReport",
    "RunLeasedError",
    "RunRecord",
    "RunStore",
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
