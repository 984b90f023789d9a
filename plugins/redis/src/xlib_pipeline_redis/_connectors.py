"""Redis Streams source and sink (redis-py).

Source URL: ``redis://HOST:PORT[/DB]/STREAM?group=GROUP[&consumer=NAME][&claim_idle_ms=N]``.
Records are the entries' field maps (``dict[str, str]``). Reading order on each batch:
this consumer's own pending entries (delivered before a crash, never acknowledged), then
entries idle for ``claim_idle_ms`` in *other* consumers' pending lists (``XAUTOCLAIM``,
at the first read and then at most once per ``claim_interval``: a dead consumer's work is
taken over), then new entries (``XREADGROUP ... >``). Pending entries deleted with ``XDEL``
are skipped, acknowledged, counted (``deleted``) and logged.

Sink URL: ``redis://HOST:PORT[/DB]/STREAM[?checkpoint_key=KEY][&maxlen=N]``. Each output
record (a dict) becomes one entry; values that are not str/int/float/bytes are written as
JSON. A batch's entries, the source's acknowledgements (when the source is a Redis
stream on the same server) and the sink's checkpoint are one ``MULTI``/``EXEC``: after a
crash the stream either wrote and acknowledged a batch, or did neither.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import redis

from xlib_pipeline import ConfigError
from xlib_pipeline.streams import BaseSink, BaseSource, Checkpoint, Source, SourceBatch, StreamError

_log = logging.getLogger("xlib_pipeline.redis")

#: The longest wait between two claim scans (seconds), whatever ``claim_idle_ms``.
CLAIM_INTERVAL_MAX = 60.0


def _parse(url: str, role: str, allowed: set[str]) -> tuple[str, str, dict[str, str]]:
    parts = urlsplit(url)
    shown = _shown(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ConfigError(f"{role} {shown!r}: expected redis://HOST:PORT[/DB]/STREAM", key=role)
    segments = [s for s in parts.path.split("/") if s]
    if not segments:
        raise ConfigError(f"{role} {shown!r}: no stream name (redis://HOST:PORT/STREAM)", key=role)
    db = "0"
    if len(segments) == 2 and segments[0].isdigit():
        db, stream = segments
    elif len(segments) == 1:
        stream = segments[0]
    else:
        raise ConfigError(f"{role} {shown!r}: expected one stream name after the host", key=role)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(query) - allowed
    if unknown:
        raise ConfigError(
            f"{role} {shown!r}: unknown parameter(s) {sorted(unknown)}; expected {sorted(allowed)}",
            key=role,
        )
    auth = f"{parts.username or ''}:{parts.password}@" if parts.password else ""
    server = f"{parts.scheme}://{auth}{parts.hostname}:{parts.port or 6379}/{db}"
    return server, stream, query


def _shown(url: str) -> str:
    """``url`` with its password masked: how messages, the run store (the stream's source
    and sink), ``runs show``, audit and lineage name a server."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def _int(url: str, role: str, key: str, value: Any, low: int) -> int:
    """URL parameter ``key`` as an int >= ``low``, else a ConfigError naming it."""
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = low - 1
    if isinstance(value, bool) or n < low:
        raise ConfigError(
            f"{role} {_shown(url)!r}: {key} must be an int >= {low}, got {value!r}", key=role
        )
    return n


def _check_options(url: str, role: str, options: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = set(options) - allowed
    if unknown:
        raise ConfigError(
            f"{role} {_shown(url)!r}: option(s) {sorted(unknown)} do not apply to Redis streams "
            f"(--follow is for files: a Redis source always waits for new entries); "
            f"expected {sorted(allowed)}",
            key=role,
        )


def _client(server: str) -> redis.Redis:
    return redis.Redis.from_url(server, decode_responses=True)


class RedisStreamSource(BaseSource):
    """Entries of a Redis stream, read through a consumer group."""

    def __init__(
        self,
        server: str,
        stream: str,
        *,
        group: str,
        consumer: str | None = None,
        claim_idle_ms: int = 30_000,
    ) -> None:
        self.server = server
        self.stream = stream
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}-{group}"
        self.claim_idle_ms = claim_idle_ms
        #: Seconds between two claim scans: a dead consumer's entries cannot be claimed
        #: before they are idle ``claim_idle_ms``, so scanning every half of it (at most
        #: :data:`CLAIM_INTERVAL_MAX`) delays a takeover by at most that; between scans a
        #: read is one round-trip.
        self.claim_interval = min(claim_idle_ms / 2000, CLAIM_INTERVAL_MAX)
        self._next_claim = 0.0  # the first read claims
        #: Where the next claim scan starts: Redis inspects at most COUNT*10 pending
        #: entries per XAUTOCLAIM and returns where to continue (``0-0``: scanned all).
        self._claim_from = "0-0"
        #: Pending entries deleted with XDEL that were skipped (acknowledged, not delivered).
        self.deleted = 0
        self.url = f"{_shown(server)}/{stream}?group={group}"
        self.client = _client(server)
        self._own_pending = True
        #: Entries the sink acknowledged in its transaction, whose batch is not confirmed
        #: committed yet: :meth:`committed` does not acknowledge them again.
        self._acked_in_sink: set[str] = set()
        #: Entries delivered in a batch and not acknowledged yet: they are still in our
        #: pending list, and a pending read must not deliver them again (the next batch is
        #: read while the previous one commits, or with max_in_flight > 1); :meth:`lag`
        #: does not count them (they are being processed).
        self._delivered: set[str] = set()
        #: Our pending entries up to this id were read already: the next pending read starts
        #: after it, not at ``0`` through the entries of the batches in flight again.
        self._pending_after = "0"
        try:
            self.client.xgroup_create(stream, group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise StreamError(f"source {self.url}: cannot create the group: {exc}") from exc
        except redis.RedisError as exc:
            raise StreamError(f"source {self.url}: cannot reach Redis: {exc}") from exc

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any]) -> RedisStreamSource:
        allowed = {"group", "consumer", "claim_idle_ms"}
        server, stream, query = _parse(url, "source", allowed)
        _check_options(url, "source", options, allowed)
        merged = {**query, **options}
        if not merged.get("group"):
            raise ConfigError(f"source {_shown(url)!r}: a consumer group is required (?group=NAME)")
        idle = _int(url, "source", "claim_idle_ms", merged.get("claim_idle_ms", 30_000), 0)
        return cls(
            server,
            stream,
            group=str(merged["group"]),
            consumer=merged.get("consumer"),
            claim_idle_ms=idle,
        )

    def seek(self, offset: Any) -> None:
        """Acknowledge the last committed batch again (idempotent): it may have been
        checkpointed just before a crash, before its acknowledgement reached Redis."""
        if offset is None:
            return
        ids = offset.get("ids") if isinstance(offset, dict) else None
        if ids:
            self.client.xack(self.stream, self.group, *ids)

    def from_start(self) -> None:
        """Deliver the whole stream to the group again (``from_start``)."""
        self.client.xgroup_setid(self.stream, self.group, id="0")

    def read(self, max_records: int, timeout: float) -> SourceBatch | None:
        entries: list[tuple[str, dict[str, str]]] = []
        try:
            if self._own_pending:  # delivered to us before a restart, never acknowledged
                entries = self._read_pending(max_records)
            if not entries:  # a dead consumer's pending entries
                entries = self._claim(max_records)
            if not entries:
                got: Any = self.client.xreadgroup(
                    self.group,
                    self.consumer,
                    {self.stream: ">"},
                    count=max_records,
                    block=max(1, int(timeout * 1000)),
                )
                entries = got[0][1] if got else []
        except redis.RedisError as exc:
            raise StreamError(f"source {self.url}: {type(exc).__name__}: {exc}") from exc
        ids = [e[0] for e in entries]
        self._delivered.update(ids)
        records = [dict(e[1]) for e in entries]
        start = ids[0] if ids else None
        return SourceBatch(
            records=records, start=start, end={"last": ids[-1] if ids else None, "ids": ids}
        )

    def _read_pending(self, max_records: int) -> list[tuple[str, dict[str, str]]]:
        """Our pending entries not delivered in a batch still committing, after those read
        already (one round-trip per batch); none left: back to claiming and new entries.
        Every entry of our pending list before ``_pending_after`` is delivered or acked: the
        pending read delivers all it skips over, and what joins the list later (claimed or
        new entries) is delivered as it joins."""
        while True:
            got: Any = self.client.xreadgroup(
                self.group, self.consumer, {self.stream: self._pending_after}, count=max_records
            )
            entries: list[tuple[str, dict[str, str]]] = got[0][1] if got else []
            if not entries:
                self._own_pending = False
                return []
            self._pending_after = entries[-1][0]
            fresh = self._skip_deleted([e for e in entries if e[0] not in self._delivered])
            if fresh:
                return fresh

    def _claim(self, max_records: int) -> list[tuple[str, dict[str, str]]]:
        """Entries idle ``claim_idle_ms`` in other consumers' pending lists, taken over:
        a scan continues from where the last XAUTOCLAIM stopped, and a new scan starts at
        most once per :attr:`claim_interval`."""
        now = time.monotonic()
        if self._claim_from == "0-0" and now < self._next_claim:
            return []
        claimed: Any = self.client.xautoclaim(
            self.stream,
            self.group,
            self.consumer,
            min_idle_time=self.claim_idle_ms,
            start_id=self._claim_from,
            count=max_records,
        )
        self._claim_from = str(claimed[0])
        if self._claim_from == "0-0":  # the whole pending list scanned
            self._next_claim = now + self.claim_interval
        if len(claimed) > 2 and claimed[2]:  # Redis 7: deleted, and removed from the list
            self._log_deleted([str(i) for i in claimed[2]], "taken over")
        delivered = self._delivered
        entries = self._skip_deleted([e for e in claimed[1] if e[0] not in delivered])
        if entries:
            self._own_pending = True  # they are ours now: read them as pending
        return entries

    def _skip_deleted(
        self, entries: list[tuple[str, dict[str, str]]]
    ) -> list[tuple[str, dict[str, str]]]:
        """``entries`` but those deleted with XDEL while pending (their id, no fields: an
        entry has at least one), which are acknowledged: they no longer exist."""
        gone = [e[0] for e in entries if not e[1]]
        if not gone:
            return entries
        self.client.xack(self.stream, self.group, *gone)
        self._log_deleted(gone, "pending")
        return [e for e in entries if e[1]]

    def _log_deleted(self, ids: list[str], where: str) -> None:
        self.deleted += len(ids)
        _log.warning(
            "source %s: skipped %d %s entries deleted with XDEL (acknowledged): %s",
            self.url,
            len(ids),
            where,
            ", ".join(ids),
        )

    def committed(self, offset: Any) -> None:
        ids = offset.get("ids") if isinstance(offset, dict) else None
        if not ids:
            return
        self._delivered.difference_update(ids)
        done = self._acked_in_sink
        if done:
            todo = [i for i in ids if i not in done]
            done.difference_update(ids)
            if not todo:
                return
            ids = todo
        self.client.xack(self.stream, self.group, *ids)

    def _acked(self, ids: Sequence[str]) -> None:
        """The sink acknowledged ``ids`` in its transaction (before their checkpoint)."""
        self._acked_in_sink.update(ids)
        self._delivered.difference_update(ids)

    def lag(self) -> int | None:
        """Entries this stream has not read yet (docs/streams.md): those never delivered to
        the group (``XINFO GROUPS`` ``lag``, Redis 7.0+; ``None`` when Redis cannot tell)
        plus pending entries no batch of this stream holds: this consumer's own (left by
        a restart, read again first) and those of consumers idle for ``claim_idle_ms``
        (claimed next). Entries of the batches in flight, or of another live consumer's,
        are being processed: not lag. One round-trip: the group's and its consumers' counts
        are asked for together (with other live consumers, the consumers' are needed)."""
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.xinfo_groups(self.stream)
            pipe.xinfo_consumers(self.stream, self.group)
            groups, consumers = pipe.execute()
            group = next((g for g in groups if g.get("name") == self.group), None)
            if group is None or group.get("lag") is None:
                return None
            lag = int(group["lag"])
            if int(group.get("pending", 0)) > len(self._delivered):  # not all ours in flight
                for c in consumers:
                    pending = int(c.get("pending", 0))
                    if c.get("name") == self.consumer:
                        lag += max(0, pending - len(self._delivered))
                    elif int(c.get("idle", 0)) >= self.claim_idle_ms:
                        lag += pending
        except redis.RedisError:
            return None
        return lag

    def close(self) -> None:
        self.client.close()


def _field(value: Any) -> str | int | float | bytes:
    if isinstance(value, str | int | float | bytes) and not isinstance(value, bool):
        return value
    return json.dumps(value, default=str)


#: How many batches' counts the sink's checkpoint keeps, ``[seq, records, outputs]``: more
#: than a stream ever writes past its store's checkpoint (8), so the batches a restart adopts
#: are counted.
COUNTS_KEPT = 16


class RedisStreamSink(BaseSink):
    """Appends output records to a Redis stream, exactly once per batch (MULTI/EXEC)."""

    #: Adopts its own checkpoint when it is ahead of the store's (``open``): the stream
    #: may write the next batches while a batch's checkpoint commits.
    rewinds = True

    def __init__(
        self,
        server: str,
        stream: str,
        *,
        checkpoint_key: str | None = None,
        maxlen: int | None = None,
    ) -> None:
        self.server = server
        self.stream = stream
        self.url = f"{_shown(server)}/{stream}"
        self.key = checkpoint_key or f"xlib-pipeline:checkpoint:{stream}"
        self.maxlen = maxlen
        self.client = _client(server)
        self._last: str | None = None
        #: The last batches' ``[seq, input records (None: unknown), outputs]``, kept in the
        #: checkpoint; what :meth:`open` adopted, as ``(records, outputs)``.
        self._counts: list[list[Any]] = []
        self._adopted: tuple[int, int] | None = None
        self._last_ids: Any = None

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any]) -> RedisStreamSink:
        allowed = {"checkpoint_key", "maxlen"}
        server, stream, query = _parse(url, "sink", allowed)
        _check_options(url, "sink", options, allowed)
        merged = {**query, **options}
        maxlen = merged.get("maxlen")
        return cls(
            server,
            stream,
            checkpoint_key=merged.get("checkpoint_key"),
            maxlen=None if maxlen is None else _int(url, "sink", "maxlen", maxlen, 1),
        )

    def open(self, checkpoint: Checkpoint | None) -> Checkpoint | None:
        try:
            raw = self.client.get(self.key)
        except redis.RedisError as exc:
            raise StreamError(f"sink {self.url}: cannot reach Redis: {exc}") from exc
        self._counts, self._adopted = [], None
        if checkpoint is None or checkpoint.seq == 0:  # a new stream, or from_start
            self.client.set(self.key, json.dumps({"seq": 0, "offset": None, "position": None}))
            return None
        self._last_ids = _ids(checkpoint.offset)
        if raw is None:
            return None
        saved = json.loads(raw)
        self._counts = list(saved.get("counts") or ())
        if int(saved.get("seq", 0)) > checkpoint.seq:
            self._adopted = _total(self._counts, checkpoint.seq, int(saved["seq"]))
            self._last_ids = _ids(saved.get("offset"))
            return Checkpoint(
                seq=int(saved["seq"]), offset=saved.get("offset"), position=saved.get("position")
            )
        return None

    def adopted_counts(self) -> tuple[int, int] | None:
        """``(input records, outputs)`` of the batches past the store's checkpoint that
        :meth:`open` adopted (input records counted when the source is a Redis stream: the
        checkpoint lists its entries), ``None`` when it adopted none or cannot tell."""
        return self._adopted

    def position(self) -> Any:
        return self._last

    def write(self, records: Sequence[Any], checkpoint: Checkpoint, source: Source) -> Any:
        pipe = self.client.pipeline(transaction=True)
        for rec in records:
            if not isinstance(rec, Mapping) or not rec:
                raise StreamError(
                    f"sink {self.url}: batch {checkpoint.seq}: an output record must be a "
                    f"non-empty dict (a Redis entry's field map), got "
                    f"{'an empty dict' if isinstance(rec, Mapping) else type(rec).__name__}"
                )
            fields: dict[Any, Any] = {str(k): _field(v) for k, v in rec.items()}
            if self.maxlen is not None:
                pipe.xadd(self.stream, fields, maxlen=self.maxlen, approximate=True)
            else:
                pipe.xadd(self.stream, fields)
        acked: list[str] = []
        read: int | None = None  # the batch's input records, when the sink can know them
        if isinstance(source, RedisStreamSource):
            ids = _ids(checkpoint.offset)
            # The same ids as the batch before: an empty batch closing windows at the end.
            read = 0 if ids == self._last_ids else len(ids)
            self._last_ids = ids
            if ids and source.server == self.server:
                pipe.xack(source.stream, source.group, *ids)
                acked = list(ids)
        seq = checkpoint.seq
        counts = [c for c in self._counts[-(COUNTS_KEPT - 1) :] if c[0] < seq]
        counts.append([seq, read, len(records)])
        pipe.set(
            self.key,
            json.dumps(
                {"seq": seq, "offset": checkpoint.offset, "position": None, "counts": counts}
            ),
        )
        try:
            results = pipe.execute()
        except redis.RedisError as exc:
            raise StreamError(
                f"sink {self.url}: the transaction of batch {checkpoint.seq} failed "
                f"(nothing of it was written): {exc}"
            ) from exc
        self._counts = counts
        if acked and isinstance(source, RedisStreamSource):
            source._acked(acked)
        if records:
            self._last = str(results[len(records) - 1])
        return self._last

    def close(self) -> None:
        self.client.close()


def _ids(offset: Any) -> list[str]:
    """The entry ids a Redis source's batch offset lists."""
    return list(offset.get("ids") or ()) if isinstance(offset, dict) else []


def _total(counts: Sequence[Sequence[Any]], after: int, upto: int) -> tuple[int, int] | None:
    """The input records and outputs of batches ``after + 1 .. upto`` in a sink checkpoint's
    ``counts`` (unknown input records count 0); ``None`` if a batch is missing."""
    by_seq = {int(c[0]): c for c in counts}
    records = outputs = 0
    for seq in range(after + 1, upto + 1):
        c = by_seq.get(seq)
        if c is None:
            return None
        records += int(c[1] or 0)
        outputs += int(c[2])
    return records, outputs


def wait_for(client: redis.Redis, seconds: float = 10.0) -> None:
    """Wait until ``client`` answers PING (used by the tests' server fixture)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            client.ping()
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


__all__ = ["RedisStreamSink", "RedisStreamSource"]
