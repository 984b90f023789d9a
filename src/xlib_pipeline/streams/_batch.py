"""What one micro-batch produced, and compact offsets for records and params."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:  # pragma: no cover
    from .._results import PipelineResult


@attrs.frozen
class BatchOutcome:
    """A batch's run, and when its records were quarantined one by one, their outputs,
    the dead-letter entries and the other runs."""

    result: PipelineResult
    outputs: list[Any] | None
    dead: list[dict[str, Any]]
    #: The batch's other runs (quarantined: the batch's own, then each record's but the
    #: last), committed with its checkpoint like ``result``'s.
    runs: tuple[str, ...] = ()

    @property
    def run_ids(self) -> tuple[str, ...]:
        """Every run of the batch, ``result``'s last."""
        return (*self.runs, self.result.run_id)


def brief_offset(offset: Any) -> Any:
    """An offset short enough for audit records and run params (a broker batch's list of
    entry ids becomes its first, last and count)."""
    if isinstance(offset, Mapping) and isinstance(offset.get("ids"), list):
        ids = offset["ids"]
        return {"first": ids[0] if ids else None, "last": offset.get("last"), "count": len(ids)}
    return offset


def records_of(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list):
        return value
    if isinstance(value, tuple):
        return list(value)
    return [value]
