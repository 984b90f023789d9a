"""A stream's RUNNING event, rendered from its cached parts, is the text json.dumps gives
for the whole event (what it was built as before)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xlib_pipeline_lineage import _events as ev
from xlib_pipeline_lineage import _streams


class _Pipeline:
    def __init__(self, name: str) -> None:
        self.name = name


class _Stream:
    def __init__(self, name: str, run_id: str, job: str) -> None:
        self.name = name
        self.stream_run_id = run_id
        self.pipeline = _Pipeline(job)
        self.error = None


def _whole(stream: Any, info: dict[str, Any], ts: float, namespace: str, producer: str) -> str:
    """The event built as a dict and dumped whole (the model)."""
    facet = {
        "_producer": producer,
        "_schemaURL": _streams.STREAM_FACET_SCHEMA,
        "stream": stream.name,
        "status": "batch",
        "batch": int(info["seq"]),
        "batchRunId": str(info["run_id"]),
        "offsets": list(info["offsets"]),
        "records": int(info["records"]),
        "outputs": int(info["outputs"]),
        "late": int(info["late"]),
        "dead": int(info["dead"]),
        "lag": info.get("lag"),
    }
    out = ev.run_event(
        "RUNNING",
        ts,
        run_id=stream.stream_run_id,
        namespace=namespace,
        job=stream.pipeline.name,
        producer=producer,
        run_facets={_streams.STREAM_FACET: facet},
        job_facets={"jobType": _streams.job_type_facet(producer)},
    )
    return json.dumps(out, default=str)


_names = st.text(max_size=8) | st.sampled_from(["\x00time", "\x00facet", 'a"b', "é😀", ""])
_scalars = st.one_of(
    st.none(), st.integers(), st.text(max_size=6), st.booleans(), st.floats(), st.just(2**70)
)
# a broker batch's brief offset is a dict; anything else json.dumps renders with str()
_offsets = st.one_of(
    _scalars,
    st.lists(_scalars, max_size=4),
    st.dictionaries(st.text(max_size=4), _scalars, max_size=3),
    st.builds(object),
)


@settings(max_examples=300, deadline=None)
@given(
    name=_names,
    job=_names,
    run_id=_names.filter(bool),
    namespace=_names,
    producer=_names,
    seq=st.integers(1, 2**40),
    offsets=st.tuples(_offsets, _offsets),
    counts=st.tuples(*[st.integers(0, 10**6)] * 4),
    lag=_scalars,
    ts=st.floats(0, 4e9),
)
def test_a_running_event_is_the_whole_events_text(
    name: str,
    job: str,
    run_id: str,
    namespace: str,
    producer: str,
    seq: int,
    offsets: tuple[Any, Any],
    counts: tuple[int, int, int, int],
    lag: Any,
    ts: float,
) -> None:
    stream = _Stream(name, run_id, job)
    info = {
        "seq": seq,
        "run_id": f"r{seq}",
        "offsets": list(offsets),
        "records": counts[0],
        "outputs": counts[1],
        "late": counts[2],
        "dead": counts[3],
        "lag": lag,
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_streams, "time", SimpleNamespace(time=lambda: ts))
        for _ in range(2):  # built, then from the cached parts
            got = _streams.stream_event(
                stream, "batch", info, namespace=namespace, producer=producer
            )
            assert got == _whole(stream, info, ts, namespace, producer)
    if not any("\x00" in x for x in (job, run_id, namespace, producer)):
        assert (run_id, job, namespace, producer) in _streams._RUNNING  # the fast path ran


@pytest.mark.parametrize(
    "offsets",
    [[0, 10], [-5, 2**70], [True, 1], [1, 2.5], [3], [1, 2, 3], (4, 5), [1, "x"], [None, 7]],
)
def test_a_running_events_offsets_are_json_dumps_text(offsets: Any) -> None:
    """Two int positions (a file or list source's batch) are rendered without the general
    encoder, as json.dumps renders them; anything else takes the general path."""
    stream = _Stream("s", "run-1", "job")
    info = {
        "seq": 3,
        "run_id": "r3",
        "offsets": offsets,
        "records": 10,
        "outputs": 10,
        "late": 0,
        "dead": 0,
        "lag": None,
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_streams, "time", SimpleNamespace(time=lambda: 1234.5))
        got = _streams.stream_event(stream, "batch", info, namespace="ns", producer="p")
        assert got == _whole(stream, {**info, "offsets": list(offsets)}, 1234.5, "ns", "p")
