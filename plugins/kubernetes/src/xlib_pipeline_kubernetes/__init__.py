"""xlib-pipeline-kubernetes: Kubernetes manifests and the ``xlib-pipeline worker`` command.

``render_manifests(pipeline, namespace=..., image=...)`` returns the objects as dicts;
``manifests_yaml`` joins them into one YAML stream. See docs/plugins/kubernetes.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from xlib_pipeline import lazy_exports

if TYPE_CHECKING:  # pragma: no cover
    from ._manifests import (
        HEALTH_PATH,
        METRICS_PATH,
        render_manifests,
        slug,
        to_files,
        to_yaml,
    )
    from ._plugin import KubernetesPlugin, settings_from_config
    from ._settings import KubernetesSettings
    from ._worker import WorkerMetrics, WorkerState

_LAZY = {
    "HEALTH_PATH": "._manifests",
    "METRICS_PATH": "._manifests",
    "render_manifests": "._manifests",
    "slug": "._manifests",
    "to_files": "._manifests",
    "to_yaml": "._manifests",
    "KubernetesPlugin": "._plugin",
    "settings_from_config": "._plugin",
    "KubernetesSettings": "._settings",
    "WorkerMetrics": "._worker",
    "WorkerState": "._worker",
}


def manifests_yaml(pipeline: Any, **options: Any) -> str:
    """The manifests of :func:`render_manifests` as one multi-document YAML string."""
    from ._manifests import render_manifests, to_yaml

    return to_yaml(render_manifests(pipeline, **options))


__all__ = [
    "HEALTH_PATH",
    "METRICS_PATH",
    "KubernetesPlugin",
    "KubernetesSettings",
    "WorkerMetrics",
    "WorkerState",
    "manifests_yaml",
    "render_manifests",
    "settings_from_config",
    "slug",
    "to_files",
    "to_yaml",
]


# Entry points load this package on every PipelineManager(): its submodules (and their
# dependencies) are imported when a name is first used, not before.
if not TYPE_CHECKING:  # mypy sees the names above, and flags a misspelt one
    __getattr__, __dir__ = lazy_exports(__name__, _LAZY)
