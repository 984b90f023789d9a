"""Stream metrics, from the ``stream_event`` hook (registered only when ``metrics`` is set).

One series set per stream name (labels ``pipeline`` and ``stream``), never per batch or run:
counters of what committed batches read and wrote, the source's lag at the last committed
batch, the stream's state and when its last batch was committed. Counters count what this
process committed (they start at 0 with the process, as Prometheus counters do); the
stream's own totals, which include earlier runs, are in ``runs show STREAM``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from typing import Any

#: The states of the ``xlib_pipeline_stream_state`` gauge (one series each, 1 for the
#: stream's state, 0 for the others).
STATES = ("running", "completed", "stopped", "failed")

#: info key of the ``batch`` event -> (family, help).
COUNTERS = {
    "records": ("xlib_pipeline_stream_records", "Records read by committed stream batches."),
    "outputs": ("xlib_pipeline_stream_outputs", "Records committed batches wrote to the sink."),
    "late": ("xlib_pipeline_stream_late_records", "Late records of windowed tasks (late sink)."),
    "dead": (
        "xlib_pipeline_stream_dead_letters",
        "Records of failed batches sent to the dead-letter sink.",
    ),
}


class StreamStats:
    """What the metrics plugin knows of one stream (guarded by the plugin's lock)."""

    __slots__ = ("batches", "counts", "lag", "last_batch", "pipeline", "state")

    def __init__(self, pipeline: str) -> None:
        self.pipeline = pipeline
        self.state = "running"
        self.batches = 0
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.lag: float | None = None
        self.last_batch: float | None = None


def _count(info: Mapping[str, Any], key: str) -> int:
    n = info.get(key)
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 0


def record(
    streams: dict[str, StreamStats], stream: Any, event: str, info: Mapping[str, Any]
) -> None:
    """Fold one stream event into ``streams`` (the caller holds the plugin's lock)."""
    name = str(stream.name)
    st = streams.get(name)
    pipeline = str(stream.pipeline.name)
    if st is None or st.pipeline != pipeline:  # the same name on another pipeline: anew
        st = streams[name] = StreamStats(pipeline)
    if event == "started":
        st.state = "running"
        st.lag = None
    elif event == "batch":
        st.batches += 1
        counts = st.counts
        for key in counts:
            counts[key] += _count(info, key)
        lag = info.get("lag")
        st.lag = float(lag) if isinstance(lag, int | float) and not isinstance(lag, bool) else None
        st.last_batch = time.time()
    elif event in STATES:
        st.state = event


def families(core: Any, streams: Mapping[str, StreamStats]) -> Iterator[Any]:
    """The stream families, from ``streams`` (the caller holds the plugin's lock); none
    before a stream was seen."""
    if not streams:
        return
    labels = ["pipeline", "stream"]
    counters = {
        key: core.CounterMetricFamily(name, doc, labels=labels)
        for key, (name, doc) in COUNTERS.items()
    }
    batches = core.CounterMetricFamily(
        "xlib_pipeline_stream_batches", "Stream batches committed.", labels=labels
    )
    lag = core.GaugeMetricFamily(
        "xlib_pipeline_stream_lag",
        "How far behind its source's end the stream was at its last committed batch, in the "
        "source's unit (bytes for a JSON-lines file); NaN when the source reports none.",
        labels=labels,
    )
    state = core.GaugeMetricFamily(
        "xlib_pipeline_stream_state",
        "The stream's state: 1 for the current one (running, completed, stopped, failed).",
        labels=[*labels, "state"],
    )
    last = core.GaugeMetricFamily(
        "xlib_pipeline_stream_last_batch_timestamp_seconds",
        "When the stream last committed a batch (Unix time); alert on its age.",
        labels=labels,
    )
    for name in sorted(streams):
        st = streams[name]
        key = [st.pipeline, name]
        for k, fam in counters.items():
            fam.add_metric(key, st.counts[k])
        batches.add_metric(key, st.batches)
        lag.add_metric(key, math.nan if st.lag is None else st.lag)
        for s in STATES:
            state.add_metric([*key, s], 1.0 if st.state == s else 0.0)
        if st.last_batch is not None:
            last.add_metric(key, st.last_batch)
    yield batches
    yield from counters.values()
    yield lag
    yield state
    yield last
