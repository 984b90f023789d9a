"""Pre-rendered general records: ``run.started``, ``run.finished`` and ``stream.*``.

A stream writes three such records per micro-batch. Built as dicts they went through the
processors, the canonical encoder and the chain hasher one by one (30-50 µs each); here
their keys become a :class:`._render.Shape` (cached by the record's key tuple: the same
for every batch of a stream) and their values canonical texts, so a record costs the value
texts and one format, then the pre-rendered chain path. The bytes are the general
encoder's (the tests check it with hypothesis); a value the fast texts do not cover (an
integer beyond ±(2**53 - 1), a tuple, a non-ASCII key in a nested object ...) keeps the
record a dict: the general encoder then decides, as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._canonical import _plain_float
from ._render import NotFast, Rendered, Shape, jstr, text

_MAX_SHAPES = 64


def deep_text(value: Any) -> str:
    """The canonical text of a JSON value as :func:`._canonical.canonical` renders it inside
    a record: :func:`._render.text`'s values, and lists and objects of them (objects under
    ASCII keys: their code point order is RFC 8785's UTF-16 order). Raises
    :class:`._render.NotFast` for anything else, ValueError for NaN and infinity."""
    t = type(value)
    if t is dict:
        parts = []
        for k in value:
            if type(k) is not str or not k.isascii():
                raise NotFast("an object key that is not an ASCII string")
        for k in sorted(value):
            parts.append(jstr(k) + ":" + deep_text(value[k]))
        return "{" + ",".join(parts) + "}"
    if t is list:
        return "[" + ",".join([deep_text(v) for v in value]) + "]"
    if t is float and _plain_float(value):
        return repr(value)  # the json encoder's text, as canonical's plain path writes it
    return text(value)


def prerender(record: Mapping[str, Any], shapes: dict[tuple[str, ...], Shape]) -> Rendered | None:
    """``record`` pre-rendered (its :class:`._render.Shape` kept in ``shapes``), or None
    when the general encoder must decide (see the module's docstring)."""
    try:
        values = [deep_text(v) for v in record.values()]
        keys = tuple(record)
        shape = shapes.get(keys)
        if shape is None:
            if len(shapes) >= _MAX_SHAPES:
                shapes.clear()
            shape = shapes[keys] = Shape(keys, {})
        return shape.render(values)
    except ValueError:  # NotFast, a key a shape cannot hold, NaN ...: the general path
        return None
