"""Event texts lineage assembles without the JSON encoder must be the text ``json.dumps``
writes: a classified output's ``outputs`` (facets rendered once per distinct classification
of the run), whatever the names, levels, declared levels and detectors; and quoted names."""

from __future__ import annotations

import json
import uuid
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from xlib_pipeline_lineage._events import fast_uuid5, quote
from xlib_pipeline_lineage._layout import Layout
from xlib_pipeline_lineage._run_state import RunState

from xlib_pipeline import CLASSIFICATION
from xlib_pipeline._records import Classification, OutputLevel

_levels = st.sampled_from(["public", "internal", "confidential", "restricted"])
_entry = st.builds(
    OutputLevel,
    level=_levels,
    declared=st.none() | _levels,
    inherited_from=st.none() | st.text(max_size=5),
    detected=st.lists(st.sampled_from(["email", "ssn", "iban", "phone"]), unique=True).map(tuple),
)


class _Task:
    """A task as the layout reads it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.depends_on: tuple[str, ...] = ()
        self.merge_strategy = None


def _state(
    namespace: str, pipeline: str, datasets: dict[str, Any], stash: Any, names: Any = ()
) -> RunState:
    """The parts of a RunState that render outputs (no emitter thread, no plugin); tasks
    not in ``names`` take the path of a task the run does not hold."""
    state = object.__new__(RunState)
    state.namespace = namespace
    state.pipeline = pipeline
    state.producer = "https://example.invalid/producer"
    state.datasets = datasets
    state.stash = stash
    state._ns = json.dumps(namespace)
    state._cls_facets = {}
    state._cls_seen = {}
    state._unknown = {}
    state._engine = "{}"
    state._ns_bytes = uuid.uuid4().bytes
    layout = Layout(
        (),
        tasks=[_Task(n) for n in names],
        pipeline=pipeline,
        namespace=namespace,
        producer=state.producer,
        engine="{}",
        datasets=datasets,
    )
    state._layout = layout
    state._rids = [fast_uuid5(state._ns_bytes, n) for n in layout.names]
    state._deps = []
    return state


@settings(max_examples=150, deadline=None)
@given(
    namespace=st.text(max_size=8),
    pipeline=st.text(max_size=8),
    tasks=st.dictionaries(st.text(max_size=8), st.none() | _entry, max_size=8),
    declared=st.sets(st.text(max_size=8), max_size=3),
)
def test_classified_outputs_text_is_json_dumps(
    namespace: str,
    pipeline: str,
    tasks: dict[str, OutputLevel | None],
    declared: set[str],
) -> None:
    outputs = {k: v for k, v in tasks.items() if v is not None}
    stash = {CLASSIFICATION: Classification(levels=(), outputs=outputs)}
    datasets = {
        name: ((), ({"namespace": "warehouse", "name": f"t.{name}", "facets": {"x": 1}},))
        for name in declared
    }
    state = _state(namespace, pipeline, datasets, stash, names=list(tasks)[::2])
    for _ in range(2):  # the second round reads the facets rendered in the first
        for name in tasks:
            got = state._classified_json(name)
            expected = state._classified_outputs(name)
            assert got == ("" if expected is None else json.dumps(expected))
            if got:
                json.loads(got)


def test_no_classification_published_means_no_outputs_text() -> None:
    state = _state("ns", "p", {}, {})
    assert state._classified_json("a") == ""


@settings(max_examples=400, deadline=None)
@given(st.text() | st.text(alphabet=st.characters(max_codepoint=0x80)))
def test_quote_is_json_dumps(text: str) -> None:
    assert quote(text) == json.dumps(text)
    assert quote(f"p.{text}.result") == json.dumps(f"p.{text}.result")
