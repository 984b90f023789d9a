"""Alerts and how each channel delivers one: generic JSON webhook (with a Slack-compatible
``text``), Alertmanager's v2 API (``POST /api/v2/alerts``) and email over SMTP."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import attrs

from ._settings import Channel

if TYPE_CHECKING:  # pragma: no cover
    from email.message import EmailMessage

# urllib.request, smtplib, ssl and email are imported when an alert is delivered: the plugin
# is loaded by every PipelineManager() through its entry point.


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@attrs.frozen
class Alert:
    """One notification. ``status`` is ``firing`` or ``resolved``; ``dedup_key`` is
    ``pipeline/task/rule`` (``-`` for no task), for a stream's alert
    ``pipeline/stream:NAME/rule`` (``stream_lag``: ``.../stream_lag>THRESHOLD``):
    Alertmanager groups and resolves by it. ``batch`` is the stream batch concerned,
    ``threshold`` a lag rule's. ``message`` has been through the ``redact`` hook (no PII)."""

    rule: str
    pipeline: str
    status: str = "firing"
    run_id: str | None = None
    task: str | None = None
    tenant: str | None = None
    error_class: str | None = None
    message: str = ""
    severity: str = "critical"
    time: float = 0.0
    labels: Any = attrs.field(factory=dict)
    stream: str | None = None
    batch: int | None = None
    threshold: float | None = None

    @property
    def dedup_key(self) -> str:
        if self.stream is not None:
            above = "" if self.threshold is None else f">{self.threshold:g}"
            return f"{self.pipeline}/stream:{self.stream}/{self.rule}{above}"
        return f"{self.pipeline}/{self.task or '-'}/{self.rule}"

    @property
    def summary(self) -> str:
        head = "RESOLVED" if self.status == "resolved" else self.severity.upper()
        where = f"{self.pipeline}/{self.task}" if self.task else self.pipeline
        if self.stream is not None:
            where = f"{self.pipeline} stream {self.stream}"
        text = f"[{head}] {self.rule} {where}"
        if self.status == "resolved":
            if self.stream is not None:
                return f"{text}: {self.message}"
            return f"{text}: the next run succeeded (run {self.run_id})"
        if self.error_class:
            text += f": {self.error_class}"
        if self.message:
            text += f": {self.message}"
        return text

    def as_dict(self) -> dict[str, Any]:
        """The alert's fields; ``stream``, ``batch`` and ``threshold`` on a stream's alert
        only (a run's alert is sent as before)."""
        out: dict[str, Any] = {
            "status": self.status,
            "rule": self.rule,
            "severity": self.severity,
            "pipeline": self.pipeline,
            "task": self.task,
            "run_id": self.run_id,
            "tenant": self.tenant,
            "error_class": self.error_class,
            "message": self.message,
            "time": rfc3339(self.time),
            "dedup_key": self.dedup_key,
            "labels": dict(self.labels),
        }
        if self.stream is not None:
            out.update(stream=self.stream, batch=self.batch, threshold=self.threshold)
        return out


class DeliveryError(Exception):
    """A channel could not deliver (retried with backoff by the sender)."""


def _post(url: str, body: Any, ch: Channel, timeout: float) -> None:
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **ch.headers}
    if ch.secret:
        headers["Authorization"] = f"Bearer {ch.secret}"
    req = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
    except urllib.error.HTTPError as exc:
        raise DeliveryError(f"HTTP {exc.code} {exc.reason} from {_safe(url)}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DeliveryError(f"cannot reach {_safe(url)}: {reason}") from None


def _safe(url: str) -> str:
    """The URL without its path and query (a webhook URL may embed its token)."""
    from urllib.parse import urlparse

    p = urlparse(url)
    return f"{p.scheme}://{p.netloc}"


def webhook_payload(alert: Alert) -> dict[str, Any]:
    return {"text": alert.summary, **alert.as_dict()}


def alertmanager_payload(alert: Alert, ch: Channel, hold_seconds: float) -> list[dict[str, Any]]:
    """A ``postableAlerts`` body: labels identify the alert (stable across firing and
    resolved: no run id), annotations carry the details."""
    labels = {
        "alertname": f"XlibPipeline_{alert.rule}",
        "pipeline": alert.pipeline,
        "rule": alert.rule,
        "severity": alert.severity,
        "dedup_key": alert.dedup_key,
        **{str(k): str(v) for k, v in dict(alert.labels).items()},
    }
    if alert.task:
        labels["task"] = alert.task
    if alert.stream is not None:
        labels["stream"] = alert.stream
    annotations = {"summary": alert.summary}
    for key in ("run_id", "tenant", "error_class", "message", "batch", "threshold"):
        value = getattr(alert, key)
        if value is not None and value != "":
            annotations[key] = f"{value:g}" if isinstance(value, float) else str(value)
    item: dict[str, Any] = {
        "labels": labels,
        "annotations": annotations,
        "startsAt": rfc3339(alert.time),
        # Alertmanager resolves an alert nobody re-sends after resolve_timeout; a pipeline
        # fires once, so the alert holds until the resolved notification (or hold_seconds).
        "endsAt": rfc3339(alert.time if alert.status == "resolved" else alert.time + hold_seconds),
    }
    if ch.generator_url:
        item["generatorURL"] = ch.generator_url
    return [item]


def email_message(alert: Alert, ch: Channel) -> EmailMessage:
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["Subject"] = f"{ch.subject_prefix} {alert.summary}"[:200]
    msg["From"] = ch.sender or ""
    msg["To"] = ", ".join(ch.to)
    lines = [alert.summary, ""]
    for k, v in alert.as_dict().items():
        if v not in (None, "", {}):
            lines.append(f"{k}: {v}")
    msg.set_content("\n".join(lines) + "\n")
    return msg


def deliver(ch: Channel, alert: Alert, *, timeout: float, hold_seconds: float) -> None:
    """Send ``alert`` on ``ch`` once; raise :class:`DeliveryError` on failure."""
    if ch.type == "webhook":
        assert ch.url is not None
        _post(ch.url, webhook_payload(alert), ch, timeout)
    elif ch.type == "alertmanager":
        assert ch.url is not None
        _post(ch.url + "/api/v2/alerts", alertmanager_payload(alert, ch, hold_seconds), ch, timeout)
    else:
        _send_mail(ch, email_message(alert, ch), timeout)


def _send_mail(ch: Channel, msg: EmailMessage, timeout: float) -> None:
    import smtplib
    import ssl

    assert ch.smtp_host is not None
    # Certificates are always verified: the system's CAs, or ca_file for a private CA.
    context = ssl.create_default_context(cafile=ch.ca_file)
    try:
        if ch.ssl:
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                ch.smtp_host, ch.smtp_port, timeout=timeout, context=context
            )
        else:
            smtp = smtplib.SMTP(ch.smtp_host, ch.smtp_port, timeout=timeout)
        with smtp:
            if ch.starttls:
                smtp.starttls(context=context)
            if ch.username and ch.secret:
                smtp.login(ch.username, ch.secret)
            smtp.send_message(msg)
    except (smtplib.SMTPException, OSError) as exc:
        raise DeliveryError(
            f"SMTP {ch.smtp_host}:{ch.smtp_port}: {type(exc).__name__}: {exc}"
        ) from None
