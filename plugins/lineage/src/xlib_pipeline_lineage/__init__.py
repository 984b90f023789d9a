"""OpenLineage run events for xlib-pipeline: pipeline and task runs, parents, datasets.

Enable with config ``{"data_lineage": True}`` or ``{"lineage": {...}}``; see
docs/plugins/lineage.md.
"""

from __future__ import annotations

__version__ = "0.1.0"

from ._events import (
    CLASSIFICATION_FACET,
    CLASSIFICATION_FACET_SCHEMA,
    RUN_FACET,
    RUN_FACET_SCHEMA,
    parse_dataset,
    parse_datasets,
    task_run_id,
)
from ._graph import read_events, run_events, to_mermaid
from ._plugin import LINEAGE_RUN, LineagePlugin

__all__ = [
    "CLASSIFICATION_FACET",
    "CLASSIFICATION_FACET_SCHEMA",
    "LINEAGE_RUN",
    "RUN_FACET",
    "RUN_FACET_SCHEMA",
    "LineagePlugin",
    "__version__",
    "parse_dataset",
    "parse_datasets",
    "read_events",
    "run_events",
    "task_run_id",
    "to_mermaid",
]
