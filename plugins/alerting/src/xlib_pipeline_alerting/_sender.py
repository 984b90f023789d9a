"""Background delivery: one thread and one bounded queue per channel, retries with
exponential backoff. Delivery never blocks or fails a run: a full queue drops the alert
(logged and counted), an alert still undeliverable after ``max_attempts`` is logged and
counted."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from ._channels import Alert, DeliveryError, deliver
from ._settings import AlertingSettings, Channel

_log = logging.getLogger("xlib_pipeline.alerting")


class ChannelSender:
    """Delivers the alerts queued for one channel, in order, from its own thread."""

    def __init__(
        self,
        channel: Channel,
        settings: AlertingSettings,
        *,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.channel = channel
        self.settings = settings
        self.queue: queue.Queue[Alert | None] = queue.Queue(maxsize=settings.queue_size)
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._stop = threading.Event()
        self._sleep = sleep or self._stop.wait
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._loop, name=f"xlib-alerts-{channel.name}", daemon=True
        )
        self._thread.start()

    def submit(self, alert: Alert) -> bool:
        """Queue ``alert``; ``False`` (logged, counted) when the queue is full."""
        try:
            self.queue.put_nowait(alert)
            return True
        except queue.Full:
            with self._lock:
                self.dropped += 1
            _log.error(
                "alerting: queue of channel %r is full (%d); alert %s dropped",
                self.channel.name,
                self.settings.queue_size,
                alert.dedup_key,
            )
            return False

    def send_now(self, alert: Alert) -> None:
        """Deliver synchronously with the same retries (``alerts test``); raise on failure."""
        self._attempts(alert, raise_last=True)

    def _attempts(self, alert: Alert, *, raise_last: bool = False) -> bool:
        s = self.settings
        delay = s.backoff_seconds
        for attempt in range(1, s.max_attempts + 1):
            try:
                deliver(self.channel, alert, timeout=s.timeout_seconds, hold_seconds=s.hold_seconds)
            except DeliveryError as exc:
                if self._stop.is_set() and not raise_last:
                    return False  # closed meanwhile: close() counted and logged it
                if attempt == s.max_attempts:
                    with self._lock:
                        self.failed += 1
                    _log.error(
                        "alerting: alert %s (%s) undeliverable on channel %r after %d "
                        "attempt(s): %s",
                        alert.dedup_key,
                        alert.status,
                        self.channel.name,
                        attempt,
                        exc,
                    )
                    if raise_last:
                        raise
                    return False
                _log.warning(
                    "alerting: channel %r attempt %d failed (%s); retrying in %.1fs",
                    self.channel.name,
                    attempt,
                    exc,
                    delay,
                )
                self._sleep(delay)
                delay = min(delay * 2, s.max_backoff_seconds)
                continue
            with self._lock:
                self.sent += 1
            return True
        return False  # pragma: no cover - the loop always returns

    def _loop(self) -> None:
        while True:
            alert = self.queue.get()
            try:
                if alert is None:
                    return
                if self._stop.is_set():
                    continue  # left when the manager closed: counted and logged there
                self._attempts(alert)
            except Exception:  # never let the sender thread die
                _log.exception("alerting: channel %r failed unexpectedly", self.channel.name)
            finally:
                self.queue.task_done()

    def close(self, timeout: float) -> None:
        """Deliver what is queued within ``timeout`` seconds, then stop."""
        deadline = time.monotonic() + timeout
        while self.queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        left = self.queue.unfinished_tasks
        if left:
            _log.error(
                "alerting: %d alert(s) for channel %r not delivered when the manager closed",
                left,
                self.channel.name,
            )
            with self._lock:
                self.failed += left
        self._stop.set()  # cut retry back-offs short
        try:
            self.queue.put_nowait(None)
        except queue.Full:
            pass
        self._thread.join(timeout=max(0.0, deadline - time.monotonic()) + 1.0)
