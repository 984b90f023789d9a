"""Alerting for xlib-pipeline (``xlib-pipeline-alerting``): rules over run, task and
compliance events; webhooks, Alertmanager and email; resolved notifications.
See docs/monitoring.md."""

from __future__ import annotations

from ._channels import Alert, DeliveryError, alertmanager_payload, webhook_payload
from ._plugin import AlertingPlugin, FiringState, TaskWatcher
from ._settings import RULES, TASK_RULES, AlertingSettings, Channel, Rule, settings

__version__ = "0.1.0"

__all__ = [
    "RULES",
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
