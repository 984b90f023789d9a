"""The structlog processors that chain a record: ``seq``, ``prev`` and ``hash``, then the line.

Both run under the trail's lock, after every user processor.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from ._canonical import CHAIN_VERSION, canonical, hash_bytes, render_line

if TYPE_CHECKING:
    from ._render import Rendered
    from ._trail import AuditTrail, Chained


def chain_rendered(trail: AuditTrail, rendered: Rendered) -> Chained:
    """Chain a pre-rendered record (:mod:`._render`): its body at the chain's end, hashed,
    and its line. Holds the trail's lock; the least work there is: one concatenation, one
    encode, the hash."""
    seq = trail._seq + 1
    try:
        data = (rendered[0] + trail._prev + rendered[1] + str(seq) + rendered[2]).encode()
    except UnicodeEncodeError as exc:  # a lone surrogate in a string value
        raise _error(
            f"audit record {rendered[0][:60]!r}... holds a string that is not Unicode text "
            f"({exc})",
            path=str(trail.path),
        ) from exc
    h = hash_bytes(data, trail._key)
    trail._seq, trail._prev = seq, h
    return (data[:-1] + b',"hash":"' + h.encode("ascii") + b'"}\n', None, seq, h, rendered)


class _ChainHasher:
    """structlog processor: assigns ``seq`` and ``prev`` and computes ``hash`` over the
    canonical body. Runs under the trail's lock, after every user processor."""

    def __init__(self, trail: AuditTrail) -> None:
        self._trail = weakref.proxy(trail)

    def __call__(self, logger: Any, method: str, ev: dict[str, Any]) -> dict[str, Any]:
        t = self._trail
        seq = t._seq + 1
        ev.pop("hash", None)
        ev["seq"] = seq
        ev["prev"] = t._prev
        ev["v"] = CHAIN_VERSION
        try:
            body = canonical(ev)
            data = body.encode("utf-8")  # a lone surrogate is no JSON text either
        except (TypeError, ValueError) as exc:
            raise _error(
                f"audit record for action {ev.get('action')!r} holds a value that is not JSON "
                f"data ({exc}); processors must add only JSON values",
                path=str(t.path),
            ) from exc
        h = hash_bytes(data, t._key)
        ev["hash"] = h
        t._staged = (seq, h, body, ev)
        return ev


class _LineRenderer:
    """structlog renderer: the trail line for the hashed event (serialized only once)."""

    def __init__(self, trail: AuditTrail) -> None:
        self._trail = weakref.proxy(trail)

    def __call__(self, logger: Any, method: str, ev: dict[str, Any]) -> str:
        staged = self._trail._staged
        if staged is None or staged[3] is not ev:
            raise _error(
                "the audit renderer got an event the chain hasher did not hash",
                path=str(self._trail.path),
            )
        return render_line(staged[2], staged[1])


def _error(message: str, *, path: str) -> Exception:
    from ._trail import AuditTrailError

    return AuditTrailError(message, path=path)
