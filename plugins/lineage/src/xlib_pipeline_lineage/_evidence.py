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
    lines = [ln for ln in data.splitlines() if needle in ln]
    if not lines:
        return None
    starts = sum(1 for ln in lines if b'"eventType":"START"' in ln)
    facts = {
        "namespace": namespace,
        "events": len(lines),
        "taskStarts": starts - 1,  # less the pipeline run's START
        "file": str(path),
    }
    return {"facts": facts, "files": {"lineage.jsonl": b"\n".join(lines) + b"\n"}}
