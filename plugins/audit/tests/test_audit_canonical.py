"""RFC 8785 canonical form (v2) for new records; legacy trails (no v) stay verifiable."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st
from xlib_pipeline_audit import verify
from xlib_pipeline_audit._canonical import CHAIN_VERSION, GENESIS, canonical, record_hash
from xlib_pipeline_audit._head import head_document

from xlib_pipeline import Pipeline, PipelineManager

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(), _json, max_size=6))
def test_v2_canonical_form_is_rfc8785(record: dict[str, object]) -> None:
    rec = {**record, "v": CHAIN_VERSION}
    try:
        want = rfc8785.dumps(rec).decode("utf-8")
    except rfc8785.CanonicalizationError:
        return  # not representable (lone surrogates ...): the writer refuses those too
    assert canonical(rec) == want


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.floats(allow_nan=False, allow_infinity=False)
        | st.floats(min_value=1e-5, max_value=1e17)
        | st.floats(min_value=-1e17, max_value=-1e-5)
        | st.integers(-(10**6), 10**6).map(lambda i: i / 1000),
        max_size=4,
    )
)
def test_floats_take_the_fast_path_only_where_it_is_rfc8785(values: list[float]) -> None:
    """Floats of a plain decimal form (a run's duration_ms) are encoded without the
    rfc8785 walk, byte for byte as rfc8785 encodes them; the others still take it."""
    rec = {"duration_ms": values[0] if values else 1.5, "values": values, "v": CHAIN_VERSION}
    assert canonical(rec) == rfc8785.dumps(rec).decode("utf-8")


def test_a_run_finished_record_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """run.finished's duration_ms (a non-integral float) no longer sends the record
    through rfc8785; an integral or exponent-form float still does."""
    import xlib_pipeline_audit._canonical as c

    calls: list[object] = []
    real = rfc8785.dumps
    monkeypatch.setattr(c.rfc8785, "dumps", lambda r: calls.append(r) or real(r))
    assert canonical({"duration_ms": 12.345, "v": CHAIN_VERSION}) == '{"duration_ms":12.345,"v":2}'
    assert calls == []
    for v, text in ((5.0, "5"), (1e-7, "1e-7"), (1e21, "1e+21"), (-0.0, "0")):
        assert canonical({"d": v, "v": CHAIN_VERSION}) == '{"d":' + text + ',"v":2}'
    assert len(calls) == 4


@settings(max_examples=300, deadline=None)
@given(key=st.binary(max_size=200), body=st.text())
def test_keyed_record_hash_is_hmac_sha256(key: bytes, body: str) -> None:
    """The precomputed-pad HMAC equals the standard library's for any key length
    (shorter than, equal to and longer than SHA-256's 64-byte block)."""
    want = hmac.new(key, body.encode("utf-8"), hashlib.sha256).hexdigest()
    assert record_hash(body, key) == want
    assert record_hash(body, None) == hashlib.sha256(body.encode("utf-8")).hexdigest()


def _legacy_line(rec: dict[str, object]) -> str:
    body = json.dumps(rec, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    h = hashlib.sha256(body.encode("ascii")).hexdigest()
    return body[:-1] + ',"hash":"' + h + '"}', h


def test_a_legacy_trail_verifies_and_new_records_continue_it(tmp_path: Path) -> None:
    trail = tmp_path / "audit.jsonl"
    prev = GENESIS
    lines = []
    for seq in (1, 2):
        rec = {"action": "legacy", "actor": "Zoë", "prev": prev, "seq": seq, "ts": "t"}
        line, prev = _legacy_line(rec)
        lines.append(line)
    trail.write_text("\n".join(lines) + "\n")
    head = head_document(
        trail=trail.name, seq=2, last_hash=prev, size=trail.stat().st_size, key=None
    )
    Path(str(trail) + ".head").write_text(canonical(head) + "\n")
    assert verify(trail)
    assert "\\u00eb" in trail.read_text()  # the legacy form escapes non-ASCII
    p = Pipeline("jcs")
    p.add_task("t", lambda: 1)
    audit = {"path": str(trail), "keyed": False, "actor": "Zürich-Ops"}
    with PipelineManager({"audit": audit}) as pm:
        pm.execute_pipeline(p)
    report = verify(trail)
    assert report, str(report)
    new = [json.loads(x) for x in trail.read_text(encoding="utf-8").splitlines()[2:]]
    assert new and all(r["v"] == CHAIN_VERSION for r in new)
    assert "Zürich-Ops" in trail.read_text(encoding="utf-8")  # RFC 8785 keeps UTF-8 as is
    # A number went through rfc8785 (a duration rounded to a whole number of ms is written
    # as an integer, 5 not 5.0, as RFC 8785 says: either is fine here).
    assert any(type(r.get("duration_ms")) in (int, float) for r in new)
    # A verifier in any language: the hash input is the line minus its hash member.
    for raw in trail.read_bytes().splitlines()[2:]:
        rec = json.loads(raw)
        body = dict(rec)
        given_hash = body.pop("hash")
        assert hashlib.sha256(rfc8785.dumps(body)).hexdigest() == given_hash
