"""Fewer statements for the stream batches committed in one transaction.

A stream's batches committed together (see ``GROUP`` in ``streams/_pipelined.py``) were
three statements each beside their log rows: their run's row, their ``stream_batches`` row
and the ``streams`` row's update. Here the runs rows of one column list become one
multi-row INSERT, so do the ``stream_batches`` rows, and a stream's updates fold into one
(the last batch's position, offsets, lag, window state and time; the counters summed):
the tables end up the same. Each statement cost the writer a GIL release and re-take (a
hand-off with the stream's thread, 10-30 us there) and SQLite's statement overhead.
"""

from __future__ import annotations

from itertools import chain
from typing import Any

Statement = tuple[str, tuple[Any, ...]]

#: A stream batch's row (``CheckpointStore``): compared by identity.
BATCH_INSERT = (
    "INSERT OR REPLACE INTO stream_batches (stream, seq, run_id, start_offset, "
    "end_offset, records, outputs, late, dead, position, output, committed) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
#: A stream's row advanced past a batch: compared by identity. Parameters: seq, offset,
#: position, then the increments of records, outputs, late, dead, then lag,
#: window_state, updated and the stream's name.
ADVANCE = (
    "UPDATE streams SET seq=?, offset=?, position=?, records=records+?, "
    "outputs=outputs+?, late=late+?, dead=dead+?, lag=?, window_state=?, "
    "updated=? WHERE name=?"
)
_MAX_ROWS = 256  # rows per multi-row INSERT (x at most 20 columns: under 32766 parameters)
_MULTI: dict[tuple[str, int], str] = {}


def merged(
    items: list[Statement],
    skip: set[int] | None,
    final: dict[int, tuple[Any, ...]] | None,
    run_inserts: Any,
) -> list[Statement] | None:
    """The statements of ``items`` (but its log rows, the ``skip`` positions and with the
    ``final`` parameters) with the runs and ``stream_batches`` INSERTs merged and the
    ``streams`` updates folded, or ``None`` when that would not make fewer statements or
    another statement names one of those tables (then the order is kept as it is)."""
    inserts: dict[str, list[tuple[Any, ...]]] = {}
    advances: dict[Any, tuple[Any, ...]] = {}
    out: list[Statement] = []
    n = 0  # the statements before merging
    for i, (sql, params) in enumerate(items):
        if sql == "LOG" or (skip is not None and i in skip):
            continue
        n += 1
        if final is not None and i in final:
            params = final[i]
        if sql is BATCH_INSERT or sql in run_inserts:
            rows = inserts.get(sql)
            if rows is None:
                inserts[sql] = [params]
            else:
                rows.append(params)
        elif sql is ADVANCE:
            name = params[10]
            prev = advances.get(name)
            advances[name] = params if prev is None else _after(prev, params)
        elif "runs" in sql or "stream" in sql:
            return None  # another statement on these tables: keep the order
        else:
            out.append((sql, params))
    if len(out) + len(advances) + sum(map(_chunks, inserts.values())) >= n:
        return None
    for sql, rows in inserts.items():
        for k in range(0, len(rows), _MAX_ROWS):
            part = rows[k : k + _MAX_ROWS]
            if len(part) == 1:
                out.append((sql, part[0]))
            else:
                out.append((_multi(sql, len(part)), tuple(chain.from_iterable(part))))
    out.extend((ADVANCE, params) for params in advances.values())
    return out


def _after(prev: tuple[Any, ...], nxt: tuple[Any, ...]) -> tuple[Any, ...]:
    """Two successive ``ADVANCE`` parameter tuples of one stream as one."""
    return (
        *nxt[:3],
        prev[3] + nxt[3],
        prev[4] + nxt[4],
        prev[5] + nxt[5],
        prev[6] + nxt[6],
        *nxt[7:],
    )


def _chunks(rows: list[Any]) -> int:
    return -(-len(rows) // _MAX_ROWS)


def _multi(sql: str, n: int) -> str:
    """``sql`` (an ``INSERT ... VALUES (?, ...)``) inserting ``n`` rows."""
    key = (sql, n)
    text = _MULTI.get(key)
    if text is None:
        if len(_MULTI) >= 256:
            _MULTI.clear()
        head, sep, marks = sql.rpartition(" VALUES ")
        text = _MULTI[key] = head + sep + ", ".join([marks] * n)
    return text
