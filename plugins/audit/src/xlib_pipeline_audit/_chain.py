"""The structlog processors that chain a record: ``seq``, ``prev`` and ``hash``, then the line.

Both run under the trail's lock, after every user processor.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from ._canonical import CHAIN_VERSION, canonical, hash_bytes, render_line

if TYPE_CHECKING:
    from ._trail import AuditTrail


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
