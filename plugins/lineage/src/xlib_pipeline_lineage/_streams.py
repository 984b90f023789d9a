"""Streams in OpenLineage: one run per stream, ``RUNNING`` per committed micro-batch.

A stream's run id is kept with its checkpoint, so a restarted stream continues the same
OpenLineage run. Its job carries the standard ``jobType`` facet with
``processingType: STREAMING``; each event carries the ``xlibPipeline_stream`` run facet
(the batch, its offsets and counts). The micro-batches' own runs emit no events of their
own: the stream's run stands for them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from json.encoder import encode_basestring_ascii
from typing import Any

from . import _events as ev

STREAM_FACET = "xlibPipeline_stream"
STREAM_FACET_SCHEMA = RUN_SCHEMA = (
    "https://xlib-pipeline.dev/spec/facets/1-0-0/XlibPipelineStreamRunFacet.json"
    "#/$defs/XlibPipelineStreamRunFacet"
)
_TYPES = {
    "started": "START",
    "batch": "RUNNING",
    "completed": "COMPLETE",
    "stopped": "COMPLETE",
    "failed": "FAIL",
}


def job_type_facet(producer: str) -> dict[str, Any]:
    """The standard ``jobType`` job facet of a stream."""
    return ev.job_type_facet(producer, "STREAM", "STREAMING")


#: A stream's ``RUNNING`` event text around its two varying parts (eventTime, the stream
#: facet), by everything else it holds: (run id, job, namespace, producer) -> (pre, mid,
#: post). One entry per running stream (bounded).
_RUNNING: dict[tuple[str, str, str, str], tuple[str, str, str]] = {}
_TIME, _FACET = "\x00time", "\x00facet"  # never in a JSON text: escaped by json.dumps


def stream_event(
    stream: Any,
    event: str,
    info: Mapping[str, Any],
    *,
    namespace: str,
    producer: str,
    now: float | None = None,
) -> str | None:
    """The OpenLineage event (JSON) for a stream event, or ``None`` for unknown ones;
    ``now``: when it happened (``time.time()``; default: now)."""
    etype = _TYPES.get(event)
    if etype is None or not stream.stream_run_id:
        return None
    if now is None:
        now = time.time()
    if event == "batch":
        # One per committed micro-batch: the rest of the event is the same for every
        # batch of the stream, rendered once, and so is the stream facet's text up to its
        # batch number (the same text json.dumps gives: a nested value's text does not
        # depend on what is around it).
        key = (str(stream.stream_run_id), str(stream.pipeline.name), namespace, producer)
        parts = _RUNNING.get(key) or _running_parts(key)
        if parts is not None:
            head = _HEADS.get((producer, stream.name)) or _facet_head(producer, stream.name)
            offsets = info["offsets"]
            if (
                type(offsets) is list
                and len(offsets) == 2
                and type(offsets[0]) is int
                and type(offsets[1]) is int
            ):  # a batch of a file or list source: two positions (json.dumps's text)
                off = f"[{offsets[0]!r}, {offsets[1]!r}]"
            else:
                off = _json(list(offsets))
            lag = info.get("lag")
            return (
                f'{parts[0]}"{ev.iso(now)}"{parts[1]}{head}{int(info["seq"])}'
                f', "batchRunId": {_str(str(info["run_id"]))}'
                f', "offsets": {off}'
                f', "records": {int(info["records"])}, "outputs": {int(info["outputs"])}'
                f', "late": {int(info["late"])}, "dead": {int(info["dead"])}'
                f', "lag": {"null" if lag is None else _json(lag)}}}{parts[2]}'
            )
    facet = _facet(producer, stream.name, event)
    if event == "batch":
        facet.update(
            batch=int(info["seq"]),
            batchRunId=str(info["run_id"]),
            offsets=list(info["offsets"]),
            records=int(info["records"]),
            outputs=int(info["outputs"]),
            late=int(info["late"]),
            dead=int(info["dead"]),
            lag=info.get("lag"),
        )
    elif event == "started":
        facet.update(source=str(info["source"]), sink=str(info["sink"]))
    else:
        facet.update(records=int(info.get("records") or 0), batch=int(info.get("batches") or 0))
    facets: dict[str, Any] = {STREAM_FACET: facet}
    if etype == "FAIL":
        facets["errorMessage"] = ev.error_facet(producer, stream.error, None)
    out = ev.run_event(
        etype,
        now,
        run_id=stream.stream_run_id,
        namespace=namespace,
        job=stream.pipeline.name,
        producer=producer,
        run_facets=facets,
        job_facets={"jobType": job_type_facet(producer)},
    )
    return json.dumps(out, default=str)


#: ``json.dumps(value, default=str)`` without building an encoder per call (what
#: ``json.dumps`` does when given ``default``), and the encoding of a str it applies.
_dumps = json.JSONEncoder(default=str).encode
_str = encode_basestring_ascii
#: How json.dumps renders a value of each of these exact types (offsets and lag are these).
_SCALARS: dict[type, Callable[[Any], str]] = {
    type(None): lambda _: "null",
    int: int.__repr__,
    str: encode_basestring_ascii,
}


def _json(value: Any) -> str:
    """``json.dumps(value, default=str)``; a None, int or str, or a list of them (a
    batch's offsets), without the encoder (building one costs more than the text)."""
    scalar = _SCALARS.get(type(value))
    if scalar is not None:
        return scalar(value)
    if type(value) is list:
        texts = []
        for x in value:
            scalar = _SCALARS.get(type(x))
            if scalar is None:
                return _dumps(value)
            texts.append(scalar(x))
        return f"[{', '.join(texts)}]"
    return _dumps(value)


#: The stream facet's text up to its batch number, by (producer, stream name). Bounded.
_HEADS: dict[tuple[Any, Any], str] = {}


def _facet(producer: str, name: Any, event: str) -> dict[str, Any]:
    """The stream facet's first entries (the rest depends on the event)."""
    return {
        "_producer": producer,
        "_schemaURL": STREAM_FACET_SCHEMA,
        "stream": name,
        "status": event,
    }


def _facet_head(producer: str, name: Any) -> str:
    """The text of a batch's stream facet up to its batch number: ``json.dumps`` of
    :func:`_facet` less its closing brace, then ``, "batch": ``."""
    head = json.dumps(_facet(producer, name, "batch"), default=str)[:-1] + ', "batch": '
    if len(_HEADS) >= 64:
        _HEADS.clear()
    _HEADS[(producer, name)] = head
    return head


def _running_parts(key: tuple[str, str, str, str]) -> tuple[str, str, str] | None:
    """The text of a stream's ``RUNNING`` event around its eventTime and stream facet
    (None when a name holds a marker's text: the event is then built whole)."""
    run_id, job, namespace, producer = key
    out = ev.run_event(
        "RUNNING",
        0.0,
        run_id=run_id,
        namespace=namespace,
        job=job,
        producer=producer,
        run_facets={STREAM_FACET: _FACET},
        job_facets={"jobType": job_type_facet(producer)},
    )
    out["eventTime"] = _TIME
    text = json.dumps(out, default=str)
    marks = json.dumps(_TIME), json.dumps(_FACET)
    if text.count(marks[0]) != 1 or text.count(marks[1]) != 1:
        return None
    pre, rest = text.split(marks[0])
    mid, post = rest.split(marks[1])
    if len(_RUNNING) >= 64:
        _RUNNING.clear()
    parts = _RUNNING[key] = (pre, mid, post)
    return parts
