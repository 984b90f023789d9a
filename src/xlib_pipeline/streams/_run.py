"""``pm.stream(...)``: resolve the source and sink, build the :class:`Stream`, run it."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..exceptions import ConfigError
from ._batch import brief_offset
from ._connectors import CallbackSink, IterableSource
from ._engine import Stream
from ._pipelined import DISPLAY_ONLY
from ._protocol import BaseSink, Checkpoint, Sink, Source
from ._windows import windowed_tasks

if TYPE_CHECKING:  # pragma: no cover
    from .._manager import PipelineManager
    from .._task import Pipeline


class NullSink(BaseSink):
    """Keeps no copy: outputs are only checkpointed in the run store."""

    url = "none"
    rewinds = True  # nothing to take back

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
    if not scheme and url:  # a bare path
        hint = f" (a URL names its scheme: jsonl:{url} for a JSON-lines file)"
    return (
        f"{role} {url!r}: no connector for scheme {scheme!r}{hint}; "
        f"known {role} schemes: {', '.join(have)}"
    )


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
    ``wait=False`` returns the started :class:`Stream` at once; ``monitor=True`` keeps a
    progress line on stderr (records, batches, records/s, lag, checkpoint). With ``dead_letter`` (a
    sink), a failed batch is run again record by record and the records that fail (PII
    refused by classification, say) go there with their error, counted and audited;
    without it a failed batch stops the stream. ``late_sink`` receives late records of
    windowed tasks (a ``ConfigError`` when no task is windowed). Other keyword arguments
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
    if run_kwargs.pop("monitor", False):  # a live line: records, batches, rate, lag
        user = on_batch

        def on_batch(stream: Stream) -> None:
            print_progress(stream)
            if user is not None:
                user(stream)

    for banned in ("inputs", "resume", "run_id", "params"):
        if banned in run_kwargs:
            raise TypeError(f"pm.stream() does not take {banned}=: each batch is its own run")
    if late_sink is not None and not windowed_tasks(pipeline):
        raise ConfigError(
            f"stream {name or pipeline.name!r}: late_sink= (CLI: --late-sink) is set, but no "
            f"task of pipeline {pipeline.name!r} is windowed, and late records exist only for "
            "windowed tasks (a task with window={'size': ..., 'field': ...}, see docs/streams.md"
            "#event-time-windows): remove late_sink, or window a task",
            key="late_sink",
        )
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
    # Refuse a bad pipeline, option or a missing store before anything is read or written.
    pm.validate_pipeline(stream.batch_pipeline)
    if isinstance(run_kwargs.get("executor"), str):  # built (kept warm) for the batches
        pm.executor(run_kwargs["executor"])
    if pm.store is None:
        raise ConfigError(
            f"stream {stream.name!r} needs a run store for its checkpoints: configure "
            "{'store': {'path': 'runs.sqlite'}} (or store: true for the default file)",
            key="store",
        )
    if not wait:
        return stream.start()
    stream.run()
    return stream


def print_progress(stream: Stream) -> None:
    """A one-line monitor on stderr: records, batches, throughput, lag, checkpoint."""
    lag = "?" if stream.lag is None else str(stream.lag)
    sys.stderr.write(
        f"\rstream {stream.name}: {stream.records} records, {stream.batches} batches, "
        f"{stream.throughput:,.0f} rec/s, lag {lag}, "
        f"checkpoint {brief_offset(stream.checkpoint.offset) if stream.checkpoint else None}   "
    )
    sys.stderr.flush()


DISPLAY_ONLY.add(print_progress)
