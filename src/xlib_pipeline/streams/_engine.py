"""The stream driver: read a batch, run the DAG on it, write the sink, commit, in order."""

from __future__ import annotations

import collections
import concurrent.futures as cf
import sys
import threading
import time
import uuid

import attrs
from collections.abc import AsyncIterable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .._records import PayloadRef
from .._store import dump_output
from ..exceptions import ConfigError, PipelineError
from ._checkpoint import CheckpointStore, StreamRecord
from ._connectors import CallbackSink, IterableSource
from ._errors import StreamError
from ._pipeline import BATCH_TASK, derive
from ._protocol import BaseSink, Checkpoint, Sink, Source, SourceBatch
from ._windows import WindowOperator

if TYPE_CHECKING:  # pragma: no cover
    from .._manager import PipelineManager
    from .._results import PipelineResult
    from .._task import Pipeline


@attrs.frozen
class BatchOutcome:
    """A batch's run, and when its records were quarantined one by one, their outputs
    and the dead-letter entries."""

    result: PipelineResult
    outputs: list[Any] | None
    dead: list[dict[str, Any]]


class NullSink(BaseSink):
    """Keeps no copy: outputs are only checkpointed in the run store."""

    url = "none"

    def write(self, records: Any, checkpoint: Checkpoint, source: Source) -> Any:
        return None


def resolve_source(pm: PipelineManager, source: Any, options: Mapping[str, Any]) -> Source:
    """A :class:`Source` from an object, a URL (``scheme:...``) or an (async) iterable."""
    if isinstance(source, str):
        conn = pm.stream_connectors.get(_scheme(source))
        if conn is None or conn.source is None:
            raise ConfigError(_unknown(pm, source, "source"), key="source")
        made: Source = conn.source(source, dict(options))
        return made
    if options:
        raise ConfigError(
            f"source options {sorted(options)} apply to a source URL; pass them to the "
            "source object's constructor instead",
            key="source_options",
        )
    if isinstance(source, Source):
        return source
    if isinstance(source, Iterable | AsyncIterable):
        return IterableSource(source)
    raise ConfigError(
        f"source must be a Source, a URL like 'jsonl:PATH' or an (async) iterable, "
        f"got {type(source).__name__}",
        key="source",
    )


def resolve_sink(pm: PipelineManager, sink: Any, options: Mapping[str, Any]) -> Sink:
    """A :class:`Sink` from an object, a URL, a callable (callback) or ``None``."""
    if sink is None:
        return NullSink()
    if isinstance(sink, str):
        conn = pm.stream_connectors.get(_scheme(sink))
        if conn is None or conn.sink is None:
            raise ConfigError(_unknown(pm, sink, "sink"), key="sink")
        made: Sink = conn.sink(sink, dict(options))
        return made
    if options:
        raise ConfigError(
            f"sink options {sorted(options)} apply to a sink URL; pass them to the sink "
            "object's constructor instead",
            key="sink_options",
        )
    if isinstance(sink, Sink):
        return sink
    if callable(sink):
        return CallbackSink(sink)
    raise ConfigError(
        f"sink must be a Sink, a URL like 'jsonl:PATH', a callable or None, "
        f"got {type(sink).__name__}",
        key="sink",
    )


def _scheme(url: str) -> str:
    head, sep, _ = url.partition(":")
    return head.lower() if sep else ""


def _unknown(pm: PipelineManager, url: str, role: str) -> str:
    have = sorted(
        s for s, c in pm.stream_connectors.items() if (c.source if role == "source" else c.sink)
    )
    scheme = _scheme(url)
    hint = " (install xlib-pipeline-redis)" if scheme in ("redis", "rediss") else ""
    return (
        f"{role} {url!r}: no connector for scheme {scheme!r}{hint}; "
        f"known {role} schemes: {', '.join(have)}"
    )


def brief_offset(offset: Any) -> Any:
    """An offset short enough for audit records and run params (a broker batch's list of
    entry ids becomes its first, last and count)."""
    if isinstance(offset, Mapping) and isinstance(offset.get("ids"), list):
        ids = offset["ids"]
        return {"first": ids[0] if ids else None, "last": offset.get("last"), "count": len(ids)}
    return offset


def _records_of(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list):
        return value
    if isinstance(value, tuple):
        return list(value)
    return [value]


class Stream:
    """One stream: a pipeline over a source into a sink, checkpointed in the run store.

    Counters (``records``, ``batches``, ``outputs``, ``late``, ``dead``) include what
    earlier runs of the same stream committed. ``status`` is ``created``, ``running``,
    ``completed`` (the source ended), ``stopped`` (:meth:`stop`, a limit, Ctrl-C) or
    ``failed`` (``error`` says why; nothing after the last checkpoint was committed).
    """

    def __init__(
        self,
        pm: PipelineManager,
        pipeline: Pipeline,
        *,
        source: Source,
        sink: Sink,
        name: str,
        batch_size: int,
        batch_timeout: float,
        max_in_flight: int,
        from_start: bool,
        output_task: str | None,
        max_batches: int | None,
        max_records: int | None,
        idle_timeout: float | None,
        run_kwargs: Mapping[str, Any],
        on_batch: Callable[[Stream], None] | None = None,
        late_sink: Sink | None = None,
        dead_letter: Sink | None = None,
    ) -> None:
        self.pm = pm
        self.pipeline = pipeline
        self.source = source
        self.sink = sink
        self.name = name
        self.batch_size = batch_size
        self.batch_timeout = batch_timeout
        self.max_in_flight = max_in_flight
        self.from_start = from_start
        self.max_batches = max_batches
        self.max_records = max_records
        self.idle_timeout = idle_timeout
        self.run_kwargs = dict(run_kwargs)
        self.on_batch = on_batch
        self.late_sink = late_sink
        self.dead_letter = dead_letter
        self._events = bool(pm.hooks.pluggy.hook.stream_event.get_hookimpls())
        self.windows = WindowOperator.for_pipeline(pipeline)
        if self.windows and max_in_flight > 1:
            raise ConfigError(
                f"stream {name!r}: windowed tasks ({', '.join(self.windows.tasks)}) keep state "
                "from batch to batch, so their batches run one at a time: use max_in_flight=1",
                key="max_in_flight",
            )
        wrap = self.windows.wrap if self.windows else None
        self.batch_pipeline, self.output_task, self.fed = derive(pipeline, output_task, wrap)
        if "parallel" not in self.run_kwargs and "executor" not in self.run_kwargs:
            # A chain has nothing to run side by side: skip starting lanes for every batch.
            tasks = self.batch_pipeline.tasks.values()
            succs = collections.Counter(d for t in tasks for d in t.depends_on)
            if all(len(t.depends_on) <= 1 for t in tasks) and max(succs.values()) <= 1:
                self.run_kwargs["parallel"] = False
        self.status = "created"
        self.error: BaseException | None = None
        self.records = 0
        self.batches = 0
        self.outputs = 0
        self.late = 0
        self.dead = 0
        self.lag: int | None = None
        self.checkpoint: Checkpoint | None = None
        self.last_run_id: str | None = None
        self.stream_run_id: str | None = None
        self.started: float | None = None
        self.finished: float | None = None
        self._session_records = 0
        self._session_batches = 0
        self._read_records = 0
        self._read_batches = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ckpt: CheckpointStore | None = None
        self._tenant = self.run_kwargs.get("tenant_id")

    # -- control ----------------------------------------------------------------------------

    def __repr__(self) -> str:
        return (
            f"Stream({self.name!r}, status={self.status!r}, records={self.records}, "
            f"batches={self.batches})"
        )

    @property
    def throughput(self) -> float:
        """Records per second processed by this process since the stream started."""
        if self.started is None:
            return 0.0
        end = self.finished or time.time()
        return self._session_records / max(end - self.started, 1e-9)

    def stop(self) -> None:
        """Stop after the batches in flight are committed (reading stops at once)."""
        self._stop.set()

    def start(self) -> Stream:
        """Run in a background thread; :meth:`stop` and :meth:`wait` control it."""
        self._thread = threading.Thread(target=self.run, name=f"xlib-stream-{self.name}")
        self._thread.start()
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a background stream to end; ``True`` when it has."""
        if self._thread is None:
            return self.status not in ("created", "running")
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> Stream:
        """Process until the source ends, a limit is reached, :meth:`stop` or an error."""
        store = self.pm.store
        if store is None:
            raise ConfigError(
                f"stream {self.name!r} needs a run store for its checkpoints: configure "
                "{'store': {'path': 'runs.sqlite'}} (or store: true for the default file)",
                key="store",
            )
        self._ckpt = CheckpointStore(store.path, synchronous=store._sync)
        self.started = time.time()
        self.status = "running"
        try:
            self._prepare()
            self._loop()
        except KeyboardInterrupt:
            self.status = "stopped"
            self.error = None
            self._finish()
            raise
        except BaseException as exc:
            self.status = "failed"
            self.error = exc
            self._finish()
            if not isinstance(exc, Exception):
                raise
            return self
        self._finish()
        return self

    def _event(self, event: str, info: Mapping[str, Any]) -> None:
        if self._events:
            self.pm.hooks.call("stream_event", stream=self, event=event, info=info)

    def _finish(self) -> None:
        self.finished = time.time()
        err = None if self.error is None else f"{type(self.error).__name__}: {self.error}"
        try:
            if self.status != "created" and self.checkpoint is not None:
                self._event(
                    self.status,
                    {"records": self.records, "batches": self.batches, "error": err},
                )
        except PipelineError as exc:  # a plugin failed to record the end: report it
            if self.error is None:
                self.status, self.error = "failed", exc
                err = f"{type(exc).__name__}: {exc}"
        try:
            if self._ckpt is not None:
                self._ckpt.finish(self.name, self.status, err)
                self._ckpt.close()
        finally:
            try:
                self.source.close()
            finally:
                self.sink.close()
                if self.late_sink is not None:
                    self.late_sink.close()
                if self.dead_letter is not None:
                    self.dead_letter.close()

    def _prepare(self) -> None:
        ckpt = self._ckpt
        assert ckpt is not None
        rec = ckpt.load(self.name)
        if rec is not None and rec.pipeline != self.pipeline.name:
            raise StreamError(
                f"stream {self.name!r} in {str(ckpt.path)!r} belongs to pipeline "
                f"{rec.pipeline!r}, not {self.pipeline.name!r}; choose another name= (CLI: "
                "--name) or start over with from_start=True"
            )
        if rec is None or self.from_start:
            origin_ckpt = None
            if rec is not None:  # start over: back to where the sink stood originally
                origin_ckpt = Checkpoint(seq=0, offset=None, position=rec.origin)
            self.sink.open(origin_ckpt)
            rewind = getattr(self.source, "from_start", None)
            if rec is not None and callable(rewind):  # a broker group goes back to the start
                rewind()
            for side in (self.late_sink, self.dead_letter):
                if side is not None:
                    side.open(None)
            self.stream_run_id = str(uuid.uuid4())
            ckpt.create(
                name=self.name,
                pipeline=self.pipeline.name,
                source=self.source.url,
                sink=self.sink.url,
                origin=self.sink.position(),
                tenant=self._tenant,
                lineage_run=self.stream_run_id,
            )
            rec = ckpt.load(self.name)
            assert rec is not None
        else:
            ckpt.reopen(self.name, source=self.source.url, sink=self.sink.url)
            self.stream_run_id = rec.lineage_run
            newer = self.sink.open(rec.checkpoint)
            for side in (self.late_sink, self.dead_letter):
                if side is not None:
                    side.open(None)
            if newer is not None and newer.seq > rec.seq:
                rec = self._adopt_sink_checkpoint(rec, newer)
        self._restore(rec)
        self.source.seek(self.checkpoint.offset if self.checkpoint else None)
        self._event(
            "started",
            {
                "source": self.source.url,
                "sink": self.sink.url,
                "checkpoint": self.checkpoint.seq if self.checkpoint else 0,
                "offset": brief_offset(self.checkpoint.offset) if self.checkpoint else None,
                "resumed": self.checkpoint is not None and self.checkpoint.seq > 0,
            },
        )

    def _adopt_sink_checkpoint(self, rec: StreamRecord, newer: Checkpoint) -> StreamRecord:
        """The sink committed batches (in its own transaction) the store did not record
        before a crash: record them as one catch-up checkpoint and continue after it."""
        assert self._ckpt is not None
        self._ckpt.commit(
            self.name,
            checkpoint=newer,
            run_id=None,
            start=rec.offset,
            records=0,
            outputs=0,
            output=None,
            window_state=None,
        )
        loaded = self._ckpt.load(self.name)
        assert loaded is not None
        return loaded

    def _restore(self, rec: StreamRecord) -> None:
        self.checkpoint = rec.checkpoint
        self.records = rec.records
        self.batches = rec.seq
        self.outputs = rec.outputs
        self.late = rec.late
        self.dead = rec.dead
        self.lag = rec.lag
        if self.windows:
            self.windows.restore(self._decrypt_state(rec.window_state))

    def _limit_reached(self) -> bool:
        if self.max_batches is not None and self._read_batches >= self.max_batches:
            return True
        return self.max_records is not None and self._read_records >= self.max_records

    def _loop(self) -> None:
        assert self.checkpoint is not None
        seq = self.checkpoint.seq
        pending: collections.deque[tuple[int, SourceBatch, Any]] = collections.deque()
        pool = (
            cf.ThreadPoolExecutor(self.max_in_flight, thread_name_prefix="xlib-stream")
            if self.max_in_flight > 1
            else None
        )
        idle_since = time.monotonic()
        reading = True
        try:
            while reading or pending:
                if reading and (self._stop.is_set() or self._limit_reached()):
                    reading = False
                if reading and len(pending) < self.max_in_flight:
                    want = self.batch_size
                    if self.max_records is not None:
                        want = min(want, self.max_records - self._read_records)
                    batch = self.source.read(want, self.batch_timeout)
                    if batch is None:
                        reading = False
                        if self.windows is not None and self.windows.has_open():
                            # The source ended: one last run closes the open windows.
                            self.windows.final = True
                            end = self.checkpoint.offset if not pending else pending[-1][1].end
                            seq += 1
                            last = SourceBatch(records=[], start=end, end=end)
                            pending.append((seq, last, self._run_batch(seq, last)))
                        continue
                    if not batch.records:
                        if (
                            self.idle_timeout is not None
                            and time.monotonic() - idle_since >= self.idle_timeout
                        ):
                            reading = False
                        elif not pending:
                            continue
                    else:
                        idle_since = time.monotonic()
                        seq += 1
                        self._read_records += len(batch.records)
                        self._read_batches += 1
                        if pool is None:
                            pending.append((seq, batch, self._run_batch(seq, batch)))
                        else:
                            fut = pool.submit(self._run_batch, seq, batch)
                            pending.append((seq, batch, fut))
                        if len(pending) < self.max_in_flight and reading:
                            continue
                if pending:
                    s, b, work = pending.popleft()
                    result = work.result() if isinstance(work, cf.Future) else work
                    self._commit(s, b, result)  # raises on a failed batch: nothing after it
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        if self.status == "running":
            self.status = (
                "stopped" if self._stop.is_set() or self._limit_reached() else "completed"
            )
            if self.idle_timeout is not None and self.status == "completed":
                self.status = "stopped"

    # -- one batch --------------------------------------------------------------------------

    def _params(self, seq: int, batch: SourceBatch) -> dict[str, Any]:
        return {
            "stream": {
                "name": self.name,
                "run": self.stream_run_id,
                "batch": seq,
                "offsets": [brief_offset(batch.start), brief_offset(batch.end)],
                "records": len(batch.records),
            }
        }

    def _run_batch(self, seq: int, batch: SourceBatch) -> BatchOutcome:
        snapshot = self.windows.snapshot() if self.windows else None
        result = self._run_records(seq, batch, batch.records)
        if result.success or self.dead_letter is None or result.status != "failed":
            return BatchOutcome(result=result, outputs=None, dead=[])
        # Quarantine: run the batch's records one by one; those that fail go to the
        # dead-letter sink, the others on as usual (in order).
        if self.windows is not None and snapshot is not None:
            self.windows.rollback(snapshot)
        outputs: list[Any] = []
        dead: list[dict[str, Any]] = []
        last = result
        for i, record in enumerate(batch.records):
            one = self._run_records(seq, batch, [record], index=i)
            if one.success:
                last = one
                task = one.tasks.get(self.output_task)
                outputs.extend(_records_of(task.output if task is not None else None))
            else:
                err = one.error
                dead.append(
                    {
                        "stream": self.name,
                        "batch": seq,
                        "index": i,
                        "run_id": one.run_id,
                        "error": f"{type(err).__name__}: {err}",
                        "record": record,
                    }
                )
        return BatchOutcome(result=last, outputs=outputs, dead=dead)

    def _run_records(
        self, seq: int, batch: SourceBatch, records: list[Any], index: int | None = None
    ) -> PipelineResult:
        params = self._params(seq, batch)
        if index is not None:
            params["stream"]["record"] = index
        result: PipelineResult = self.pm.execute_pipeline(
            self.batch_pipeline,
            inputs={BATCH_TASK: records},
            params=params,
            source=f"stream:{self.name}",
            **self.run_kwargs,
        )
        return result

    def _commit(self, seq: int, batch: SourceBatch, outcome: BatchOutcome) -> None:
        result = outcome.result
        self.last_run_id = result.run_id
        if not result.success and outcome.outputs is None:
            err = result.error
            raise StreamError(
                f"stream {self.name!r}: batch {seq} (offsets {batch.start}..{batch.end}, "
                f"run {result.run_id}) {result.status}: {type(err).__name__}: {err}; "
                f"batches up to {seq - 1} are committed, a restart retries batch {seq}"
            ) from err
        if outcome.outputs is not None:
            out = outcome.outputs
        else:
            task = result.tasks.get(self.output_task)
            out = _records_of(task.output if task is not None else None)
        assert self.checkpoint is not None
        nxt = Checkpoint(seq=seq, offset=batch.end, position=self.checkpoint.position)
        try:
            position = self.sink.write(out, nxt, self.source)
        except PipelineError:
            raise
        except Exception as exc:
            raise StreamError(
                f"stream {self.name!r}: sink {self.sink.url} failed writing batch {seq}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        nxt = Checkpoint(seq=seq, offset=batch.end, position=position)
        late = self.windows.take_late() if self.windows else []
        if late:
            self._side_output(seq, late)
        dead = outcome.dead
        if dead:
            assert self.dead_letter is not None
            self.dead_letter.write(dead, Checkpoint(seq=seq, offset=None, position=None), self.source)
        self.lag = self.source.lag()
        assert self._ckpt is not None
        self._ckpt.commit(
            self.name,
            checkpoint=nxt,
            run_id=result.run_id,
            start=batch.start,
            records=len(batch.records),
            outputs=len(out),
            output=self._protect(out, "stream_output", seq),
            window_state=self._window_blob(seq),
            late=len(late),
            dead=len(dead),
            lag=self.lag,
        )
        self.source.committed(batch.end)
        self.checkpoint = nxt
        self.batches = seq
        self.records += len(batch.records)
        self._session_records += len(batch.records)
        self._session_batches += 1
        self.outputs += len(out)
        self.late += len(late)
        self.dead += len(dead)
        self._event(
            "batch",
            {
                "seq": seq,
                "run_id": result.run_id,
                "offsets": [brief_offset(batch.start), brief_offset(batch.end)],
                "records": len(batch.records),
                "outputs": len(out),
                "late": len(late),
                "dead": len(dead),
                "lag": self.lag,
            },
        )
        if self.on_batch is not None:
            self.on_batch(self)

    def _side_output(self, seq: int, late: list[Any]) -> None:
        """Late records: to the late sink (if any), counted, and logged for the audit."""
        from .._events import get_logger

        get_logger(pipeline=self.pipeline.name, stream=self.name).warning(
            "stream.late_records", batch=seq, count=len(late)
        )
        if self.late_sink is not None:
            assert self.checkpoint is not None
            self.late_sink.write(
                late, Checkpoint(seq=seq, offset=None, position=None), self.source
            )

    # -- payloads at rest -------------------------------------------------------------------

    def _ref(self, kind: str) -> PayloadRef:
        return PayloadRef(
            run_id=self.stream_run_id or self.name,
            pipeline=self.pipeline.name,
            task=f"stream:{self.name}",
            tenant=self._tenant,
            kind=kind,
        )

    def _protect(self, value: Any, kind: str, seq: int) -> bytes | None:
        if not self.pm._record_outputs():
            return None
        raw = dump_output(value)
        if raw is None:
            return None
        blob: bytes = self.pm.hooks.call("encrypt", data=raw, ref=self._ref(kind))
        return blob

    def _window_blob(self, seq: int) -> bytes | None:
        if not self.windows:
            return None
        raw = dump_output(self.windows.state())
        if raw is None:  # pragma: no cover - window state is plain data
            raise StreamError(f"stream {self.name!r}: window state cannot be serialized")
        blob: bytes = self.pm.hooks.call("encrypt", data=raw, ref=self._ref("window_state"))
        return blob

    def _decrypt_state(self, blob: bytes | None) -> Any:
        if blob is None:
            return None
        from .._store import load_output

        data = self.pm.hooks.call("decrypt", data=blob, ref=self._ref("window_state"))
        return load_output(data)


def run_stream(
    pm: PipelineManager,
    pipeline: Pipeline,
    *,
    source: Any,
    sink: Any = None,
    name: str | None = None,
    batch_size: int = 1000,
    batch_timeout: float = 0.5,
    max_in_flight: int = 1,
    from_start: bool = False,
    output_task: str | None = None,
    max_batches: int | None = None,
    max_records: int | None = None,
    idle_timeout: float | None = None,
    source_options: Mapping[str, Any] | None = None,
    sink_options: Mapping[str, Any] | None = None,
    wait: bool = True,
    on_batch: Callable[[Stream], None] | None = None,
    late_sink: Any = None,
    dead_letter: Any = None,
    **run_kwargs: Any,
) -> Stream:
    """Run ``pipeline`` over ``source`` in micro-batches into ``sink``; see docs/streams.md.

    Each batch (``batch_size`` records, or what arrived within ``batch_timeout`` seconds)
    is one run of the pipeline: root tasks with one parameter receive the batch, the
    output of the final task (or ``output_task``) goes to the sink, then the source
    offsets, the output and the sink position are committed to the run store in one
    transaction. Up to ``max_in_flight`` batches run at once; they commit in order.
    The same ``name`` (default: the pipeline's) on the same store continues after the
    last checkpoint; ``from_start=True`` starts over. ``max_batches``, ``max_records``
    and ``idle_timeout`` (seconds without a record) stop an endless stream;
    ``wait=False`` returns the started :class:`Stream` at once. With ``dead_letter`` (a
    sink), a failed batch is run again record by record and the records that fail (PII
    refused by classification, say) go there with their error, counted and audited;
    without it a failed batch stops the stream. ``late_sink`` receives late records of
    windowed tasks. Other keyword arguments
    (``tenant_id``, ``principal``, ``executor``, plugin run options ...) apply to each
    batch's run as in ``execute_pipeline``.
    """
    for key, value, low in (
        ("batch_size", batch_size, 1),
        ("max_in_flight", max_in_flight, 1),
        ("max_batches", max_batches, 1),
        ("max_records", max_records, 1),
    ):
        if value is None and key in ("max_batches", "max_records"):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"stream: {key} must be an int >= {low}, got {value!r}", key=key)
    for key, num in (("batch_timeout", batch_timeout), ("idle_timeout", idle_timeout)):
        if num is None and key == "idle_timeout":
            continue
        if isinstance(num, bool) or not isinstance(num, int | float) or num < 0:
            raise ConfigError(f"stream: {key} must be seconds >= 0, got {num!r}", key=key)
    for banned in ("inputs", "resume", "run_id", "params", "monitor"):
        if banned in run_kwargs:
            raise TypeError(f"pm.stream() does not take {banned}=: each batch is its own run")
    src = resolve_source(pm, source, source_options or {})
    snk = resolve_sink(pm, sink, sink_options or {})
    stream = Stream(
        pm,
        pipeline,
        source=src,
        sink=snk,
        name=name or pipeline.name,
        batch_size=batch_size,
        batch_timeout=float(batch_timeout),
        max_in_flight=max_in_flight,
        from_start=from_start,
        output_task=output_task,
        max_batches=max_batches,
        max_records=max_records,
        idle_timeout=idle_timeout,
        run_kwargs=run_kwargs,
        on_batch=on_batch,
        late_sink=None if late_sink is None else resolve_sink(pm, late_sink, {}),
        dead_letter=None if dead_letter is None else resolve_sink(pm, dead_letter, {}),
    )
    # Refuse a bad pipeline or option before anything is read or written.
    pm.validate_pipeline(stream.batch_pipeline)
    if not wait:
        return stream.start()
    stream.run()
    return stream


def print_progress(stream: Stream) -> None:
    """A one-line monitor on stderr: records, batches, throughput, lag, checkpoint."""
    lag = "?" if stream.lag is None else str(stream.lag)
    sys.stderr.write(
        f"\rstream {stream.name}: {stream.records} records, {stream.batches} batches, "
        f"{stream.throughput:,.0f} rec/s, lag {lag}, checkpoint {stream.checkpoint.offset if stream.checkpoint else None}   "
    )
    sys.stderr.flush()
