"""The sealed payloads a stream keeps in a SQLite run store, for key rotation: its window
state (``streams.window_state``) and each batch's copy of its output
(``stream_batches.output``). They are listed and replaced like error texts
(:meth:`RunStore.iter_sealed_texts` / :meth:`RunStore.replace_sealed_text`), under the
reference the stream sealed them with (task ``stream:NAME``, the stream's lineage run)."""

from __future__ import annotations

import sqlite3
from typing import Any

from ._records import PayloadRef

#: (table, column) of every sealed stream payload.
STREAM_PAYLOADS = (("streams", "window_state"), ("stream_batches", "output"))

_WINDOWS = (
    "SELECT 'streams', rowid, 'window_state', COALESCE(lineage_run, name), pipeline, name, "
    "tenant, window_state, 'window_state' FROM streams WHERE typeof(window_state) = 'blob'"
)
_OUTPUTS = (
    " UNION ALL SELECT 'stream_batches', b.rowid, 'output', COALESCE(s.lineage_run, s.name), "
    "s.pipeline, s.name, s.tenant, b.output, 'stream_output' FROM stream_batches b JOIN "
    "streams s ON s.name = b.stream WHERE typeof(b.output) = 'blob'"
)


def sealed_stream_payloads(
    conn: sqlite3.Connection,
) -> list[tuple[tuple[str, int, str], PayloadRef, bytes]]:
    """Every stream payload stored as bytes: ((table, rowid, column), ref, blob). None
    when the store never ran a stream (its tables are made by the first one)."""
    have = {
        row[0]
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN "
            "('streams', 'stream_batches')"
        )
    }
    if "streams" not in have:
        return []
    rows: list[Any] = conn.execute(
        _WINDOWS + (_OUTPUTS if "stream_batches" in have else "")
    ).fetchall()
    return [
        (
            (table, rowid, column),
            PayloadRef(
                run_id=run, pipeline=pipeline, task=f"stream:{name}", tenant=tenant, kind=kind
            ),
            bytes(blob),
        )
        for table, rowid, column, run, pipeline, name, tenant, blob, kind in rows
    ]
