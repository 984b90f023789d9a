"""The audit plugin's settings: the ``audit`` config section, flags, the HMAC key and the
small helpers its records share (actor, error class, timestamps)."""

from __future__ import annotations

import difflib
import getpass
import importlib
import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

from xlib_pipeline import ConfigError

from ._keys import default_key

#: ``audit.fsync`` values (the trail writer checks the same tuple).
FSYNC_POLICIES = ("always", "batch", "never")

SECTION_KEYS = (
    "path",
    "fsync",
    "batch_size",
    "batch_interval_ms",
    "write_through",
    "hmac_key_env",
    "hmac_key_file",
    "keyed",
    "actor",
    "digests",
    "multiprocess",
    "max_bytes",
    "rotate",
    "processors",
    "destinations",
    "checkpoint_key_file",
    "checkpoints_dir",
    "checkpoint_every",
)
#: Flags that turn the trail on (``compliance_mode``, owned by the core, implies
#: ``audit_logging``).
FLAG_KEYS = ("audit_logging", "audit_everything")
DEFAULT_FILE = "audit.jsonl"


@attrs.frozen(kw_only=True)
class AuditSettings:
    """The validated ``audit`` section (``audit: true`` means every default)."""

    enabled: bool = True
    path: str | None = None
    fsync: str = "batch"
    batch_size: int = 256
    batch_interval_ms: int = 200
    hmac_key_env: str | None = None
    hmac_key_file: str | None = None
    #: Key the trail by default (a 0600 key file outside the data folder) when neither
    #: hmac_key_env nor hmac_key_file names one; ``False`` writes a plain SHA-256 chain.
    keyed: bool = True
    actor: str | None = None
    digests: bool = False
    multiprocess: bool = False
    #: Rotation: a new segment once the active file holds this many bytes (None: never).
    max_bytes: int | None = None
    #: Rotation by time: ``never``, ``hourly`` or ``daily`` (UTC).
    rotate: str = "never"
    write_through: bool = False
    processors: tuple[Any, ...] = ()
    destinations: tuple[Any, ...] = ()
    #: An Ed25519 private key (PEM): sign a checkpoint at every run end and every
    #: ``checkpoint_every`` records into ``checkpoints_dir`` (default ``<trail>.checkpoints``).
    checkpoint_key_file: str | None = None
    checkpoints_dir: str | None = None
    checkpoint_every: int = 1000


def _positive_int(name: str, value: Any, *, zero: bool = False) -> int:
    low = 0 if zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 10**9:
        what = "a non-negative" if zero else "a positive"
        raise ValueError(f"audit.{name} must be {what} integer (at most 1e9), got {value!r}")
    return value


def flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def _opt_str(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str | os.PathLike) or not os.fspath(value):
        raise ValueError(f"audit.{name} must be a non-empty string, got {value!r}")
    return os.fspath(value)


def _callables(name: str, value: Any) -> tuple[Any, ...]:
    if value is None:
        return ()
    if callable(value) or isinstance(value, str):
        value = [value]
    out = []
    for item in value:
        if not (callable(item) or (isinstance(item, str) and ":" in item)):
            raise ValueError(
                f"audit.{name} entries must be callables or 'package.module:attribute' "
                f"strings, got {item!r}"
            )
        out.append(item)
    return tuple(out)


def convert_section(value: Any) -> AuditSettings:
    """Validate the ``audit`` config key: ``true``/``false`` or a mapping of settings."""
    if isinstance(value, bool):
        return AuditSettings(enabled=value)
    if not isinstance(value, Mapping):
        raise ValueError(f"expected true, false or a mapping of audit settings, got {value!r}")
    unknown = [k for k in value if k not in SECTION_KEYS]
    if unknown:
        k = str(unknown[0])
        close = difflib.get_close_matches(k, SECTION_KEYS, n=1)
        hint = f"; did you mean 'audit.{close[0]}'?" if close else ""
        raise ValueError(f"unknown key 'audit.{k}'{hint} (known: {', '.join(SECTION_KEYS)})")
    fsync = value.get("fsync", "batch")
    if fsync not in FSYNC_POLICIES:
        close = difflib.get_close_matches(str(fsync), FSYNC_POLICIES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"audit.fsync must be one of {list(FSYNC_POLICIES)}, got {fsync!r}{hint}")
    return AuditSettings(
        enabled=True,
        path=_opt_str("path", value.get("path")),
        fsync=fsync,
        batch_size=_positive_int("batch_size", value.get("batch_size", 256)),
        batch_interval_ms=_positive_int(
            "batch_interval_ms", value.get("batch_interval_ms", 200), zero=True
        ),
        hmac_key_env=_opt_str("hmac_key_env", value.get("hmac_key_env")),
        hmac_key_file=_opt_str("hmac_key_file", value.get("hmac_key_file")),
        actor=_opt_str("actor", value.get("actor")),
        digests=flag("audit.digests", value.get("digests", False)),
        multiprocess=flag("audit.multiprocess", value.get("multiprocess", False)),
        write_through=flag("audit.write_through", value.get("write_through", False)),
        max_bytes=_max_bytes(value.get("max_bytes")),
        rotate=_rotate(value.get("rotate", "never")),
        processors=_callables("processors", value.get("processors")),
        destinations=_callables("destinations", value.get("destinations")),
        keyed=_keyed(value),
        checkpoint_key_file=_opt_str("checkpoint_key_file", value.get("checkpoint_key_file")),
        checkpoints_dir=_opt_str("checkpoints_dir", value.get("checkpoints_dir")),
        checkpoint_every=_positive_int("checkpoint_every", value.get("checkpoint_every", 1000)),
    )


def _max_bytes(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 4096 <= value <= 1 << 50:
        raise ValueError(
            f"audit.max_bytes must be an integer number of bytes of at least 4096 (a segment "
            f"holds at least a few records), got {value!r}"
        )
    return value


def _rotate(value: Any) -> str:
    from ._segments import ROTATE_POLICIES

    if value not in ROTATE_POLICIES:
        close = difflib.get_close_matches(str(value), ROTATE_POLICIES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"audit.rotate must be one of {list(ROTATE_POLICIES)}, got {value!r}{hint}"
        )
    return str(value)


def _keyed(value: Mapping[str, Any]) -> bool:
    keyed = flag("audit.keyed", value.get("keyed", True))
    if not keyed and (value.get("hmac_key_env") or value.get("hmac_key_file")):
        raise ValueError("audit.keyed is false but an HMAC key is configured; drop one of them")
    return keyed


def convert_task_option(value: Any) -> dict[str, Any]:
    """Validate the ``audit=`` task option: ``True`` or a mapping of operation/tenant_id/digests."""
    if value is True:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(
            f"expected True or a mapping like {{'operation': 'data_storage'}}, got {value!r}"
        )
    allowed = ("operation", "tenant_id", "digests")
    unknown = [k for k in value if k not in allowed]
    if unknown:
        raise ValueError(f"unknown audit option(s) {unknown}; expected some of {list(allowed)}")
    for k in ("operation", "tenant_id"):
        v = value.get(k)
        if v is not None and (not isinstance(v, str) or not v):
            raise ValueError(f"audit {k} must be a non-empty string, got {v!r}")
    if "digests" in value and not isinstance(value["digests"], bool):
        raise ValueError(f"audit digests must be true or false, got {value['digests']!r}")
    return dict(value)


def resolve_callable(item: Any) -> Any:
    if callable(item):
        return item
    module, _, attr = str(item).partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"audit: cannot import {item!r}: {exc}", key="audit") from exc
    if not callable(obj):
        raise ConfigError(f"audit: {item!r} is not callable", key="audit")
    return obj


def load_key(settings: AuditSettings) -> bytes | None:
    """The HMAC key named by ``hmac_key_env`` or ``hmac_key_file``; else, unless
    ``keyed: false``, the default key file (created 0600 outside the data folder)."""
    if settings.hmac_key_env and settings.hmac_key_file:
        raise ConfigError("audit: give either hmac_key_env or hmac_key_file, not both", key="audit")
    if settings.hmac_key_env:
        value = os.environ.get(settings.hmac_key_env)
        if not value:
            raise ConfigError(
                f"audit.hmac_key_env: environment variable {settings.hmac_key_env!r} is not "
                "set or empty (it must hold the trail's HMAC key)",
                key="audit.hmac_key_env",
            )
        return value.encode()
    if settings.hmac_key_file:
        try:
            data = Path(settings.hmac_key_file).expanduser().read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise ConfigError(
                f"audit.hmac_key_file: cannot read {settings.hmac_key_file!r}: {exc.strerror}",
                key="audit.hmac_key_file",
            ) from exc
        if not data:
            raise ConfigError(
                f"audit.hmac_key_file: {settings.hmac_key_file!r} is empty",
                key="audit.hmac_key_file",
            )
        return data
    if settings.keyed:
        return default_key(create=True)
    return None


def os_user() -> str:
    """The current OS user name (the uid when there is no name)."""
    try:
        return getpass.getuser()
    except Exception:
        return f"uid:{os.getuid()}" if hasattr(os, "getuid") else "unknown"


def error_class(exc: BaseException | None) -> str | None:
    """``ValueError`` for builtins, ``package.module.Class`` otherwise (never the message)."""
    if exc is None:
        return None
    cls = type(exc)
    mod = cls.__module__
    return cls.__qualname__ if mod == "builtins" else f"{mod}.{cls.__qualname__}"


#: The second :func:`now_iso` last rendered: its start (ns since the epoch) and its text
#: with a ``%06d`` for the microseconds.
_second: tuple[int, str] = (-(10**20), "")
_time_ns = time.time_ns


def now_iso() -> str:
    """The current UTC time, ISO-8601 with microseconds (``2024-05-01T12:00:00.123456+00:00``).

    Integer nanoseconds and a per-second format: nine times per stream batch on the audit
    path."""
    global _second
    ns = _time_ns()
    cached = _second
    into = ns - cached[0]
    if not 0 <= into < 1_000_000_000:
        sec = ns // 1_000_000_000
        text = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        cached = _second = (sec * 1_000_000_000, text + "%06d+00:00")
        into = ns - cached[0]
    return cached[1] % (into // 1000)
