"""Alerting for xlib-pipeline (``xlib-pipeline-alerting``): rules over run, task and
compliance events; webhooks, Alertmanager and email; resolved notifications.
See docs/monitoring.md."""

from __future__ import annotations

from typing import TYPE_CHECKING

from xlib_pipeline import lazy_exports

if TYPE_CHECKING:  # pragma: no cover
    from ._channels import Alert, DeliveryError, alertmanager_payload, webhook_payload
    from ._plugin import AlertingPlugin, TaskWatcher
    from ._settings import (
        RULES,
        STREAM_RULES,
        TASK_RULES,
        AlertingSettings,
        Channel,
        Rule,
        settings,
    )
    from ._state import FiringState

_LAZY = {
    "Alert": "._channels",
    "DeliveryError": "._channels",
    "alertmanager_payload": "._channels",
    "webhook_payload": "._channels",
    "AlertingPlugin": "._plugin",
    "FiringState": "._state",
    "TaskWatcher": "._plugin",
    "RULES": "._settings",
    "TASK_RULES": "._settings",
    "STREAM_RULES": "._settings",
    "AlertingSettings": "._settings",
    "Channel": "._settings",
    "Rule": "._settings",
    "settings": "._settings",
}

__version__ = "0.1.0"

__all__ = [
    "RULES",
    "STREAM_RULES",
    "TASK_RULES",
    "Alert",
    "AlertingPlugin",
    "AlertingSettings",
    "Channel",
    "DeliveryError",
    "FiringState",
    "Rule",
    "TaskWatcher",
    "__version__",
    "alertmanager_payload",
    "settings",
    "webhook_payload",
]


# Entry points load this package on every PipelineManager(): its submodules (and their
# dependencies) are imported when a name is first used, not before.
if not TYPE_CHECKING:  # mypy sees the names above, and flags a misspelt one
    __getattr__, __dir__ = lazy_exports(__name__, _LAZY)
