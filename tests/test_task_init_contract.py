"""``Task.__init__`` is written out by hand (speed: one task per decorated function) and
repeats attrs' field list: these tests fail when the two disagree (a field added, removed,
renamed, reordered or given another default in one place only)."""

from __future__ import annotations

import inspect
from types import MappingProxyType
from typing import Any

import attrs
import pytest

from xlib_pipeline import Task
from xlib_pipeline._task import _EMPTY


def _init_params() -> list[inspect.Parameter]:
    params = list(inspect.signature(Task.__init__).parameters.values())
    assert params[0].name == "self"
    return params[1:]


def test_init_takes_the_fields_in_order() -> None:
    names = [p.name for p in _init_params()]
    assert names == [f.name for f in attrs.fields(Task)]


def test_init_is_keyword_only_like_the_class() -> None:
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in _init_params())


def test_init_defaults_are_the_field_defaults() -> None:
    for p, f in zip(_init_params(), attrs.fields(Task), strict=True):
        field_default = f.default
        if isinstance(field_default, attrs.Factory):  # type: ignore[arg-type]
            pytest.fail(f"field {f.name}: a factory default needs the hand-written init too")
        if field_default is attrs.NOTHING:
            assert p.default is inspect.Parameter.empty, f"{f.name} must be required"
        else:
            assert p.default is field_default or p.default == field_default, f.name


def _values() -> dict[str, Any]:
    """A non-default value for every field (the test fails for a field it does not know)."""
    known: dict[str, Any] = {
        "name": "t",
        "fn": lambda x: x,
        "depends_on": ("a", "b"),
        "condition": lambda x: True,
        "merge_strategy": "collect_available",
        "options": {"retries": 2},
        "description": "does t",
    }
    missing = [f.name for f in attrs.fields(Task) if f.name not in known]
    assert not missing, f"add a value for the new field(s) {missing} to this test"
    return known


def test_init_sets_every_field() -> None:
    values = _values()
    t = Task(**values)
    for f in attrs.fields(Task):
        got = getattr(t, f.name)  # AttributeError: the hand-written init forgot it
        want = values[f.name]
        if f.name == "options":
            assert isinstance(got, MappingProxyType) and dict(got) == want
        else:
            assert got == want, f.name


def test_defaults_leave_every_field_set() -> None:
    t = Task(name="t", fn=print)
    for f in attrs.fields(Task):
        getattr(t, f.name)
    assert t.options is _EMPTY


def test_evolve_round_trips_through_the_init() -> None:
    t = Task(**_values())
    for f in attrs.fields(Task):
        again = attrs.evolve(t, **{f.name: getattr(t, f.name)})
        assert [getattr(again, g.name) for g in attrs.fields(Task)] == [
            getattr(t, g.name) for g in attrs.fields(Task)
        ]
