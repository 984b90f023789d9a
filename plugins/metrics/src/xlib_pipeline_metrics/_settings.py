"""The ``metrics`` config section: how the driver's metrics are exposed."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

import attrs

from xlib_pipeline import check_keys

SECTION_KEYS = (
    "port",
    "addr",
    "pushgateway",
    "job",
    "grouping_key",
    "push_timeout_seconds",
    "textfile",
    "buckets",
)
EXAMPLE = "{'port': 9464} or {'pushgateway': 'http://pushgateway:9091'} or {'textfile': 'x.prom'}"

#: Histogram buckets (seconds) for batch tasks and runs: 5 ms to 6 hours.
DEFAULT_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
    7200.0,
    21600.0,
)


@attrs.frozen
class MetricsSettings:
    """Validated ``metrics`` section. ``port=None``: no HTTP endpoint; ``port=0``: any free
    port (read it from :attr:`MetricsPlugin.port`)."""

    port: int | None = None
    addr: str = "127.0.0.1"
    pushgateway: str | None = None
    job: str = "xlib_pipeline"
    grouping_key: Mapping[str, str] = attrs.field(factory=dict)
    push_timeout_seconds: float = 5.0
    textfile: str | None = None
    buckets: tuple[float, ...] = DEFAULT_BUCKETS


def _string(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"'metrics.{name}' must be a non-empty string, got {value!r}")
    return value


def settings(value: Any) -> MetricsSettings | None:
    """Convert config ``metrics``: ``false``/absent → off, ``true`` → collect only (read the
    registry yourself), or a mapping of :data:`SECTION_KEYS`."""
    if value is None or value is False:
        return None
    if value is True:
        return MetricsSettings()
    out = check_keys(value, SECTION_KEYS, example=EXAMPLE)
    kw: dict[str, Any] = {}
    if "port" in out:
        port = out["port"]
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"'metrics.port' must be an integer from 0 to 65535, got {port!r}")
        kw["port"] = port
    if "addr" in out:
        kw["addr"] = _string("addr", out["addr"])
    if "pushgateway" in out:
        url = _string("pushgateway", out["pushgateway"])
        parsed = urlparse(url if "://" in url else f"http://{url}")
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(
                f"'metrics.pushgateway' must be an http(s) URL like "
                f"'http://pushgateway:9091', got {url!r}"
            )
        kw["pushgateway"] = url
    if "job" in out:
        kw["job"] = _string("job", out["job"])
    if "grouping_key" in out:
        gk = out["grouping_key"]
        if not isinstance(gk, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in gk.items()
        ):
            raise ValueError(f"'metrics.grouping_key' must map label names to strings, got {gk!r}")
        kw["grouping_key"] = dict(gk)
    if "push_timeout_seconds" in out:
        t = out["push_timeout_seconds"]
        if isinstance(t, bool) or not isinstance(t, int | float) or not t > 0:
            raise ValueError(f"'metrics.push_timeout_seconds' must be a positive number, got {t!r}")
        kw["push_timeout_seconds"] = float(t)
    if "textfile" in out:
        path = _string("textfile", out["textfile"])
        if not path.endswith(".prom"):
            raise ValueError(
                f"'metrics.textfile' must end in '.prom' (node_exporter's textfile collector "
                f"reads only *.prom files), got {path!r}"
            )
        kw["textfile"] = path
    if "buckets" in out:
        b = out["buckets"]
        if (
            not isinstance(b, list | tuple)
            or not b
            or not all(
                isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
                for x in b
            )
            or any(b[k] >= b[k + 1] for k in range(len(b) - 1))
        ):
            raise ValueError(
                f"'metrics.buckets' must be a non-empty list of increasing numbers "
                f"(seconds), got {b!r}"
            )
        kw["buckets"] = tuple(float(x) for x in b)
    return MetricsSettings(**kw)
