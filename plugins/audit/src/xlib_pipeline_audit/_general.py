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
_MAX_INT = 2**53

#: The keys of the per-batch records whose values vary from batch to batch (the others are
#: the run's or stream's constants, baked into the shape), in the order :class:`RunRecords`
#: passes their texts.
STARTED_VARYING = ("ts", "run_id", "stream")
FINISHED_VARYING = ("ts", "run_id", "outcome", "error_class", "counts", "duration_ms")
#: ``stream.batch``'s ``info`` keys that are not in the record (the chain's own ``seq``
#: replaces the batch's, ``run_id`` is the record's, an ``error`` is its error class).
_NOT_INFO = ("seq", "run_id", "error")


def deep_text(value: Any) -> str:
    """The canonical text of a JSON value as :func:`._canonical.canonical` renders it inside
    a record: :func:`._render.text`'s values, and lists and objects of them (objects under
    ASCII keys: their code point order is RFC 8785's UTF-16 order). Raises
    :class:`._render.NotFast` for anything else, ValueError for NaN and infinity."""
    t = type(value)
    if t is str:
        return jstr(value)
    if t is int and -_MAX_INT < value < _MAX_INT:
        return str(value)
    if value is None:
        return "null"
    if t is dict:
        return _object_text(value)
    if t is list:
        parts = []
        for v in value:
            t = type(v)
            if t is str:
                parts.append(jstr(v))
            elif t is int and -_MAX_INT < v < _MAX_INT:
                parts.append(str(v))
            else:
                parts.append(deep_text(v))
        return "[" + ",".join(parts) + "]"
    if t is float and _plain_float(value):
        return repr(value)  # the json encoder's text, as canonical's plain path writes it
    return text(value)


#: An object's keys (in its order) -> ``(key, '"key":')`` in canonical order, or None when
#: a key is not an ASCII string. A stream's records repeat the same few objects (its
#: ``stream`` param, a batch's ``counts``) batch after batch: the keys' checks, their sort
#: and their texts once per layout, not per record. Bounded.
_LAYOUTS: dict[tuple[Any, ...], tuple[tuple[str, str], ...] | None] = {}


def _layout(keys: tuple[Any, ...]) -> tuple[tuple[str, str], ...] | None:
    for k in keys:
        if type(k) is not str or not k.isascii():
            return None
    return tuple((k, jstr(k) + ":") for k in sorted(keys))


def _object_text(value: dict[Any, Any]) -> str:
    """:func:`deep_text` of a dict (see :data:`_LAYOUTS`). A key equal to a cached one
    (a str subclass) renders as that str: its canonical text is the same."""
    keys = tuple(value)
    try:
        layout = _LAYOUTS[keys]
    except KeyError:
        layout = _layout(keys)
        if len(_LAYOUTS) >= 256:
            _LAYOUTS.clear()
        _LAYOUTS[keys] = layout
    if layout is None:
        raise NotFast("an object key that is not an ASCII string")
    parts = []
    for k, name in layout:
        v = value[k]
        t = type(v)
        if t is str:
            parts.append(name + jstr(v))
        elif t is int and -_MAX_INT < v < _MAX_INT:
            parts.append(name + str(v))
        else:
            parts.append(name + deep_text(v))
    return "{" + ",".join(parts) + "}"


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


class RunRecords:
    """The records every micro-batch of a stream writes (``run.started``, ``run.finished``,
    ``stream.batch``) pre-rendered from shapes with the constants of the run baked in (its
    actor, tenant, pipeline, task count, stream name): per batch only the values that vary
    get their texts. The same bytes as :func:`prerender` (the same value texts, the same
    shape), without the dict, the constants' texts and the shape lookup by the whole key
    tuple. The constants key the shape only when their text follows from their value
    (strings, ``None``, integers: no ``1 == True``, no ``0.0 == -0.0``); anything else, or a
    value the fast texts do not cover, returns None and the caller takes the general path.
    """

    __slots__ = ("_shapes",)

    def __init__(self) -> None:
        self._shapes: dict[tuple[Any, ...], tuple[Shape, tuple[str, ...]] | None] = {}

    def _shape(
        self, key: tuple[Any, ...], variable: tuple[str, ...], constant: dict[str, Any]
    ) -> tuple[Shape, tuple[str, ...]] | None:
        try:
            return self._shapes[key]
        except KeyError:
            pass
        entry: tuple[Shape, tuple[str, ...]] | None
        try:
            entry = (Shape(variable, {k: deep_text(v) for k, v in constant.items()}), variable)
        except ValueError:  # NotFast, a key a shape cannot hold: the general path, always
            entry = None
        if len(self._shapes) >= _MAX_SHAPES:
            self._shapes.clear()
        self._shapes[key] = entry
        return entry

    def started(
        self, ts: str, actor: Any, tenant: Any, pipeline: Any, run_id: Any, tasks: Any, stream: Any
    ) -> Rendered | None:
        """A stream batch's ``run.started`` (no ``params``, no ``logical_date``)."""
        if not (
            (actor is None or type(actor) is str)  # a str or None: its text follows from ==
            and (tenant is None or type(tenant) is str)
            and (pipeline is None or type(pipeline) is str)
            and type(tasks) is int
        ):
            return None
        key = ("run.started", actor, tenant, pipeline, tasks)
        entry = self._shapes.get(key)
        if entry is None and key not in self._shapes:  # the constants' texts once per shape
            entry = self._shape(key, STARTED_VARYING, {
                "actor": actor, "tenant": tenant, "pipeline": pipeline, "task": None,
                "action": "run.started", "outcome": "started", "error_class": None,
                "tasks": tasks,
            })  # fmt: skip
        if entry is None:
            return None
        try:
            return entry[0].render((
                jstr(ts), jstr(run_id) if type(run_id) is str else deep_text(run_id),
                deep_text(stream),
            ))  # fmt: skip
        except ValueError:
            return None

    def finished(
        self,
        ts: str,
        actor: Any,
        tenant: Any,
        pipeline: Any,
        run_id: Any,
        outcome: Any,
        error_class: Any,
        counts: Any,
        duration_ms: Any,
        counts_text: str | None = None,
    ) -> Rendered | None:
        """A ``run.finished`` record with ``counts`` and ``duration_ms`` (``counts_text``:
        the canonical text of ``counts``, when the caller has it)."""
        if not (
            (actor is None or type(actor) is str)
            and (tenant is None or type(tenant) is str)
            and (pipeline is None or type(pipeline) is str)
        ):
            return None
        key = ("run.finished", actor, tenant, pipeline)
        entry = self._shapes.get(key)
        if entry is None and key not in self._shapes:  # the constants' texts once per shape
            entry = self._shape(key, FINISHED_VARYING, {
                "actor": actor, "tenant": tenant, "pipeline": pipeline, "task": None,
                "action": "run.finished",
            })  # fmt: skip
        if entry is None:
            return None
        try:
            return entry[0].render((
                jstr(ts),
                jstr(run_id) if type(run_id) is str else deep_text(run_id),
                jstr(outcome) if type(outcome) is str else deep_text(outcome),
                "null" if error_class is None else deep_text(error_class),
                deep_text(counts) if counts_text is None else counts_text,
                deep_text(duration_ms),
            ))  # fmt: skip
        except ValueError:
            return None

    def batch(
        self, ts: str, actor: Any, tenant: Any, pipeline: Any, stream: Any, info: Any
    ) -> Rendered | None:
        """A ``stream.batch`` record of ``info`` (the ``stream_event`` hook's, no error)."""
        if not (
            (actor is None or type(actor) is str)
            and (tenant is None or type(tenant) is str)
            and (pipeline is None or type(pipeline) is str)
            and (stream is None or type(stream) is str)
        ):
            return None
        if type(info) is not dict or "error" in info:
            return None
        key = ("stream.batch", actor, tenant, pipeline, stream, *info)
        entry = self._shapes.get(key)
        if entry is None and key not in self._shapes:
            names = tuple(k for k in info if k not in _NOT_INFO)
            entry = self._shape(key, ("ts", "run_id", *names), {
                "actor": actor, "tenant": tenant, "pipeline": pipeline, "task": None,
                "action": "stream.batch", "outcome": "committed", "error_class": None,
                "stream": stream,
            })  # fmt: skip
        if entry is None:
            return None
        try:
            run_id = info.get("run_id")
            texts = [jstr(ts), jstr(run_id) if type(run_id) is str else deep_text(run_id)]
            add = texts.append
            for k in entry[1][2:]:
                v = info[k]
                if type(v) is int and -_MAX_INT < v < _MAX_INT:  # most of them: counts
                    add(str(v))
                else:
                    add(deep_text(v))
            return entry[0].render(texts)
        except ValueError:
            return None
