"""Firing alerts kept in a JSON file, for the resolved notifications across processes."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ._channels import Alert


class FiringState:
    """Firing alerts by pipeline, kept in a JSON file so that the next run, even in a new
    process (a nightly cron job), can send the resolved notifications. A stream's alerts
    (their ``stream`` set) are kept under its pipeline too, but resolved by the stream
    (:meth:`take` with ``stream``), not by the pipeline's next successful run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def _update(self, fn: Callable[[dict[str, Any]], Any]) -> Any:
        import fcntl

        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = os.open(str(self.path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    data = json.loads(self.path.read_text())
                    if not isinstance(data, dict):
                        data = {}
                except (OSError, ValueError):
                    data = {}
                out = fn(data)
                tmp = self.path.with_suffix(".tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as f:
                    json.dump(data, f, sort_keys=True)
                os.replace(tmp, self.path)
                return out
            finally:
                os.close(lock)

    def firing(self, alert: Alert) -> None:
        def add(data: dict[str, Any]) -> None:
            data.setdefault(alert.pipeline, {})[alert.dedup_key] = alert.as_dict()

        self._update(add)

    def take(
        self, pipeline: str, stream: str | None = None, keys: Collection[str] | None = None
    ) -> list[dict[str, Any]]:
        """Remove and return the firing alerts of ``pipeline``'s runs (``stream=None``) or
        of its stream ``stream``; with ``keys``, only those dedup keys."""

        def pop(data: dict[str, Any]) -> list[dict[str, Any]]:
            alerts = data.get(pipeline)
            if not isinstance(alerts, dict):
                return []
            out = [
                alerts.pop(k)
                for k, a in list(alerts.items())
                if isinstance(a, dict) and a.get("stream") == stream and (keys is None or k in keys)
            ]
            if not alerts:
                data.pop(pipeline, None)
            return out

        out: list[dict[str, Any]] = self._update(pop)
        return out

    def peek(self, pipeline: str, stream: str) -> set[str]:
        """The dedup keys of stream ``stream``'s firing alerts (the file is left as is)."""
        alerts = self._update(lambda data: dict(data.get(pipeline) or {}))
        return {k for k, a in alerts.items() if isinstance(a, dict) and a.get("stream") == stream}
