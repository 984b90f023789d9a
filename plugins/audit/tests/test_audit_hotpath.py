"""The stream batch's audit path, made cheaper (session 12): each faster path gives the
bytes of the one it replaced (the general encoder's, ``datetime``'s), whatever was cached
before it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from xlib_pipeline_audit import AuditPlugin, _general, _settings, verify
from xlib_pipeline_audit._canonical import CHAIN_VERSION, canonical
from xlib_pipeline_audit._recorder import Recorder
from xlib_pipeline_audit._render import NotFast

from xlib_pipeline import Pipeline, PipelineManager, Status

_keys = st.sampled_from(["a", "b", "offsets", "name", "run", "é", "", "Z", "a b"])
_leaves = st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.text(max_size=4)
_objects = st.recursive(
    st.dictionaries(_keys, _leaves, max_size=4),
    lambda inner: st.dictionaries(_keys, inner | st.lists(inner | _leaves, max_size=3), max_size=4),
    max_leaves=8,
)


def _canonical_value(value: Any) -> str | None:
    """``value``'s text in a v2 record, as the general encoder writes it."""
    try:
        body = canonical({"k": value, "v": CHAIN_VERSION})
    except (TypeError, ValueError):
        return None
    return body[len('{"k":') : -len(',"v":2}')]


@settings(max_examples=300, deadline=None)
@given(first=_objects, second=_objects)
@example(first={"b": 1, "a": 2}, second={"a": 2, "b": 1})
@example(first={"é": 1}, second={"é": 1})
def test_an_objects_text_through_the_layout_cache_is_the_canonical_encoders(
    first: dict[str, Any], second: dict[str, Any]
) -> None:
    """Objects with the same keys (in any order) share a cached layout: the text is still
    the general encoder's (or None: the general encoder decides), and an object with a
    key the fast text cannot hold is refused every time."""
    for value in (first, second, first, dict(reversed(list(first.items())))):
        try:
            got: str | None = _general.deep_text(value)
        except NotFast:
            got = None
        except ValueError:  # NaN and the like: the general encoder refuses them too
            got = None
        want = _canonical_value(value)
        if got is not None:
            assert got == want, value
        if not all(k.isascii() for k in _all_keys(value)):
            assert got is None, value


def _all_keys(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [*value, *(k for v in value.values() for k in _all_keys(v))]
    if isinstance(value, list):
        return [k for v in value for k in _all_keys(v)]
    return []


def test_a_str_subclass_key_renders_as_its_string() -> None:
    class Key(str):
        pass

    plain = _general.deep_text({"name": 1, "batch": 2})
    assert _general.deep_text({Key("name"): 1, Key("batch"): 2}) == plain
    assert plain == '{"batch":2,"name":1}'


@pytest.mark.parametrize(
    "ns",
    [
        0,
        999,
        1_000_000_000 - 1,
        1_000_000_000,
        1_796_000_000_123_456_789,
        1_796_000_000_999_999_999,
        1_796_000_001_000_000_000,
        1_795_999_999_000_000_001,
    ],
)
def test_now_iso_is_the_isoformat_of_the_time_in_microseconds(
    monkeypatch: pytest.MonkeyPatch, ns: int
) -> None:
    """The per-second format cache gives datetime's text, going forward or back in time."""
    for step in (ns, ns - 1_000_000_000, ns, ns + 1_500_000_000, ns):
        if step < 0:
            continue
        monkeypatch.setattr(_settings, "_time_ns", lambda step=step: step)
        sec, us = divmod(step // 1000, 1_000_000)
        when = datetime.fromtimestamp(sec, UTC).replace(microsecond=us)
        want = when.isoformat(timespec="microseconds")
        assert _settings.now_iso() == want


def test_a_runs_counts_text_is_kept_by_its_counts() -> None:
    """Equal task counts give the same counts and text; different counts their own."""
    rec = Recorder(AuditPlugin())
    one = rec._counts_of({Status.SUCCEEDED: 4})
    assert one == ({"succeeded": 4}, '{"succeeded":4}')
    assert rec._counts_of({Status.SUCCEEDED: 4}) is one
    mixed = rec._counts_of({Status.FAILED: 1, Status.RUNNING: 1, Status.SUCCEEDED: 2})
    assert mixed == ({"succeeded": 2, "failed": 1}, '{"failed":1,"succeeded":2}')
    assert rec._counts_of({}) == ({}, "{}")
    # Counts that are not hashable (not the core's): rendered, not kept.
    odd = rec._counts_of({Status.SUCCEEDED: [1]})  # type: ignore[dict-item]
    assert odd == ({"succeeded": [1]}, '{"succeeded":[1]}')
    assert rec._counts_of({Status.SUCCEEDED: [1]}) is not odd  # type: ignore[dict-item]


def test_runs_of_one_plan_record_each_outputs_own_level(tmp_path: Path) -> None:
    """The classified ``task.finished`` texts are shared by the runs of a plan: each run
    still records the level of its own outputs, in the general encoder's bytes."""
    pytest.importorskip("xlib_pipeline_classification")
    path = tmp_path / "t.jsonl"
    p = Pipeline("p")
    p.add_task("a", lambda: {"rows": 1}, classification="public")
    p.add_task("b", lambda a: {"rows": 2}, depends_on=["a"], classification="internal")
    pm = PipelineManager({"audit": {"path": str(path)}, "classification": {"detect_pii": True}})
    for _ in range(3):
        assert pm.execute_pipeline(p).success
    pm.close()
    assert verify(path).ok
    finished = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        body = canonical({k: v for k, v in rec.items() if k != "hash"})
        assert line == body[:-1] + ',"hash":"' + rec["hash"] + '"}'
        if rec["action"] == "task.finished":
            finished.append((rec["task"], rec["classification"]))
    assert finished == [("a", "public"), ("b", "internal")] * 3
