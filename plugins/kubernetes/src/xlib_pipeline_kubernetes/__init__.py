"""xlib-pipeline-kubernetes: Kubernetes manifests and the ``xlib-pipeline worker`` command.

``render_manifests(pipeline, namespace=..., image=...)`` returns the objects as dicts;
``manifests_yaml`` joins them into one YAML stream. See docs/plugins/kubernetes.md.
"""

from __future__ import annotations

from typing import Any

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


def manifests_yaml(pipeline: Any, **options: Any) -> str:
    """The manifests of :func:`render_manifests` as one multi-document YAML string."""
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
