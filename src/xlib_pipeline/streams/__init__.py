"""Stream processing: the same pipelines over unbounded sources, in micro-batches.

>>> from xlib_pipeline.streams import JsonLinesSource, JsonLinesSink  # doctest: +SKIP
>>> pm.stream(pipeline, source=JsonLinesSource("in.jsonl"), sink=JsonLinesSink("out.jsonl"))

Each micro-batch is one run of the pipeline; after it, the source offsets, the batch's
output and the sink position are committed to the run store in one transaction, so a
restarted stream continues after its last checkpoint and a file sink holds every result
exactly once, in order. See docs/streams.md.
"""

from __future__ import annotations

from ..exceptions import StreamError
from ._checkpoint import BatchRecord, CheckpointStore, StreamRecord
from ._connectors import CallbackSink, IterableSource, JsonLinesSink, JsonLinesSource
from ._engine import Stream
from ._pipeline import BATCH_TASK
from ._protocol import BaseSink, BaseSource, Checkpoint, Sink, Source, SourceBatch
from ._run import NullSink, print_progress, resolve_sink, resolve_source, run_stream
from ._windows import Window, WindowSpec

__all__ = [
    "BATCH_TASK",
    "BaseSink",
    "BaseSource",
    "BatchRecord",
    "CallbackSink",
    "Checkpoint",
    "CheckpointStore",
    "IterableSource",
    "JsonLinesSink",
    "JsonLinesSource",
    "NullSink",
    "Sink",
    "Source",
    "SourceBatch",
    "Stream",
    "StreamError",
    "StreamRecord",
    "Window",
    "WindowSpec",
    "print_progress",
    "resolve_sink",
    "resolve_source",
    "run_stream",
]
