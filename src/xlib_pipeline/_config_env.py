"""Config from ``XLIB_PIPELINE_*`` environment variables, the middle layer of the CLI's
config: the file < the environment < flags.

``XLIB_PIPELINE_MAX_WORKERS=8`` sets ``max_workers``; a double underscore goes one level
down (``XLIB_PIPELINE_SECURITY__ACCESS_CONTROL=true`` sets ``security.access_control``).
A value that parses as JSON is used as JSON (``8``, ``true``, ``["audit"]``,
``{"path": "a.jsonl"}``), anything else is a string. Variables that are not config keys
(:data:`RESERVED`) are left alone; any other name is a config key, validated like one from a
file (an unknown one is an error naming the variable).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

PREFIX = "XLIB_PIPELINE_"

#: ``XLIB_PIPELINE_*`` variables with their own meaning (not config keys); a name ending in
#: ``_`` is a prefix (``XLIB_PIPELINE_WORKER_PORT``, ``XLIB_PIPELINE_KEYS_PROD``).
RESERVED = ("HOME", "CONFIG", "KEYS", "KEYS_", "DASK_ADDRESS", "WORKER_", "LOG_")


def _reserved(name: str) -> bool:
    return any(name.startswith(r) if r.endswith("_") else name == r for r in RESERVED)


def env_var(key: str) -> str:
    """The variable that sets dotted config ``key`` (``security.access_control`` ->
    ``XLIB_PIPELINE_SECURITY__ACCESS_CONTROL``)."""
    return PREFIX + key.replace(".", "__").upper()


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``{dotted key: variable}`` for every config override set in ``environ``."""
    environ = os.environ if environ is None else environ
    out: dict[str, str] = {}
    for var in sorted(environ):
        if not var.startswith(PREFIX):
            continue
        name = var[len(PREFIX) :]
        if not name or _reserved(name):
            continue
        key = ".".join(part.lower() for part in name.split("__"))
        out[key] = var
    return out


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def apply_env(
    config: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """``config`` with the environment's overrides on top (nested sections are merged)."""
    environ = os.environ if environ is None else environ
    out: dict[str, Any] = dict(config)
    for key, var in env_overrides(environ).items():
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            sub = node.get(part)
            node[part] = sub = dict(sub) if isinstance(sub, Mapping) else {}
            node = sub
        node[parts[-1]] = _value(environ[var])
    return out


def variable_for(key: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The environment variable that set config ``key`` (or a section holding it), if any."""
    if not key:
        return None
    found = env_overrides(environ)
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        var = found.get(".".join(parts[:n]))
        if var is not None:
            return var
    # a variable deeper than the key (XLIB_PIPELINE_AUDIT__PTH for a bad 'audit' section)
    for k, var in found.items():
        if k.startswith(key + "."):
            return var
    return None
