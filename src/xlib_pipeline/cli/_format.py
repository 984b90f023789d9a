"""Output helpers shared by the commands: ISO-8601 times, JSON, tables that keep ids whole."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

#: A run id (a UUID) is 36 characters; tables never fold or cut a column this wide.
ID_WIDTH = 36


def iso(ts: float | None) -> str | None:
    """``ts`` as ISO-8601 UTC with microseconds (``2024-05-01T12:00:00.123456+00:00``), the
    audit trail's format; ``None`` stays ``None``."""
    return (
        None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds")
    )


def iso_short(ts: float | None) -> str:
    """``ts`` as ISO-8601 UTC to the second for tables (``2024-05-01T12:00:00Z``)."""
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def secs(a: float | None, b: float | None) -> str:
    return "" if a is None or b is None else f"{b - a:.3f}"


def duration(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(b - a, 6)


def json_default(value: Any) -> Any:
    return repr(value)


def dumps(value: Any) -> str:
    """JSON for machines: non-JSON values become their ``repr``; keys that cannot be
    sorted (mixed types) keep their order."""
    try:
        return json.dumps(value, indent=2, default=json_default, sort_keys=True)
    except TypeError:
        return json.dumps(value, indent=2, default=json_default)


def console(min_width: int = 0) -> Any:
    """A rich console at least ``min_width`` columns wide, so no id column is ever folded
    (a narrow terminal soft-wraps the whole line instead, which copying undoes)."""
    from rich.console import Console

    con = Console()
    if con.width < min_width:
        con = Console(width=min_width)
    return con


def id_column(table: Any, header: str) -> None:
    """A table column holding run ids: never folded, never cut."""
    table.add_column(header, no_wrap=True, min_width=ID_WIDTH, overflow="ignore")
