"""The run predicate: every fact about one stored run, built at the end of the run.

Its JSON Schema ships in ``schemas/run-predicate-v1.schema.json``; :data:`PREDICATE_TYPE`
names it. Facts come from the run store (run row, task rows, attempt events, stored
output bytes), the task functions (code digests), the manager (config digest, versions)
and the ``collect_evidence`` sections each plugin contributes under its own name.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata as md
import inspect
import json
import marshal
import platform
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

PREDICATE_TYPE = "https://xlib-pipeline.dev/attestation/run/v1"
SCHEMA_FILE = "run-predicate-v1.schema.json"

# Config keys whose values are secrets: never in the digest's input, named instead.
_SECRET_WORDS = ("key", "secret", "password", "passwd", "token", "credential", "private")


_second: tuple[int, str] = (-1, "")


def iso(ts: float | None) -> str | None:
    """ISO-8601 UTC with microseconds, or ``None`` (the second's text is cached)."""
    global _second
    if ts is None:
        return None
    sec = int(ts // 1)
    cached = _second
    if cached[0] != sec:
        cached = (sec, datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
        _second = cached
    return f"{cached[1]}.{int((ts - sec) * 1e6):06d}+00:00"


def _is_secret(name: str) -> bool:
    low = name.lower()
    return any(w in low for w in _SECRET_WORDS) and not low.endswith(("_file", "_env", "_dir"))


def redact(value: Any, path: str = "", out: list[str] | None = None) -> Any:
    """``value`` with every secret-named key's value replaced by ``"<redacted>"``.

    Key *files* and *env var names* (``hmac_key_file``, ``hmac_key_env``) are locations,
    not secrets, and stay. The dotted paths of redacted keys are appended to ``out``.
    """
    if isinstance(value, Mapping):
        res: dict[str, Any] = {}
        for k, v in value.items():
            p = f"{path}.{k}" if path else str(k)
            if isinstance(k, str) and _is_secret(k) and not isinstance(v, bool | Mapping):
                res[str(k)] = "<redacted>"
                if out is not None:
                    out.append(p)
            else:
                res[str(k)] = redact(v, p, out)
        return res
    if isinstance(value, list | tuple):
        return [redact(v, f"{path}[{i}]", out) for i, v in enumerate(value)]
    return value


def config_digest(config: Mapping[str, Any]) -> dict[str, Any]:
    """``{"sha256": ..., "redacted": [...]}`` over the canonical JSON of the redacted config."""
    hidden: list[str] = []
    clean = redact(config, "", hidden)
    body = json.dumps(clean, sort_keys=True, separators=(",", ":"), default=repr)
    return {"sha256": hashlib.sha256(body.encode()).hexdigest(), "redacted": sorted(hidden)}


_CODE_CACHE: dict[Any, dict[str, str]] = {}


def code_digest(fn: Any) -> dict[str, str]:
    """``{"sha256": ..., "of": "source"|"bytecode"|"repr"}`` of a task function.

    The source text when Python can find it (what a reviewer reads), else the marshalled
    code object, else the function's qualified name.
    """
    inner = inspect.unwrap(fn) if callable(fn) else fn
    code = getattr(inner, "__code__", None)
    cache_key = code if code is not None else id(inner)
    hit = _CODE_CACHE.get(cache_key)
    if hit is not None:
        return hit
    try:
        data = inspect.getsource(inner).encode()
        of = "source"
    except (OSError, TypeError):
        if code is not None:
            data, of = marshal.dumps(code), "bytecode"
        else:
            name = getattr(inner, "__qualname__", type(inner).__qualname__)
            data, of = f"{getattr(inner, '__module__', '?')}.{name}".encode(), "repr"
    out = {"sha256": hashlib.sha256(data).hexdigest(), "of": of}
    if code is not None:
        _CODE_CACHE[cache_key] = out
    return out


def environment(plugins: Iterable[Any]) -> dict[str, Any]:
    """Python and package versions: the core and each plugin distribution."""
    dists = tuple(
        (info.dist, info.version or "unknown") for info in plugins if getattr(info, "dist", None)
    )
    return dict(_environment(dists))


@functools.lru_cache(maxsize=8)
def _environment(dists: tuple[tuple[str, str], ...]) -> tuple[tuple[str, Any], ...]:
    packages: dict[str, str] = {}
    try:
        packages["xlib-pipeline"] = md.version("xlib-pipeline")
    except md.PackageNotFoundError:  # pragma: no cover - running from a source tree
        packages["xlib-pipeline"] = "unknown"
    packages.update(dists)
    return (
        ("python", platform.python_version()),
        ("implementation", sys.implementation.name),
        ("platform", platform.platform(terse=True)),
        ("packages", dict(sorted(packages.items()))),
    )


def attempts_of(
    events: Iterable[tuple[Any, ...]], tasks: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Every attempt of every task, from the store's events: start, end, outcome."""
    open_: dict[tuple[str, int], dict[str, Any]] = {}
    out: list[dict[str, Any]] = []
    for task, ts, event, attempt, error_type, _error in events:
        n = int(attempt or 1)
        if event == "running":
            rec = {"task": task, "attempt": n, "start": ts, "end": None, "outcome": "running"}
            open_[(task, n)] = rec
            out.append(rec)
        elif event == "attempt_failed":
            found = open_.pop((task, n), None)
            if found is None:
                found = {"task": task, "attempt": n, "start": ts, "end": ts, "outcome": "failed"}
                out.append(found)
            found["end"], found["outcome"], found["error_type"] = ts, "failed", error_type
    for (task, _n), rec in open_.items():
        tr = tasks.get(task)
        if tr is not None:
            rec["end"] = tr.finished
            rec["outcome"] = tr.status
            if tr.error_type:
                rec["error_type"] = tr.error_type
    for rec in out:
        rec["start"], rec["end"] = iso(rec["start"]), iso(rec["end"])
    return out


def topological(structure: Mapping[str, Any]) -> list[str]:
    """Task names by depth (upstreams first), ties by name, from a stored run's structure."""
    deps = {
        n: [d for d in (v or {}).get("deps", []) if d in structure] for n, v in structure.items()
    }
    waiting = {n: len(d) for n, d in deps.items()}
    downstream: dict[str, list[str]] = {n: [] for n in deps}
    for n, ds in deps.items():
        for d in ds:
            downstream[d].append(n)
    depth = {n: 0 for n, k in waiting.items() if k == 0}
    ready = list(depth)
    while ready:
        n = ready.pop()
        for m in downstream[n]:
            depth[m] = max(depth.get(m, 0), depth[n] + 1)
            waiting[m] -= 1
            if waiting[m] == 0:
                ready.append(m)
    return sorted(deps, key=lambda n: (depth.get(n, 0), n))


def build(
    *,
    rec: Any,
    tasks: Mapping[str, Any],
    events: Iterable[tuple[Any, ...]],
    functions: Mapping[str, Any],
    plugins: Iterable[Any],
    sections: Mapping[str, Mapping[str, Any]],
    order: list[str] | None = None,
) -> dict[str, Any]:
    """The predicate of a stored run (``rec``, ``tasks``: the store's records)."""
    order = order or topological(rec.structure) or sorted(tasks)
    task_facts = []
    tenants = {rec.tenant} if rec.tenant else set()
    for name in order:
        tr = tasks.get(name)
        fn = functions.get(name)
        entry: dict[str, Any] = {
            "name": name,
            "dependsOn": list((rec.structure.get(name) or {}).get("deps", [])),
            "status": tr.status if tr is not None else "pending",
            "attempts": tr.attempts if tr is not None else 0,
            "started": iso(tr.started) if tr is not None else None,
            "finished": iso(tr.finished) if tr is not None else None,
            "durationSeconds": tr.duration if tr is not None else None,
            "tenant": tr.tenant if tr is not None else None,
            "errorType": tr.error_type if tr is not None else None,
            "outputStored": bool(tr is not None and tr.output is not None),
            "outputFromRun": tr.output_run if tr is not None else None,
        }
        if fn is not None:
            entry["codeDigest"] = code_digest(fn)
        if tr is not None and tr.tenant:
            tenants.add(tr.tenant)
        task_facts.append(entry)
    return {
        "pipeline": rec.pipeline,
        "runId": rec.run_id,
        "resumedFrom": rec.resumed_from,
        "status": rec.status,
        "error": _error_class(rec.error),
        "principal": rec.principal,
        "tenants": sorted(tenants),
        "executor": rec.executor,
        "source": rec.source,
        "started": iso(rec.started),
        "finished": iso(rec.finished),
        "structureFingerprint": rec.fingerprint,
        "config": config_digest(rec.config),
        "environment": environment(plugins),
        "tasks": task_facts,
        "attempts": attempts_of(events, tasks),
        "sections": {k: dict(v) for k, v in sorted(sections.items())},
    }


def subjects(pipeline: str, tasks: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One in-toto subject per stored output: ``<pipeline>/<task>`` and its sha256."""
    out = []
    for name in sorted(tasks):
        blob = tasks[name].output
        if blob is not None:
            out.append(
                {
                    "name": f"{pipeline}/{name}",
                    "digest": {"sha256": hashlib.sha256(blob).hexdigest()},
                }
            )
    return out


def _error_class(error: str | bytes | None) -> str | None:
    """The exception class of a stored run error (its text never leaves the store; an error
    text the encryption plugin sealed is named ``sealed``)."""
    if not error:
        return None
    if not isinstance(error, str):
        return "sealed"
    return error.split(":", 1)[0]
