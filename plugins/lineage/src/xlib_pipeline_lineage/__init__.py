"""OpenLineage run events for xlib-pipeline: pipeline and task runs, parents, datasets.

Enable with config ``{"data_lineage": True}`` or ``{"lineage": {...}}``; see
docs/plugins/lineage.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xlib_pipeline import lazy_exports

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
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
    from ._plugin import LineagePlugin
    from ._run_state import LINEAGE_RUN

_LAZY = {
    "CLASSIFICATION_FACET": "._events",
    "CLASSIFICATION_FACET_SCHEMA": "._events",
    "RUN_FACET": "._events",
    "RUN_FACET_SCHEMA": "._events",
    "parse_dataset": "._events",
    "parse_datasets": "._events",
    "task_run_id": "._events",
    "read_events": "._graph",
    "run_events": "._graph",
    "to_mermaid": "._graph",
    "LINEAGE_RUN": "._run_state",
    "LineagePlugin": "._plugin",
}

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


# Entry points load this package on every PipelineManager(): its submodules (and their
# dependencies) are imported when a name is first used, not before.
if not TYPE_CHECKING:  # mypy sees the names above, and flags a misspelt one
    __getattr__, __dir__ = lazy_exports(__name__, _LAZY)
