"""The lineage plugin's section of a run's evidence (the ``collect_evidence`` hook).

Facts: event counts (task STARTs and terminal events, pipeline events) and the datasets
the run's tasks read and wrote. When a pack is built the run's events are read back from
the file transport's file into ``lineage.jsonl`` (other transports: facts only).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def _names(datasets: Iterable[Mapping[str, Any]]) -> list[str]:
    return [f"{d.get('namespace')}:{d.get('name')}" for d in datasets]


def from_state(state: Any) -> dict[str, Any]:
    """Facts from the run's in-memory state (after its emitter finished)."""
    ins: set[str] = set()
    outs: set[str] = set()
    for i, o in state.datasets.values():
        ins.update(_names(i))
        outs.update(_names(o))
    starts = len(state.started)
    ends = len(state.ended)
    return {
        "namespace": state.namespace,
        "events": starts + ends + 2,
        "taskStarts": starts,
        "taskTerminals": ends,
        "datasets": {"inputs": sorted(ins), "outputs": sorted(outs)},
    }


def from_file(path: Path, run_id: str, namespace: str) -> dict[str, Any] | None:
    """``{"facts", "files"}`` for ``run_id`` read back from the lineage file.

    A line belongs to the run when it holds the run's id (a UUID, as the pipeline run's
    ``runId`` or as every task event's parent). Facts here are counts only; the datasets
    are in the section signed at the end of the run.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    needle = json.dumps(run_id).encode()
    # The run's lines as (start, end) ranges, adjacent lines merged: one C-level find per
    # matching line and one copy per range, not a split of the whole file (a 10,000-task
    # run's events are ~40 MB, usually one contiguous range).
    ranges: list[list[int]] = []
    count = 0
    pos = data.find(needle)
    while pos != -1:
        start = data.rfind(b"\n", 0, pos) + 1
        end = data.find(b"\n", pos)
        if end == -1:
            end = len(data)
        count += 1
        if ranges and ranges[-1][1] + 1 >= start:
            ranges[-1][1] = end
        else:
            ranges.append([start, end])
        pos = data.find(needle, end)
    if not count:
        return None
    chunks = [data[a:b] for a, b in ranges]
    # eventType appears once per event (quotes inside strings are escaped)
    starts = sum(c.count(b'"eventType":"START"') for c in chunks)
    facts = {
        "namespace": namespace,
        "events": count,
        "taskStarts": starts - 1,  # less the pipeline run's START
        "file": str(path),
    }
    return {"facts": facts, "files": {"lineage.jsonl": b"\n".join(chunks) + b"\n"}}
