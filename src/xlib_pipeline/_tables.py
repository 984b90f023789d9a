"""What a run store provides beyond runs: the result cache's table and stream checkpoints.

A run store (the embedded :class:`~._store.RunStore`, or a backend plugin's store returned
by the ``open_run_store`` hook) offers two methods:

* ``open_cache()`` returns a :class:`CacheTable`: the result cache's entries, kept where the
  runs are, so every driver on the store shares its hits;
* ``open_checkpoints()`` returns a :class:`CheckpointTable`: the streams' positions and one
  row per committed batch. Its :meth:`CheckpointTable.commit` is queued behind the batch
  run's rows on the store's writer and committed with them in **one** transaction, so after
  a crash the store holds either the whole batch (its run and its checkpoint) or none of it.

A store without them runs pipelines but refuses ``cache=True`` tasks and streams with a
:class:`~xlib_pipeline.exceptions.ConfigError` naming the store.

Entries are opaque to the table: the core encrypts a cached output through the ``encrypt``
hook before :meth:`CacheTable.put` (AAD: kind ``cache``, the key, the tenant) and decrypts
it after :meth:`CacheTable.get`; stream outputs and window state arrive sealed the same way.
"""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs

if TYPE_CHECKING:
    from .streams._protocol import Checkpoint


@attrs.frozen(kw_only=True)
class CacheEntry:
    """One stored result, as listed by ``xlib-pipeline cache list``."""

    key: str
    tenant: str | None
    pipeline: str
    task: str
    created: float
    expires: float | None
    run_id: str | None
    size: int


@runtime_checkable
class CacheTable(Protocol):
    """The result cache's entries in a run store (thread-safe).

    Tenant scoping: an entry is found only under the tenant it was stored for (``None`` is
    a tenant of its own: no tenant). TTL: an entry whose ``expires`` is past is never
    returned, and ``put`` replaces an entry under the same key.
    """

    def get(self, key: str, tenant: str | None, now: float) -> tuple[bytes, str | None] | None:
        """The stored (encrypted) output and the run that made it, unless expired."""

    def put(
        self,
        key: str,
        *,
        tenant: str | None,
        pipeline: str,
        task: str,
        ttl: float | None,
        run_id: str,
        output: bytes,
    ) -> None:
        """Store (or replace) the entry ``key``; it expires ``ttl`` seconds from now."""

    def list(
        self,
        pipeline: str | None = None,
        task: str | None = None,
        older_than: float | None = None,
    ) -> builtins.list[CacheEntry]:
        """Entries (every tenant's), oldest first, filtered as given."""

    def clear(
        self,
        pipeline: str | None = None,
        task: str | None = None,
        older_than: float | None = None,
    ) -> int:
        """Delete the entries filtered as given; how many were deleted."""

    def close(self) -> None:
        """Release the table's connection (the store stays open)."""


@attrs.frozen(kw_only=True)
class StreamRecord:
    """A stream as the store holds it."""

    name: str
    pipeline: str
    source: str | None
    sink: str | None
    status: str
    seq: int
    offset: Any
    position: Any
    origin: Any
    records: int
    outputs: int
    late: int
    dead: int
    lag: int | None
    window_state: bytes | None
    tenant: str | None
    lineage_run: str | None
    started: float | None
    updated: float | None
    error: str | None

    @property
    def checkpoint(self) -> Checkpoint:
        """The last committed checkpoint (seq 0: the stream's origin)."""
        from .streams._protocol import Checkpoint

        return Checkpoint(seq=self.seq, offset=self.offset, position=self.position)


@attrs.frozen(kw_only=True)
class BatchRecord:
    """One committed batch."""

    seq: int
    run_id: str | None
    start_offset: Any
    end_offset: Any
    records: int
    outputs: int
    late: int
    dead: int
    position: Any
    output: bytes | None
    committed: float


@runtime_checkable
class CheckpointTable(Protocol):
    """Stream checkpoints in a run store (thread-safe). Offsets, positions and origins are
    JSON values; ``output`` and ``window_state`` are bytes sealed by the core."""

    #: Where the checkpoints are, for messages (a file path, or a URL without password).
    path: Any

    def load(self, name: str) -> StreamRecord | None:
        """The stream ``name``, or ``None`` when it never ran on this store."""

    def list_streams(self) -> builtins.list[StreamRecord]:
        """Every stream, most recently updated first."""

    def create(
        self,
        *,
        name: str,
        pipeline: str,
        source: str,
        sink: str,
        origin: Any,
        tenant: str | None,
        lineage_run: str | None,
    ) -> None:
        """Start stream ``name`` afresh at the sink's ``origin`` (drops its old batches)."""

    def reopen(self, name: str, *, source: str, sink: str) -> None:
        """Mark stream ``name`` running again (a restart that continues)."""

    def commit(
        self,
        name: str,
        *,
        checkpoint: Checkpoint,
        run_id: str | None,
        start: Any,
        records: int,
        outputs: int,
        output: bytes | None,
        window_state: bytes | None,
        late: int = 0,
        dead: int = 0,
        lag: int | None = None,
    ) -> None:
        """Commit one batch (its row, the stream's new offsets, position, counters and window
        state) with everything the store's writer has queued (the batch run's rows), in one
        transaction; return once committed, raise StoreError when it could not be."""

    def finish(self, name: str, status: str, error: str | None = None) -> None:
        """Record how a stream stopped (``completed``, ``stopped``, ``failed``)."""

    def batches(self, name: str, *, limit: int = 20) -> builtins.list[BatchRecord]:
        """The newest committed batches of ``name``, newest first."""

    def close(self) -> None:
        """Release the table's connection (the store stays open)."""


def open_cache(store: Any) -> CacheTable:
    """``store.open_cache()``, or a ConfigError naming the store when it has no cache table."""
    opener = getattr(store, "open_cache", None)
    if opener is None:
        from .exceptions import ConfigError

        raise ConfigError(
            f"the run store {str(getattr(store, 'path', store))!r} ({type(store).__name__}) "
            "cannot hold the result cache: its backend has no open_cache() (see "
            "docs/run-store.md); upgrade the store's plugin or use the SQLite store",
            key="store",
        )
    table: CacheTable = opener()
    return table


def open_checkpoints(store: Any, what: str) -> CheckpointTable:
    """``store.open_checkpoints()``, or a ConfigError naming ``what`` and the store."""
    opener = getattr(store, "open_checkpoints", None)
    if opener is None:
        from .exceptions import ConfigError

        raise ConfigError(
            f"{what} needs stream checkpoints, which the run store "
            f"{str(getattr(store, 'path', store))!r} ({type(store).__name__}) cannot hold: its "
            "backend has no open_checkpoints() (see docs/run-store.md); upgrade the store's "
            "plugin or use the SQLite store",
            key="store",
        )
    table: CheckpointTable = opener()
    return table
