"""A stream's checkpoint commits, pipelined: batch N+1 is read and run before batch N's
commit is confirmed.

The engine queues a batch's checkpoint behind its run's rows and goes on; the store commits
as soon as no commit is in flight, so the batches that queue while one is in flight commit
together (each batch's rows and checkpoint in one transaction). Who writes is the store's
choice (``commit_soon``): the SQLite store with ``synchronous: normal`` writes on the
stream's own thread when it asks (a commit is CPU work there, and a writer thread on the
other CPU took the GIL at each of the stream's system calls); with ``full`` (an fsync per
commit) and on PostgreSQL the store's writer thread does, while the stream goes on.

What must follow a commit (the source's acknowledgement, the counters, the ``batch`` stream
event that audit and lineage record as committed, ``on_batch``) runs on the
stream's thread, in order, once the commit is confirmed: at each turn of the loop, before
a batch is written while :data:`DEPTH` batches are unconfirmed, and at the end.

Pipelining puts up to :data:`DEPTH` batches in the sink past the checkpoint, so only a sink
that is restored to its checkpoint on restart (``rewinds``: the JSON-lines file truncates,
the Redis sink adopts its own checkpoint, no sink at all) is written ahead, and only when
no late or dead-letter sink (which cannot rewind) is configured; otherwise every batch
waits for its commit before the next is written, as a callback cannot take back a delivery.
A caller's ``on_batch`` also keeps every batch confirmed before the next is written (it sees
each batch as it commits and may stop the stream right after it); the progress line of
``monitor`` only displays, and is in :data:`DISPLAY_ONLY`.
"""

from __future__ import annotations

import collections
import functools
import threading
from collections.abc import Callable, Mapping
from typing import Any

from ..exceptions import StreamError
from ._batch import brief_offset
from ._protocol import Checkpoint

#: How many batches may be written to the sink and queued for commit, unconfirmed.
DEPTH = 8
#: How many batches' commits are asked for together (in one transaction) while the source
#: keeps returning full batches: the writer's cost is mostly per transaction (same-run:
#: see the commit that set it). Half the depth when the store's writer thread commits (the
#: next group fills while one commits); the whole depth when the store commits on the
#: stream's thread (``commits_here``: nothing runs beside it, and a transaction of 8 writes
#: 3.2 WAL frames per batch against 4.9 for 4: same-run, core only 0.43 -> 0.29 ms).
GROUP = DEPTH // 2
GROUP_HERE = DEPTH
#: A read that returned a full batch within this many seconds found its records ready.
READY_S = 0.005
#: ``on_batch`` callbacks that only display progress (they do not need each batch confirmed
#: before the next is written).
DISPLAY_ONLY: set[Callable[[Any], None]] = set()


class Unconfirmed:
    """A batch whose checkpoint's commit is queued: ``then`` (called on the writer's thread,
    or at once) sets ``done``, with ``error`` when the commit failed.

    ``done`` is a plain flag; a lock is made only when the stream's thread must wait for it
    (:meth:`wait`), so a commit confirmed before it is looked at (the usual case) costs no
    Event and no lock hand-off on the writer's thread.
    """

    __slots__ = ("_latch", "checkpoint", "done", "error", "info")

    def __init__(self, checkpoint: Checkpoint, info: dict[str, Any]) -> None:
        self.checkpoint = checkpoint
        self.info = info  # the ``batch`` stream event's info (its counts, offsets, run)
        self.error: BaseException | None = None
        self.done = False
        self._latch: threading.Lock | None = None

    def then(self, error: BaseException | None) -> None:
        self.error = error
        self.done = True  # before the latch is looked at: see wait()
        latch = self._latch
        if latch is not None and latch.locked():
            latch.release()

    def wait(self) -> None:
        """Block until ``then`` has run."""
        if self.done:
            return
        latch = threading.Lock()
        latch.acquire()
        self._latch = latch
        # ``then`` sets done before it reads the latch: either it saw this latch (and
        # releases it) or done is already set here.
        if not self.done:
            latch.acquire()


class Confirming:
    """The engine's side of pipelined commits (mixed into :class:`~._engine.Stream`)."""

    name: str
    source: Any
    checkpoint: Checkpoint | None
    batches: int
    records: int
    outputs: int
    late: int
    dead: int
    _session_records: int
    _session_batches: int
    on_batch: Callable[[Any], None] | None
    _unconfirmed: collections.deque[Unconfirmed]
    #: How many batches may be unconfirmed (1: each commit is waited for at once).
    _depth: int
    #: The ``then`` of the batches queued for commit whose commit is not asked for yet.
    _deferred: list[Callable[[BaseException | None], None]]
    #: How many batches' commits are asked for together (GROUP or GROUP_HERE).
    _group: int
    _ckpt: Any

    def _event(self, event: str, info: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def _pipelines(self, sink: Any, sides: tuple[Any, ...], table: Any) -> int:
        """The depth for this stream: :data:`DEPTH` when its sink rewinds, it has no side
        sinks, no on_batch of the caller's and the store queues commits; else 1."""
        ok = getattr(sink, "rewinds", False) and not any(s is not None for s in sides)
        ok = ok and (self.on_batch is None or self.on_batch in DISPLAY_ONLY)
        return DEPTH if ok and callable(getattr(table, "commit_later", None)) else 1

    def _written(self) -> Checkpoint:
        """The checkpoint of the last batch written (committed or not)."""
        q = self._unconfirmed
        ckpt = q[-1].checkpoint if q else self.checkpoint
        assert ckpt is not None
        return ckpt

    def _settle(self, keep: int = 0) -> None:
        """Confirm the batches whose commit is done, in order, and wait for the oldest until
        at most ``keep`` are unconfirmed. Raises the StreamError of a failed commit."""
        q = self._unconfirmed
        while q:
            u = q[0]
            if not u.done:
                if len(q) <= keep:
                    return
                self._kick()
                u.wait()
            if u.error is not None:
                seq, info = u.checkpoint.seq, u.info
                raise StreamError(
                    f"stream {self.name!r}: batch {seq} (offsets {info['offsets'][0]}.."
                    f"{info['offsets'][1]}, run {info['run_id']}) could not be committed with "
                    f"its checkpoint: {u.error}. Batches up to {seq - 1} are committed; a "
                    f"restart retries batch {seq} (the sink's writes past the checkpoint are "
                    "undone or adopted)"
                ) from u.error
            q.popleft()
            self._confirm(u)

    def _kick(self) -> None:
        """Ask for the commit of the batches queued without it (one transaction)."""
        thens = self._deferred
        if thens:
            self._deferred = []
            self._ckpt.wake(thens[0] if len(thens) == 1 else functools.partial(_each, thens))

    def _confirm(self, u: Unconfirmed) -> None:
        """What follows the commit of batch ``u``."""
        ckpt = u.checkpoint
        info = u.info
        self.source.committed(ckpt.offset)
        self.checkpoint = ckpt
        self.batches = ckpt.seq
        records = info["records"]
        self.records += records
        self._session_records += records
        self._session_batches += 1
        self.outputs += info["outputs"]
        self.late += info["late"]
        self.dead += info["dead"]
        self._event("batch", info)
        if self.on_batch is not None:
            self.on_batch(self)


def _each(thens: list[Callable[[BaseException | None], None]], error: BaseException | None) -> None:
    for then in thens:
        then(error)


def batch_info(
    seq: int, run_id: str | None, start: Any, end: Any, counts: tuple[int, int, int, int], lag: Any
) -> dict[str, Any]:
    """The ``batch`` stream event's info (``counts``: records, outputs, late, dead)."""
    records, outputs, late, dead = counts
    return {
        "seq": seq,
        "run_id": run_id,
        "offsets": [brief_offset(start), brief_offset(end)],
        "records": records,
        "outputs": outputs,
        "late": late,
        "dead": dead,
        "lag": lag,
    }
