"""Records of a known shape, rendered from precomputed fragments: the audit hot path.

The keys of ``task.started`` and ``task.finished`` records are known in advance; only their
values vary. A :class:`Shape` holds the canonical (RFC 8785) text of such a record with its
keys sorted, split around the two values only the chain knows (``prev`` and ``seq``)::

    {"action":"task.started",...,"prev":"  <prev>  ","run_id":"...","seq":  <seq>  ,...,"v":2}
    \\_____________ pre _______________/          \\________ mid ________/        \\__ post __/

Keys, constant values (the run's actor, pipeline, id ...) and ``"v":2`` are baked into one
format string when the run starts; a record costs one ``%`` format of the value texts that
vary (see :func:`text`) and one split, on the task's thread. Under the trail's lock only
``pre + prev + mid + seq + post`` remains, then the hash (:meth:`AuditTrail._chain_rendered`).

:func:`._canonical.canonical` (the general encoder, which ``audit verify`` uses) stays the
reference: the tests check with hypothesis that a shape's bytes are identical to it for
arbitrary values. A value whose text depends on the rest of the record (an integer at
±2**53, nested objects) raises :class:`NotFast`, and the caller writes the record as a dict
through the general encoder instead: the bytes on the wire never differ.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from json.encoder import encode_basestring
from operator import itemgetter
from typing import Any

from ._canonical import CHAIN_VERSION

#: A pre-rendered record: ``[pre, mid, post]`` from :meth:`Shape.render` (a list, as
#: ``str.split`` returns it: no object is built per record).
Rendered = list[str]

#: The chain's own keys: filled in under the trail's lock (``v`` is a constant).
CHAIN_KEYS = ("prev", "seq", "v")
_SEP = "\x00"  # never in a JSON text: control characters are always escaped
_MAX_INT = 2**53
#: The canonical text of a str (the C encoder json uses; RFC 8785 escapes the same).
jstr: Callable[[str], str] = encode_basestring
_jstr = jstr


class NotFast(ValueError):
    """This value's canonical text depends on the whole record: use the general encoder."""


def text(value: Any) -> str:
    """The canonical text of one JSON value, exactly as :func:`._canonical.canonical`
    renders it inside a record: strings, ``None``, booleans, integers within ±(2**53 - 1),
    finite floats and lists of strings. Raises :class:`NotFast` (a ValueError) for anything
    else, and ValueError for values that are not JSON data (NaN, infinity)."""
    t = type(value)
    if t is str:
        return _jstr(value)
    if value is None:
        return "null"
    if t is bool:
        return "true" if value else "false"
    if t is int:
        if -_MAX_INT < value < _MAX_INT:
            return str(value)
        raise NotFast("integer beyond ±(2**53 - 1)")
    if t is float:
        import rfc8785  # a float makes the whole record take rfc8785: the same text

        return rfc8785.dumps(value).decode("utf-8")
    if t is list:
        for item in value:
            if type(item) is not str:
                raise NotFast("a list of anything but strings")
        return "[" + ",".join(map(_jstr, value)) + "]"
    raise NotFast(f"a {t.__name__} value")


class Shape:
    """One record layout: which keys it has, which are constant, in which order the
    varying values are given. Build once (per run), :meth:`render` per record."""

    __slots__ = ("_fmt", "_get", "variable")

    def __init__(self, variable: tuple[str, ...], constant: Mapping[str, str]) -> None:
        """``variable``: the keys whose value texts :meth:`render` receives, in that order;
        ``constant``: key -> canonical value text (from :func:`text`), baked in."""
        keys = [*variable, *constant]
        for k in keys:
            if not k.isascii() or k in CHAIN_KEYS or k == "hash":
                raise ValueError(f"audit record key {k!r} cannot be in a fixed shape")
        if len(set(keys)) != len(keys):
            raise ValueError(f"audit record keys {keys} repeat a key")
        self.variable = variable
        order: list[int] = []
        fmt: list[str] = []
        for k in sorted([*keys, *CHAIN_KEYS]):  # ASCII keys: code point order = RFC 8785's
            fmt.append(("{" if not fmt else ",") + _jstr(k) + ":")
            if k == "prev":
                fmt.append('"' + _SEP + '"')
            elif k == "seq":
                fmt.append(_SEP)
            elif k == "v":
                fmt.append(str(CHAIN_VERSION))
            elif k in constant:
                fmt.append(constant[k].replace("%", "%%"))
            else:
                fmt.append("%s")
                order.append(variable.index(k))
        fmt.append("}")
        self._fmt = "".join(fmt)
        getter: Callable[[Sequence[str]], Any]
        if order:
            getter = itemgetter(*order)
        else:

            def getter(values: Sequence[str]) -> tuple[str, ...]:
                return ()

        self._get = getter

    def render(self, values: Sequence[str]) -> Rendered:
        """``[pre, mid, post]`` for the value texts ``values`` (in :attr:`variable` order)."""
        return (self._fmt % self._get(values)).split(_SEP)


def body_of(rendered: Rendered, seq: int, prev: str) -> str:
    """The canonical body of a pre-rendered record at chain position (``seq``, ``prev``)."""
    return rendered[0] + prev + rendered[1] + str(seq) + rendered[2]


def fields_of(rendered: Rendered) -> dict[str, Any]:
    """The record's fields as a dict (no chain keys): for the general path (processors)."""
    rec: dict[str, Any] = json.loads(body_of(rendered, 0, ""))
    for k in CHAIN_KEYS:
        rec.pop(k, None)
    return rec
