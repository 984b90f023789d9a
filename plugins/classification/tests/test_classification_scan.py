"""The scanner: what gather_text gathers (against a brute-force model), its bound, and the
detectors' cheap pre-check (``needs``) never changing a verdict."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from xlib_pipeline_classification import ClassificationPlugin, RegexDetector, builtin_detectors
from xlib_pipeline_classification._scan import MAX_DEPTH, _records, _walk, gather_text

# Text likely to hold (or nearly hold) PII: digits, separators, '@', dots, letters.
_ALPHABET = "0123456789 -.+()@abxyzAB"
leaf_text = st.text(alphabet=_ALPHABET, max_size=24)
leaves = st.one_of(
    leaf_text,
    st.integers(-(10**12), 10**12),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False),
)
values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.tuples(inner, inner),
        st.frozensets(leaf_text, max_size=4),
        st.dictionaries(st.one_of(leaf_text, st.integers()), inner, max_size=5),
    ),
    max_leaves=40,
)


def model(value: Any, depth: int = 0) -> list[str]:
    """Every piece of text the scanner looks at, repeats included (the walk before it
    gathered each distinct string once)."""
    if isinstance(value, str):
        return [value] if len(value) > 2 else []
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [str(value)] if abs(value) >= 100_000_000 else []
    if depth >= MAX_DEPTH:
        return []
    out: list[str] = []
    if isinstance(value, dict):
        for k, x in value.items():
            if isinstance(k, str) and len(k) > 2:
                out.append(k)
            out.extend(model(x, depth + 1))
    elif isinstance(value, list | tuple | set | frozenset):
        for x in value:
            out.extend(model(x, depth + 1))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_gathers_every_distinct_string_once(value):
    """Unbounded, the gathered text holds each distinct string (len > 2), dict key and
    9+-digit integer of the value once, and nothing else."""
    text = gather_text(value, 1 << 30)
    want = model(value) if not isinstance(value, str | int) else None
    if want is None:
        return
    parts = text.split("\n") if text else []
    assert sorted(parts) == sorted(set(want))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_verdicts_equal_scanning_every_repeat(value):
    """The built-in detectors find the same kinds in the deduplicated text as in the text
    with every repeat (no built-in pattern spans two gathered strings)."""
    plugin = ClassificationPlugin()
    plugin.detectors = list(builtin_detectors().values())
    full = "\n".join(model(value)) if not isinstance(value, str | int) else None
    if full is None:
        return
    for d in plugin.detectors:
        assert d.detect(gather_text(value, 1 << 30)) == d.detect(full), d.name


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=_ALPHABET + "\n", max_size=60))
def test_needs_never_changes_a_verdict(text):
    """A built-in detector with its pre-check answers as its pattern alone does."""
    for d in builtin_detectors().values():
        assert isinstance(d, RegexDetector)
        plain = RegexDetector(d.name, d._re.pattern, level=d.level, check=d._check)
        assert d.detect(text) == plain.detect(text), (d.name, text)


def test_needs_skips_the_pattern():
    """Without the pre-check's match the pattern never runs (its check is never called)."""
    calls: list[str] = []

    def check(m: str) -> bool:
        calls.append(m)
        return True

    d = RegexDetector("x", r"\d+", check=check, needs=r"\d")
    assert not d.detect("no numbers here")
    assert calls == []
    assert d.detect("one 42")
    assert calls == ["42"]


def test_repeats_count_against_the_limit():
    """The walk is bounded by the limit even when every string is a repeat: a million
    references to one string are not all walked (the e-mail after them is not reached)."""
    value = ["abc"] * 1_000_000 + ["ann@example.org"]
    text = gather_text(value, 1000)
    assert text == "abc"
    # Within the limit, the e-mail after a few repeats is gathered.
    assert "ann@example.org" in gather_text(["abc"] * 10 + ["ann@example.org"], 1000)


def test_records_keys_are_gathered_once():
    """A batch of records: each key and each distinct value once."""
    rows = [{"id": i, "note": "payment", "email": f"u{i}@x.org"} for i in range(3)]
    parts = gather_text(rows, 1000).split("\n")
    assert sorted(parts) == sorted(["note", "payment", "email", "u0@x.org", "u1@x.org", "u2@x.org"])


class _Str(str):
    """A str subclass: walked as a string, but not by the records' fast path."""


_keys = st.one_of(
    st.sampled_from(["id", "amount", "note", "email", "abc", "payment", 7, (1, 2)]), leaf_text
)
_flat = st.one_of(
    leaf_text,
    st.sampled_from(["payment", "note", "abc", "ab", "", "ann@example.org", _Str("a@b.co")]),
    st.integers(-(10**10), 10**10),
    st.sampled_from([99_999_999, 100_000_000, -99_999_999, -100_000_000, True, False]),
    st.none(),
    st.floats(allow_nan=False),
)


@st.composite
def _record_batches(draw: Any) -> list[Any]:
    """Mostly records of one schema (the fast path), some with fewer keys; sometimes a
    key the last record lacks, a nested value or an element that is not a dict (the
    general walk answers those)."""
    keys = draw(st.lists(_keys, unique=True, max_size=4))
    rows: list[Any] = []
    for _ in range(draw(st.integers(1, 8))):
        own = [k for k in keys if draw(st.integers(0, 5))] if rows else keys
        rows.append({k: draw(_flat) for k in own})
    rows.reverse()  # the walk starts from the last record: the one with every key
    if draw(st.integers(0, 3)) == 0:
        odd = draw(
            st.dictionaries(_keys, _flat, max_size=2)
            | st.dictionaries(_keys, st.lists(_flat, max_size=2), min_size=1, max_size=2)
            | _flat
        )
        rows.insert(draw(st.integers(0, len(rows))), odd)
    return rows


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_record_batches(), st.sampled_from([1, 5, 12, 20, 40, 1 << 30]), st.booleans())
def test_records_fast_path_gathers_the_walks_text(rows, limit, as_tuple):
    """A batch of flat records gathers exactly the general walk's text, at any limit (the
    fast path answers, or hands the batch to the walk)."""
    value = tuple(rows) if as_tuple else rows
    assert gather_text(value, limit) == _walk(value, limit)


def test_records_fast_path_answers_a_batch_of_one_schema():
    rows = [{"id": i, "amount": i % 997, "note": "payment", "ok": True} for i in range(10)]
    rows[3]["note"] = "ann@example.org"
    assert (
        _records(rows, 1 << 16) == _walk(rows, 1 << 16) == "amount\nnote\npayment\nann@example.org"
    )
    # not a flat batch of one schema, or at the limit: the general walk answers
    assert _records([*rows, {"other": 1}], 1 << 16) is None
    assert _records([{"a": [1]}], 1 << 16) is None
    assert _records([{"n": 123_456_789}], 1 << 16) is None
    assert _records([{"note": _Str("abc")}], 1 << 16) is None
    assert _records(rows, 10) is None


class _Counting:
    """A detector that is not a RegexDetector: always asked (no reuse of answers)."""

    name = "counting"
    level = "restricted"

    def __init__(self) -> None:
        self.calls = 0

    def detect(self, text: str) -> bool:
        self.calls += 1
        return "zz" in text


def _naive(detectors: list[Any], text: str) -> tuple[str | None, tuple[str, ...]]:
    from xlib_pipeline_classification import LEVELS, RANK

    found = [d for d in detectors if d.detect(text)]
    top = max((RANK[d.level] for d in found), default=-1)
    return (LEVELS[top] if top >= 0 else None), tuple(d.name for d in found)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet=_ALPHABET + "z\n", max_size=40), min_size=1, max_size=4))
def test_classify_answers_as_every_detector_asked_in_turn(texts):
    """classify (shared pre-checks, the last text's answer reused) answers as asking each
    detector's detect in turn, for every text in a row, repeats included."""
    plugin = ClassificationPlugin()
    plugin.detectors = list(builtin_detectors().values())
    for text in [*texts, texts[0], texts[-1]]:
        assert plugin.classify(text) == _naive(plugin.detectors, text[: plugin.scan_limit])


def test_the_last_answer_is_reused_only_for_regex_detectors():
    plugin = ClassificationPlugin()
    plugin.detectors = list(builtin_detectors().values())
    rows = [{"id": 1, "note": "call 202-555-0143"}]
    first = plugin.classify(rows)
    assert first == ("confidential", ("phone",))
    assert plugin._last is not None and plugin._last[2] == first
    assert plugin.classify(list(rows)) == first  # same text: the same answer
    counting = _Counting()
    plugin.detectors = [*plugin.detectors, counting]  # another detector list: asked again
    assert plugin.classify(rows) == first
    assert plugin.classify(rows) == first
    assert counting.calls == 2  # never reused: it is not a RegexDetector
    assert plugin.classify("zz") == ("restricted", ("counting",))
