"""The source and sink protocols every stream connector implements.

A **source** hands out records in batches, each with the offset *after* its last record,
and can :meth:`~Source.seek` back to such an offset. A **sink** writes a batch's output
records and reports its **position**; on restart it is given the last checkpoint and
restores itself to it (a file sink truncates, a broker sink skips what it already holds).

Offsets and positions are plain JSON values (int, str, list, dict): they are stored in the
run store's checkpoint, in the same transaction as the batch's outputs. A Kafka connector,
for one, uses ``{"partition": offset}`` maps for both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import attrs


@attrs.frozen(kw_only=True)
class SourceBatch:
    """Records read from a source: ``start`` is the offset before them, ``end`` after."""

    records: list[Any]
    start: Any
    end: Any


@attrs.frozen(kw_only=True)
class Checkpoint:
    """The last committed batch of a stream: its sequence number, the source offset after
    it, and the sink's position after writing its output."""

    seq: int
    offset: Any
    position: Any


@runtime_checkable
class Source(Protocol):
    """Where a stream's records come from."""

    #: A short description for logs and ``runs show`` (a URL, a file path).
    url: str

    def seek(self, offset: Any) -> None:
        """Continue after ``offset`` (an ``end`` this source returned); ``None``: the start."""

    def read(self, max_records: int, timeout: float) -> SourceBatch | None:
        """Up to ``max_records`` records, waiting at most ``timeout`` seconds for the first
        one (a batch may be empty); ``None`` once the source is exhausted for good."""

    def committed(self, offset: Any) -> None:
        """Everything up to ``offset`` is checkpointed (a broker acknowledges it)."""

    def lag(self) -> int | None:
        """How far behind the source's end the stream is (records or bytes), if known."""

    def close(self) -> None:
        """Release files and connections."""


@runtime_checkable
class Sink(Protocol):
    """Where a stream's output records go."""

    url: str

    def open(self, checkpoint: Checkpoint | None) -> Checkpoint | None:
        """Restore to ``checkpoint`` (``None``: a new stream) before the first write.

        A sink that commits its own checkpoint atomically with its writes (a broker
        transaction) returns it when it is newer than the store's; the stream then
        continues after it. Others return ``None``. Such a sink may also have an
        ``adopted_counts()`` method returning ``(records, outputs)``, the input records and
        output records of the batches past ``checkpoint`` that it returned: the stream's
        counters then count them (without it, they count 0).
        """

    def position(self) -> Any:
        """The current position (what a new stream records as its origin)."""

    def write(self, records: Sequence[Any], checkpoint: Checkpoint, source: Source) -> Any:
        """Write one batch's output and return the position after it.

        ``checkpoint`` is what the stream will commit once this returns (its ``position``
        is the one before this write); ``source`` lets a broker sink acknowledge input in
        its own transaction.
        """

    def close(self) -> None:
        """Flush and release."""


class BaseSource:
    """Defaults for the optional parts of :class:`Source`."""

    url = "source"

    def committed(self, offset: Any) -> None:
        return None

    def lag(self) -> int | None:
        return None

    def close(self) -> None:
        return None


class BaseSink:
    """Defaults for the optional parts of :class:`Sink`."""

    url = "sink"
    #: Optional (default ``False``): ``True`` when :meth:`Sink.open` restores the sink to the
    #: checkpoint it is given, undoing or adopting every write past it (a file truncates, a
    #: broker sink adopts its own newer checkpoint). Then a stream writes the next batches
    #: while a batch's checkpoint commits; else each batch waits for its commit first, so
    #: after a crash at most the last batch is delivered again.
    rewinds = False

    def open(self, checkpoint: Checkpoint | None) -> Checkpoint | None:
        return None

    def position(self) -> Any:
        return None

    def close(self) -> None:
        return None
