"""Pre-rendered records (fixed shapes) give the very bytes of the general canonical encoder.

The general encoder (``_canonical.canonical``, which ``audit verify`` uses) is the reference:
for arbitrary values, a shape's body is byte-identical to it, or the value is one the fast
path hands back to the general encoder (``NotFast``), or both refuse the record.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from hypothesis import example, given, settings
from hypothesis import strategies as st
from xlib_pipeline_audit import verify
from xlib_pipeline_audit._canonical import CHAIN_VERSION, GENESIS, canonical
from xlib_pipeline_audit._render import NotFast, Shape, body_of, fields_of, text
from xlib_pipeline_audit._task_records import FINISHED_OPTIONAL, TaskRecords
from xlib_pipeline_audit._trail import AuditTrail, AuditTrailError

# Strings with escapes, control characters, non-ASCII, astral characters and (sometimes)
# a lone surrogate, which is no Unicode text: both encoders must refuse it.
_strings = st.text(st.characters(codec=None, exclude_categories=()), max_size=12) | st.sampled_from(
    ["", '"', "\\", "\x00\x1f\x7f", "\u2028\u2029", "é€😀", "%s%%", "\ud800"]
)
_ints = st.integers(-(2**60), 2**60) | st.sampled_from([2**53, -(2**53), 2**53 - 1, 1 - 2**53])
_scalars = st.none() | st.booleans() | _ints | st.floats() | _strings
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_strings, inner, max_size=3),
    max_leaves=8,
)
# Keys that sort before, between and after the chain's own (prev, seq, v).
_keys = st.sampled_from(
    ["action", "actor", "attempt", "error_class", "outcome", "pipeline", "pre", "prevx",
     "retrying", "run_id", "sep", "seqq", "task", "tenant", "ts", "u", "w", "zz", "A", "_"]
)  # fmt: skip
_hashes = st.text("0123456789abcdef", min_size=64, max_size=64)


def _reference(record: dict[str, Any], seq: int, prev: str) -> bytes | None:
    """The general encoder's body bytes, or None when it refuses the record."""
    try:
        return canonical({**record, "seq": seq, "prev": prev, "v": CHAIN_VERSION}).encode()
    except (TypeError, ValueError):  # UnicodeEncodeError is a ValueError
        return None


def _fast(
    record: dict[str, Any], constant: set[str], seq: int, prev: str
) -> bytes | type[NotFast] | None:
    """A shape's body bytes; NotFast when a value goes back to the general encoder; None
    when the fast path refuses the record (not JSON data, not Unicode text)."""
    try:
        variable = tuple(k for k in record if k not in constant)
        shape = Shape(variable, {k: text(record[k]) for k in constant})
        rendered = shape.render([text(record[k]) for k in variable])
        return body_of(rendered, seq, prev).encode()
    except NotFast:
        return NotFast
    except ValueError:
        return None


@settings(max_examples=500, deadline=None)
@given(
    record=st.dictionaries(_keys, _values, max_size=8),
    constant=st.sets(_keys),
    seq=st.integers(1, 2**40),
    prev=_hashes | st.just(GENESIS),
)
@example(record={"actor": "%s%%", "task": "%d"}, constant={"actor"}, seq=1, prev=GENESIS)
@example(record={"n": 2**53, "f": 0.5}, constant=set(), seq=1, prev=GENESIS)
@example(record={"n": -(2**53), "f": float("inf")}, constant={"n"}, seq=1, prev=GENESIS)
@example(record={"t": "\ud800", "u": "\x00"}, constant={"u"}, seq=9, prev=GENESIS)
def test_a_shape_renders_the_bytes_of_the_canonical_encoder(
    record: dict[str, Any], constant: set[str], seq: int, prev: str
) -> None:
    constant &= set(record)
    want = _reference(record, seq, prev)
    got = _fast(record, constant, seq, prev)
    if got is NotFast:  # only for values whose text depends on the whole record
        assert any(
            type(v) in (dict, list) or (type(v) is int and abs(v) >= 2**53) for v in record.values()
        )
        return
    assert got == want
    if want is not None:
        try:
            assert want == rfc8785.dumps({**record, "seq": seq, "prev": prev, "v": 2})
        except rfc8785.CanonicalizationError:
            pass  # ±2**53 inside a nested value: the general encoder's own business


@settings(max_examples=300, deadline=None)
@given(value=_values)
def test_a_value_text_is_its_canonical_text_or_not_fast(value: Any) -> None:
    try:
        got = text(value)
    except NotFast:
        return
    except ValueError:
        got = None
    try:
        want: str | None = canonical({"k": value, "v": CHAIN_VERSION})[5:-7]
        want.encode()  # type: ignore[union-attr]
    except (TypeError, ValueError):
        want = None
    if got is not None and want is None:
        with pytest.raises(UnicodeEncodeError):
            got.encode()  # a lone surrogate: refused when the body is encoded
        return
    assert got == want


_optional = st.fixed_dictionaries(
    {},
    optional={
        "retrying": st.just(True),
        "cache_key": _values,
        "fallback": _values,
        "output_digest": _strings,
        "classification": _values,
        "pii_detected": st.lists(_strings, max_size=3) | _values,
    },
)


@settings(max_examples=400, deadline=None)
@given(
    who=st.tuples(_values, _values, _values),
    task=_values,
    tenant=_values,
    operation=st.none() | _values,
    attempt=_ints,
    ts=_strings,
    digest=st.none() | _strings,
    outcome=_values,
    error=st.none() | _values,
    optional=_optional,
    seq=st.integers(1, 2**40),
    prev=_hashes,
)
def test_task_records_fast_and_general_give_the_same_bytes(
    who: tuple[Any, Any, Any],
    task: Any,
    tenant: Any,
    operation: Any,
    attempt: Any,
    ts: Any,
    digest: str | None,
    outcome: Any,
    error: Any,
    optional: dict[str, Any],
    seq: int,
    prev: str,
) -> None:
    """The recorder's two records, pre-rendered and as dicts, for arbitrary values."""
    records = TaskRecords(*who)
    texts = records.texts(task, tenant, operation)
    pairs = [
        (
            records.started(task, tenant, operation, texts, attempt, ts, digest, fast=True),
            records.started(task, tenant, operation, texts, attempt, ts, digest, fast=False),
        ),
        (
            records.finished(
                task, tenant, operation, texts, attempt, ts, outcome, error, optional, fast=True
            ),
            records.finished(
                task, tenant, operation, texts, attempt, ts, outcome, error, optional, fast=False
            ),
        ),
    ]
    for fast, general in pairs:
        assert isinstance(general, dict)
        want = _reference(general, seq, prev)
        if isinstance(fast, dict):  # handed to the general encoder: the same dict
            assert fast == general
            continue
        try:
            got: bytes | None = body_of(fast, seq, prev).encode()
        except UnicodeEncodeError:
            got = None
        assert got == want
        if got is not None:  # the general path (processors) gets the same fields back
            chain = ("seq", "prev", "v")
            parsed = json.loads(got.decode())
            assert fields_of(fast) == {k: v for k, v in parsed.items() if k not in chain}


def test_the_common_records_take_the_fast_path() -> None:
    records = TaskRecords("alice", "claims", "01900000-0000-7000-8000-000000000000")
    texts = records.texts("clean", "acme", "read")
    assert texts is not None
    started = records.started("clean", "acme", "read", texts, 1, "t0", None, fast=True)
    finished = records.finished(
        "clean", "acme", "read", texts, 2, "t", "succeeded", None,
        {k: "x" for k in FINISHED_OPTIONAL if k not in ("operation", "retrying", "pii_detected")}
        | {"retrying": True, "pii_detected": ["email"]},
        fast=True,
    )  # fmt: skip
    assert isinstance(started, list) and isinstance(finished, list)
    body = json.loads(body_of(finished, 7, GENESIS))
    assert body["retrying"] is True and body["pii_detected"] == ["email"] and body["seq"] == 7


def _rendered(task: str) -> list[str]:
    records = TaskRecords("alice", "p", "r1")
    texts = records.texts(task, None, None)
    rendered = records.started(task, None, None, texts, 1, "t", None, fast=True)
    assert isinstance(rendered, list)
    return rendered


def test_a_trail_chains_pre_rendered_and_dict_records_alike(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    trail = AuditTrail(path, key=b"k" * 32)
    trail.append(_rendered('é\n"x'), wait=True)
    trail.append({"action": "admin.note", "outcome": "ok", "n": 1.5}, wait=True)
    trail.append(_rendered("b"))
    trail.close()
    report = verify(path, key=b"k" * 32)
    assert report.ok, str(report)
    lines = [json.loads(line) for line in path.read_text("utf-8").splitlines()]
    assert [r["seq"] for r in lines] == [1, 2, 3]
    assert lines[0]["task"] == 'é\n"x' and lines[1]["prev"] == lines[0]["hash"]


def test_processors_see_the_fields_of_a_pre_rendered_record(tmp_path: Path) -> None:
    """A processor added after a record was rendered gets its fields as a dict and may
    add to them: the record then goes through the general encoder."""
    path = tmp_path / "a.jsonl"
    seen: list[dict[str, Any]] = []

    def tag(logger: Any, method: str, ev: dict[str, Any]) -> dict[str, Any]:
        seen.append(dict(ev))
        return {**ev, "site": "eu"}

    trail = AuditTrail(path)
    assert trail.prerendered
    trail.add_processor(tag)
    assert not trail.prerendered
    trail.append(_rendered("a"), wait=True)
    trail.close()
    assert seen and seen[0]["task"] == "a" and "seq" not in seen[0]
    assert json.loads(path.read_text())["site"] == "eu"
    assert verify(path).ok


def test_a_lone_surrogate_is_refused_and_the_chain_stays_whole(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    trail = AuditTrail(path)
    trail.append(_rendered("a"), wait=True)
    with pytest.raises(AuditTrailError, match="not Unicode text"):
        trail.append(_rendered("bad\ud800"), wait=True)
    trail.append(_rendered("c"), wait=True)
    trail.close()
    report = verify(path)
    assert report.ok and report.records == 2, str(report)


def test_a_shape_refuses_keys_it_cannot_hold() -> None:
    with pytest.raises(ValueError, match="cannot be in a fixed shape"):
        Shape(("seq",), {})
    with pytest.raises(ValueError, match="cannot be in a fixed shape"):
        Shape(("ключ",), {})
    with pytest.raises(ValueError, match="repeat a key"):
        Shape(("a",), {"a": "1"})


@settings(max_examples=400, deadline=None)
@given(
    who=st.tuples(_values, _values, _values),
    task=_values,
    tenant=_values,
    operation=st.none() | _values,
    ts=st.from_regex(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]{15}\+00:00\Z"),
    seq=st.integers(1, 2**40),
    prev=_hashes,
)
@example(who=("%s", "a\x03b", "\x02"), task="\x05", tenant="\x04", operation="\x02x",
         ts="2026-12-02T15:02:45.281319+00:00", seq=1, prev=GENESIS)  # fmt: skip
def test_the_quick_records_are_the_shapes_bytes(
    who: tuple[Any, Any, Any],
    task: Any,
    tenant: Any,
    operation: Any,
    ts: str,
    seq: int,
    prev: str,
) -> None:
    """The two records cut once per run (``TaskRecords.quick``: a first attempt's
    ``task.started`` and a plain success) give the general encoder's bytes, for arbitrary
    actors, pipelines, run ids, task names, tenants and operations (sentinel characters
    included), or the task takes the general path."""
    records = TaskRecords(*who)
    quick = records.quick(records.texts(task, tenant, operation))
    if quick is None:
        return
    spre, fpre, mid, head, tail = quick
    general = [
        records.started(task, tenant, operation, None, 1, ts, None, fast=False),
        records.finished(task, tenant, operation, None, 1, ts, "succeeded", None, None, fast=False),
    ]
    for pre, rec in zip((spre, fpre), general, strict=True):
        assert isinstance(rec, dict)
        try:
            got: bytes | None = body_of([pre, mid, head + ts + tail], seq, prev).encode()
        except UnicodeEncodeError:
            got = None
        assert got == _reference(rec, seq, prev)


def test_common_tasks_get_quick_records() -> None:
    records = TaskRecords("alice", "claims", "01900000-0000-7000-8000-000000000000")
    assert records.quick(records.texts("clean", "acme", None)) is not None
    assert records.quick(records.texts("clean", None, "read")) is not None
    assert records.quick(records.texts({"not": "text"}, None, None)) is None


def test_the_cut_is_shared_across_runs_with_each_runs_id() -> None:
    """A stream's batches (one run each, same actor and pipeline) share the cut layout;
    each run's records carry its own run id, byte for byte the general encoder's."""
    ts = "2026-12-02T20:15:00.000001+00:00"
    for run_id in ("run-1", "run-2", "ru%sn-\x06"):
        records = TaskRecords("alice", "claims", run_id)
        quick = records.quick(records.texts("clean", "acme", None))
        assert quick is not None
        general = records.started("clean", "acme", None, None, 1, ts, None, fast=False)
        assert isinstance(general, dict)
        body = body_of([quick[0], quick[2], quick[3] + ts + quick[4]], 7, GENESIS)
        assert body.encode() == _reference(general, 7, GENESIS)


@settings(max_examples=300, deadline=None)
@given(
    who=st.tuples(_values, _values, _values),
    task=_values,
    tenant=_values,
    level=_strings,
    seq=st.integers(1, 2**40),
    prev=_hashes,
)
def test_the_classified_quick_record_is_the_general_encoders(
    who: tuple[Any, Any, Any], task: Any, tenant: Any, level: str, seq: int, prev: str
) -> None:
    """A plain success whose output has a classification level (the classification plugin
    on) takes the quick record with the level put in: the general encoder's bytes."""
    records = TaskRecords(*who)
    quick = records.quick(records.texts(task, tenant, None))
    pre = records.classified(level)
    if quick is None or pre is None:
        return
    ts = "2026-12-02T20:25:00.123456+00:00"
    rec = records.finished(
        task, tenant, None, None, 1, ts, "succeeded", None, {"classification": level}, fast=False
    )
    assert isinstance(rec, dict)
    try:
        got: bytes | None = body_of([pre, quick[2], quick[3] + ts + quick[4]], seq, prev).encode()
    except UnicodeEncodeError:
        got = None
    assert got == _reference(rec, seq, prev)


@settings(max_examples=300, deadline=None)
@given(who=st.lists(st.tuples(_values, _values, _values), min_size=1, max_size=4))
@example(who=[("a", "p", "r1"), ("a", "p", "ru%sn-\x06"), ("a", "p", "\x06")])
def test_a_runs_mid_is_its_quick_records_mid(who: list[tuple[Any, Any, Any]]) -> None:
    """``run_mid`` (the mid text cached per actor and pipeline, the run id put in) is the
    mid of every quick record of the run, with or without an operation; None when the run
    has no quick record or its two layouts disagree (then no record takes it)."""
    for actor, pipeline, run_id in who * 2:  # the second time from the cache
        records = TaskRecords(actor, pipeline, run_id)
        mids = set()
        for op in (None, "read"):
            fresh = TaskRecords(actor, pipeline, run_id)
            quick = fresh.quick(fresh.texts("t", None, op))
            if quick is not None:
                mids.add(quick[2])
        assert records.run_mid() == (mids.pop() if len(mids) == 1 else None)
