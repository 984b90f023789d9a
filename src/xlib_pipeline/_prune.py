"""Retention: delete whole old runs from the store and reclaim the space.

``prune_runs(store, older_than=..., keep=..., pipeline=..., dry_run=..., force=...)`` (and
``xlib-pipeline runs prune``) deletes every row of the chosen runs (run, tasks with their
outputs, events, leases) in one transaction, then gives the pages back to the file system
(``PRAGMA incremental_vacuum``; a store made before auto-vacuum was on is ``VACUUM``-ed
once). Runs that are running right now (a live lease) are never pruned. A run that another
kept run was resumed from is refused unless ``force``.
"""

from __future__ import annotations

import re
import sqlite3
import time
from typing import Any

import attrs

from ._faults import describe_fault
from .exceptions import ConfigError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``12h``, ``30d``, ``2w`` (or a number of seconds) in seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", str(text))
    if m is None:
        raise ConfigError(
            f"--older-than: expected a duration like 30d, 12h, 15m or 90s, got {text!r}",
            key="older_than",
        )
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


@attrs.frozen(kw_only=True)
class PruneReport:
    """What a prune did (or, with ``dry_run``, would do)."""

    runs: tuple[str, ...]
    rows: int
    refused: tuple[str, ...] = ()
    reclaimed_bytes: int = 0
    dry_run: bool = False
    #: Blob files removed: no kept run references them any more.
    blobs: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON data."""
        return attrs.asdict(self)


def prune_runs(
    store: Any,
    *,
    older_than: float | None = None,
    keep: int | None = None,
    pipeline: str | None = None,
    dry_run: bool = False,
    force: bool = False,
) -> PruneReport:
    """Delete whole runs: started more than ``older_than`` seconds ago, and/or all but the
    newest ``keep`` (of ``pipeline`` when given). At least one of the two is required."""
    if older_than is None and keep is None:
        raise ConfigError("prune needs older_than (--older-than) or keep (--keep)", key="prune")
    if keep is not None and (isinstance(keep, bool) or keep < 0):
        raise ConfigError(f"keep must be a non-negative integer, got {keep!r}", key="keep")
    if older_than is not None and not older_than >= 0:
        raise ConfigError(f"older_than must be >= 0 seconds, got {older_than!r}", key="older_than")
    store.flush()
    sql = "SELECT run_id, started, status, resumed_from FROM runs"
    args: list[Any] = []
    if pipeline is not None:
        sql += " WHERE pipeline = ?"
        args.append(pipeline)
    with store._reading() as c:
        rows = c.execute(sql + " ORDER BY started DESC", args).fetchall()
        resumed = c.execute(
            "SELECT run_id, resumed_from FROM runs WHERE resumed_from IS NOT NULL"
        ).fetchall()
    chosen: list[str] = []
    cutoff = None if older_than is None else time.time() - older_than
    for n, (rid, started, status, _) in enumerate(rows):
        old = cutoff is not None and (started or 0) < cutoff
        beyond = keep is not None and n >= keep
        if (cutoff is None or old) and (keep is None or beyond):
            if status == "running":
                lease = store.lease(rid)
                if lease is not None and lease.live():
                    continue  # being executed right now
            chosen.append(rid)
    doomed = set(chosen)
    # A run that a kept run was resumed from is history that run still points to.
    needed = {parent for child, parent in resumed if child not in doomed}
    refused = tuple(r for r in chosen if r in needed)
    if refused and not force:
        chosen = [r for r in chosen if r not in refused]
    else:
        refused = ()
    count = _count(store, chosen)
    if dry_run or not chosen:
        return PruneReport(runs=tuple(chosen), rows=count, refused=refused, dry_run=dry_run)

    candidates: set[str] = set()
    referenced: set[str] = set()

    def delete(conn: sqlite3.Connection) -> int:
        before = _file_bytes(conn)
        conn.execute("BEGIN IMMEDIATE")
        try:
            for k in range(0, len(chosen), 500):
                part = chosen[k : k + 500]
                marks = ", ".join("?" for _ in part)
                candidates.update(
                    r[0]
                    for r in conn.execute(
                        f"SELECT name FROM blob_refs WHERE run_id IN ({marks})", part
                    )
                )
                for table in TABLES:
                    conn.execute(f"DELETE FROM {table} WHERE run_id IN ({marks})", part)
            referenced.update(r[0] for r in conn.execute("SELECT DISTINCT name FROM blob_refs"))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
            conn.executescript("PRAGMA incremental_vacuum;")  # (execute stops after a page)
        else:  # a store made before auto-vacuum: switch it on, once, with a full VACUUM
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return max(0, before - _file_bytes(conn))

    try:
        reclaimed = store._committer.exclusive(delete)
    except sqlite3.Error as exc:
        raise describe_fault(store.path, exc, store.busy_timeout_ms) from exc
    # Every unreferenced blob past the grace period goes, not only the pruned runs' (one
    # left by an earlier prune within its grace period, or by a run that died mid-write).
    candidates.update(store.blobs.names())
    removed, freed = remove_blobs(store.blobs, candidates, referenced)
    return PruneReport(
        runs=tuple(chosen),
        rows=count,
        refused=refused,
        reclaimed_bytes=reclaimed + freed,
        blobs=tuple(removed),
    )


#: Tables whose rows belong to one run (``run_id``), deleted together by a prune.
TABLES = ("tasks", "events", "leases", "blob_refs", "runs")


def remove_blobs(blobs: Any, candidates: set[str], referenced: set[str]) -> tuple[list[str], int]:
    """Remove the blob files of pruned runs that no kept run references; (names, bytes)."""
    sizes: dict[str, int] = {}
    for name in candidates - referenced:
        try:
            fh, size = blobs.fs.open(name)
            fh.close()
            sizes[name] = size
        except (OSError, FileNotFoundError):
            sizes[name] = 0
    removed = blobs.remove_unreferenced(candidates, referenced)
    return removed, sum(sizes.get(n, 0) for n in removed)


def _count(store: Any, runs: list[str]) -> int:
    total = 0
    with store._reading() as c:
        for k in range(0, len(runs), 500):
            part = runs[k : k + 500]
            marks = ", ".join("?" for _ in part)
            for table in TABLES:
                total += c.execute(
                    f"SELECT COUNT(*) FROM {table} WHERE run_id IN ({marks})", part
                ).fetchone()[0]
    return total


def _file_bytes(conn: sqlite3.Connection) -> int:
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    return int(pages) * int(size)
