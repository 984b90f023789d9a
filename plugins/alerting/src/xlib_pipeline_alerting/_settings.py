"""The ``alerting`` config section: channels, rules and delivery settings.

Secrets (webhook tokens, SMTP passwords, a webhook URL that embeds its token) are never
given in the config in clear: a channel names an environment variable (``*_env``) or a
file (``*_file``) holding each, read when the manager is built.
"""

from __future__ import annotations

import fnmatch
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import attrs

from xlib_pipeline import check_keys

RULES = (
    "run_failed",
    "task_failed",
    "sla_missed",
    "compliance_violation",
    "retries_exhausted",
    "stream_failed",
    "stream_lag",
)
#: Rules that need per-task hooks; without them the plugin adds nothing per task.
TASK_RULES = ("task_failed", "sla_missed", "retries_exhausted")
#: Rules on streams (the ``stream_event`` hook, registered only when one is configured).
STREAM_RULES = ("stream_failed", "stream_lag")
SEVERITIES = ("critical", "warning", "info")
CHANNEL_TYPES = ("webhook", "alertmanager", "email")

_SECRET_WORDS = ("password", "token", "secret", "api_key", "apikey")
_SECTION_KEYS = (
    "channels",
    "rules",
    "queue_size",
    "max_attempts",
    "backoff_seconds",
    "max_backoff_seconds",
    "timeout_seconds",
    "flush_timeout_seconds",
    "hold_seconds",
    "state_file",
    "labels",
    "resolve",
)
_CHANNEL_KEYS = {
    "webhook": ("type", "name", "url", "url_env", "url_file", "token_env", "token_file", "headers"),
    "alertmanager": (
        "type",
        "name",
        "url",
        "url_env",
        "url_file",
        "token_env",
        "token_file",
        "headers",
        "generator_url",
    ),
    "email": (
        "type",
        "name",
        "smtp_host",
        "smtp_port",
        "from",
        "to",
        "starttls",
        "ssl",
        "username",
        "password_env",
        "password_file",
        "subject_prefix",
        "ca_file",
    ),
}
_RULE_KEYS = (
    "on",
    "tasks",
    "task",
    "pipelines",
    "seconds",
    "severity",
    "kinds",
    "streams",
    "above",
)
EXAMPLE = (
    "{'channels': [{'type': 'webhook', 'url': 'https://hooks.example/abc'}], "
    "'rules': [{'on': 'run_failed'}]}"
)


@attrs.frozen
class Channel:
    """One destination. ``secret`` is the token (webhook/alertmanager) or password (email),
    read from the environment or a file; ``url`` may come from there too."""

    type: str
    name: str
    url: str | None = None
    secret: str | None = attrs.field(default=None, repr=False)
    headers: Mapping[str, str] = attrs.field(factory=dict)
    generator_url: str | None = None
    smtp_host: str | None = None
    smtp_port: int = 25
    sender: str | None = None
    to: tuple[str, ...] = ()
    starttls: bool = False
    ssl: bool = False
    username: str | None = None
    subject_prefix: str = "[xlib-pipeline]"
    ca_file: str | None = None


@attrs.frozen
class Rule:
    """When to alert. ``tasks``/``pipelines``/``streams`` are glob patterns (``None``:
    any); ``above`` is a ``stream_lag`` rule's threshold."""

    on: str
    tasks: tuple[str, ...] | None = None
    pipelines: tuple[str, ...] | None = None
    seconds: float | None = None
    severity: str = "critical"
    kinds: tuple[str, ...] | None = None
    streams: tuple[str, ...] | None = None
    above: float | None = None

    def matches_stream(self, pipeline: str, stream: str) -> bool:
        if self.streams is not None and not any(
            fnmatch.fnmatchcase(stream, g) for g in self.streams
        ):
            return False
        return self.matches(pipeline, None)

    def matches(self, pipeline: str, task: str | None) -> bool:
        if self.pipelines is not None and not any(
            fnmatch.fnmatchcase(pipeline, g) for g in self.pipelines
        ):
            return False
        if self.tasks is not None:
            if task is None:
                return False
            return any(fnmatch.fnmatchcase(task, g) for g in self.tasks)
        return True


@attrs.frozen
class AlertingSettings:
    channels: tuple[Channel, ...]
    rules: tuple[Rule, ...]
    queue_size: int = 1000
    max_attempts: int = 5
    backoff_seconds: float = 0.5
    max_backoff_seconds: float = 30.0
    timeout_seconds: float = 10.0
    flush_timeout_seconds: float = 10.0
    hold_seconds: float = 7 * 24 * 3600.0
    state_file: str | None = None
    labels: Mapping[str, str] = attrs.field(factory=dict)
    resolve: bool = True

    @property
    def stream_rules(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.on in STREAM_RULES)

    @property
    def task_rules(self) -> tuple[Rule, ...]:
        return tuple(
            r
            for r in self.rules
            if r.on in TASK_RULES and (r.on != "sla_missed" or r.tasks is not None)
        )


def _secret(where: str, spec: Mapping[str, Any], stem: str) -> str | None:
    env, file = spec.get(f"{stem}_env"), spec.get(f"{stem}_file")
    if env is not None and file is not None:
        raise ValueError(f"{where}: give {stem}_env or {stem}_file, not both")
    if env is not None:
        if not isinstance(env, str) or not env:
            raise ValueError(f"{where}: {stem}_env must name an environment variable")
        value = os.environ.get(env)
        if not value:
            raise ValueError(f"{where}: environment variable {env!r} ({stem}_env) is not set")
        return value
    if file is not None:
        path = Path(str(file)).expanduser()
        try:
            value = path.read_text().strip()
        except OSError as exc:
            raise ValueError(
                f"{where}: cannot read {stem}_file {str(path)!r}: {exc.strerror}"
            ) from None
        if not value:
            raise ValueError(f"{where}: {stem}_file {str(path)!r} is empty")
        return value
    return None


def _positive(name: str, value: Any, *, integer: bool = False) -> Any:
    ok = not isinstance(value, bool) and (
        isinstance(value, int) if integer else isinstance(value, int | float)
    )
    if not ok or value <= 0:
        kind = "a positive integer" if integer else "a positive number"
        raise ValueError(f"'alerting.{name}' must be {kind}, got {value!r}")
    return value if integer else float(value)


def _http_url(where: str, url: Any) -> str:
    if (
        not isinstance(url, str)
        or urlparse(url).scheme not in ("http", "https")
        or not urlparse(url).netloc
    ):
        raise ValueError(f"{where}: url must be an http(s) URL, got {url!r}")
    return url


def _channel(i: int, spec: Any) -> Channel:
    where = f"alerting.channels[{i}]"
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where} must be a mapping like {{'type': 'webhook', 'url': ...}}")
    kind = spec.get("type")
    if kind not in CHANNEL_TYPES:
        raise ValueError(f"{where}: 'type' must be one of {list(CHANNEL_TYPES)}, got {kind!r}")
    for k in spec:
        if any(w in str(k).lower() for w in _SECRET_WORDS) and not str(k).endswith(
            ("_env", "_file")
        ):
            raise ValueError(
                f"{where}: {k!r} would put a secret in the config in clear; give "
                f"{k}_env (an environment variable) or {k}_file (a file) instead"
            )
    try:
        d = check_keys(spec, _CHANNEL_KEYS[kind], example=f"{{'type': {kind!r}, ...}}")
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    name = str(d.get("name") or f"{kind}-{i}")
    if kind == "email":
        host = d.get("smtp_host")
        if not isinstance(host, str) or not host:
            raise ValueError(f"{where}: email needs 'smtp_host'")
        port = d.get("smtp_port", 465 if d.get("ssl") else 25)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"{where}: smtp_port must be a port number, got {port!r}")
        to = d.get("to")
        if isinstance(to, str):
            to = [to]
        if not to or not all(isinstance(t, str) and "@" in t for t in to):
            raise ValueError(f"{where}: 'to' must list email addresses, got {d.get('to')!r}")
        sender = d.get("from")
        if not isinstance(sender, str) or "@" not in sender:
            raise ValueError(f"{where}: 'from' must be an email address, got {sender!r}")
        password = _secret(where, d, "password")
        username = d.get("username")
        if password is not None and not username:
            raise ValueError(f"{where}: a password needs 'username'")
        if d.get("starttls") and d.get("ssl"):
            raise ValueError(f"{where}: give starttls or ssl, not both")
        ca_file = d.get("ca_file")
        if ca_file is not None and not Path(str(ca_file)).expanduser().is_file():
            raise ValueError(f"{where}: ca_file {str(ca_file)!r} does not exist")
        return Channel(
            type=kind,
            name=name,
            smtp_host=host,
            smtp_port=port,
            sender=sender,
            to=tuple(to),
            starttls=bool(d.get("starttls", False)),
            ssl=bool(d.get("ssl", False)),
            username=username,
            secret=password,
            subject_prefix=str(d.get("subject_prefix", "[xlib-pipeline]")),
            ca_file=str(Path(str(ca_file)).expanduser()) if ca_file is not None else None,
        )
    url_secret = _secret(where, d, "url")
    if url_secret is not None and d.get("url") is not None:
        raise ValueError(f"{where}: give url or url_env/url_file, not both")
    url = _http_url(where, url_secret if url_secret is not None else d.get("url"))
    headers = d.get("headers") or {}
    if not isinstance(headers, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise ValueError(f"{where}: headers must map names to strings")
    if any(k.lower() == "authorization" for k in headers):
        raise ValueError(
            f"{where}: an Authorization header is a secret; give token_env or token_file instead"
        )
    return Channel(
        type=kind,
        name=name,
        url=url.rstrip("/") if kind == "alertmanager" else url,
        secret=_secret(where, d, "token"),
        headers=dict(headers),
        generator_url=d.get("generator_url"),
    )


def _globs(where: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if (
        not isinstance(value, list | tuple)
        or not value
        or not all(isinstance(g, str) and g for g in value)
    ):
        raise ValueError(f"{where} must be a list of glob patterns, got {value!r}")
    return tuple(value)


def _rule(i: int, spec: Any) -> Rule:
    where = f"alerting.rules[{i}]"
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where} must be a mapping like {{'on': 'run_failed'}}")
    try:
        d = check_keys(spec, _RULE_KEYS, example="{'on': 'task_failed', 'tasks': ['load_*']}")
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    on = d.get("on")
    if on not in RULES:
        raise ValueError(f"{where}: 'on' must be one of {list(RULES)}, got {on!r}")
    if "task" in d and "tasks" in d:
        raise ValueError(f"{where}: give 'task' or 'tasks', not both")
    tasks = _globs(f"{where}.tasks", d.get("tasks", d.get("task")))
    if tasks is not None and on in ("run_failed", *STREAM_RULES):
        hint = "use 'task_failed'" if on == "run_failed" else "use 'streams' (stream names)"
        raise ValueError(f"{where}: {on!r} takes no tasks; {hint}")
    streams = _globs(f"{where}.streams", d.get("streams"))
    if streams is not None and on not in STREAM_RULES:
        raise ValueError(f"{where}: 'streams' applies to {' and '.join(STREAM_RULES)} only")
    above = d.get("above")
    if on == "stream_lag":
        if above is None:
            raise ValueError(
                f"{where}: stream_lag needs 'above' (the lag, in the source's unit, above "
                "which it fires), e.g. {'on': 'stream_lag', 'above': 10000}"
            )
        if (
            isinstance(above, bool)
            or not isinstance(above, int | float)
            or not math.isfinite(above)
            or above < 0
        ):
            raise ValueError(f"{where}: 'above' must be a finite number >= 0, got {above!r}")
        above = float(above)
    elif above is not None:
        raise ValueError(f"{where}: 'above' applies to stream_lag only")
    seconds = d.get("seconds")
    if on == "sla_missed":
        if seconds is None:
            raise ValueError(f"{where}: sla_missed needs 'seconds' (the deadline)")
        seconds = _positive(f"rules[{i}].seconds", seconds)
    elif seconds is not None:
        raise ValueError(f"{where}: 'seconds' applies to sla_missed only")
    severity = d.get("severity", "critical")
    if severity not in SEVERITIES:
        raise ValueError(f"{where}: severity must be one of {list(SEVERITIES)}, got {severity!r}")
    kinds = _globs(f"{where}.kinds", d.get("kinds"))
    if kinds is not None and on != "compliance_violation":
        raise ValueError(f"{where}: 'kinds' applies to compliance_violation only")
    return Rule(
        on=on,
        tasks=tasks,
        pipelines=_globs(f"{where}.pipelines", d.get("pipelines")),
        seconds=seconds,
        severity=severity,
        kinds=kinds,
        streams=streams,
        above=above,
    )


def settings(value: Any) -> AlertingSettings | None:
    """Convert config ``alerting``; raise ``ValueError`` naming the bad entry."""
    if value is None or value is False:
        return None
    d = check_keys(value, _SECTION_KEYS, example=EXAMPLE)
    channels = d.get("channels")
    if not isinstance(channels, list | tuple) or not channels:
        raise ValueError(f"'alerting.channels' must list at least one channel, e.g. {EXAMPLE}")
    chans = tuple(_channel(i, c) for i, c in enumerate(channels))
    names = [c.name for c in chans]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"'alerting.channels': duplicate channel name(s) {sorted(dup)}")
    rules_in = d.get("rules")
    if rules_in is None:
        rules: tuple[Rule, ...] = (Rule(on="run_failed"),)
    elif not isinstance(rules_in, list | tuple):
        raise ValueError(f"'alerting.rules' must be a list of rules, got {rules_in!r}")
    else:
        rules = tuple(_rule(i, r) for i, r in enumerate(rules_in))
    kw: dict[str, Any] = {}
    for key in ("queue_size", "max_attempts"):
        if key in d:
            kw[key] = _positive(key, d[key], integer=True)
    for key in (
        "backoff_seconds",
        "max_backoff_seconds",
        "timeout_seconds",
        "flush_timeout_seconds",
        "hold_seconds",
    ):
        if key in d:
            kw[key] = _positive(key, d[key])
    if "state_file" in d:
        if not isinstance(d["state_file"], str) or not d["state_file"]:
            raise ValueError(f"'alerting.state_file' must be a path, got {d['state_file']!r}")
        kw["state_file"] = d["state_file"]
    if "labels" in d:
        labels = d["labels"]
        if not isinstance(labels, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise ValueError(f"'alerting.labels' must map label names to strings, got {labels!r}")
        kw["labels"] = dict(labels)
    if "resolve" in d:
        if not isinstance(d["resolve"], bool):
            raise ValueError(f"'alerting.resolve' must be true or false, got {d['resolve']!r}")
        kw["resolve"] = d["resolve"]
    return AlertingSettings(channels=chans, rules=rules, **kw)
