"""The installed plugins' entry points, read straight from the ``*.dist-info`` folders.

``importlib.metadata.entry_points(group=...)`` gives the same answer, but importing it
(email, zipfile, csv ...) and its generic search cost more than the rest of a
``PipelineManager()`` with every plugin installed. This reads each folder of ``sys.path``
once, in ``sys.path`` order, keeps the first distribution of each (normalized) name as
``importlib.metadata`` does, and parses only the ``entry_points.txt`` files that name the
group. Anything it does not handle the same way (a zip or egg on ``sys.path``) falls back
to ``importlib.metadata``; tests/test_plugins_scan.py checks both agree.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import sys
from typing import Any

__all__ = ["EntryPoint", "entry_points"]

_PATTERN = re.compile(r"(?P<module>[\w.]+)\s*(:\s*(?P<attr>[\w.]+)\s*)?((?P<extras>\[.*\])\s*)?$")
_SEPARATORS = re.compile(r"[-_.]+")


class EntryPoint:
    """One entry point: ``name = value`` in ``group`` of distribution ``dist``."""

    __slots__ = ("dist", "group", "name", "value", "version")

    def __init__(
        self, name: str, value: str, group: str, dist: str | None, version: str | None
    ) -> None:
        self.name = name
        self.value = value
        self.group = group
        #: The distribution's name (``xlib-pipeline-audit``) and version, when known.
        self.dist = dist
        self.version = version

    def load(self) -> Any:
        """Import the module and return the object the entry point names."""
        match = _PATTERN.match(self.value)
        if match is None:
            raise ValueError(f"entry point {self.name!r}: malformed value {self.value!r}")
        obj: Any = importlib.import_module(match.group("module"))
        for attr in (match.group("attr") or "").split("."):
            if attr:
                obj = getattr(obj, attr)
        return obj

    def __repr__(self) -> str:
        return (
            f"EntryPoint({self.name!r}, {self.value!r}, group={self.group!r}, dist={self.dist!r})"
        )


def _normalize(name: str) -> str:
    return _SEPARATORS.sub("-", name).lower().replace("-", "_")


def _pairs(text: str, group: str) -> list[tuple[str, str]]:
    """``name = value`` lines of section ``[group]`` (importlib.metadata's reading)."""
    out: list[tuple[str, str]] = []
    section: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line.strip("[]")
            continue
        if section == group:
            name, _, value = line.partition("=")
            out.append((name.strip(), value.strip()))
    return out


def _dist_name(folder: str, path: str) -> tuple[str | None, str | None]:
    """Name and version from ``name-version.dist-info``; else from its METADATA."""
    stem = folder.rpartition(".")[0]
    if folder.lower().endswith(".dist-info") and stem.count("-") == 1:
        name, version = stem.split("-")
        return name.replace("_", "-"), version
    import importlib.metadata as md  # an unusual folder name: read its metadata
    from pathlib import Path

    d = md.PathDistribution(Path(path))
    return d.name, d.version


def _scan(group: str) -> list[EntryPoint] | None:
    seen: set[str] = set()
    found: list[EntryPoint] = []
    for entry in sys.path:
        root = entry or "."
        if not os.path.isdir(root):
            if os.path.exists(root):
                return None  # a zip or egg file: importlib.metadata's own search
            continue  # a missing folder (python311.zip) holds nothing
        if root.lower().endswith(".egg"):
            return None
        try:
            children = os.listdir(root)
        except OSError:
            continue
        for child in children:
            low = child.lower()
            if not low.endswith((".dist-info", ".egg-info")):
                continue
            name = _normalize(low.rpartition(".")[0].partition("-")[0])
            if name in seen:
                continue
            seen.add(name)
            folder = os.path.join(root, child)
            file = os.path.join(folder, "entry_points.txt")
            if not os.access(file, os.F_OK):  # most have none: one syscall, no exception
                continue
            try:
                with open(file, encoding="utf-8") as f:
                    text = f.read()
            except OSError:  # none (or an egg-info file): no entry points
                continue
            if f"[{group}]" not in text:
                continue
            pairs = _pairs(text, group)
            if not pairs:
                continue
            dist, version = _dist_name(child, folder)
            found.extend(EntryPoint(n, v, group, dist, version) for n, v in pairs)
    return found


def _fallback(group: str) -> list[EntryPoint]:
    import importlib.metadata as md

    out: list[EntryPoint] = []
    for ep in md.entry_points(group=group):
        d = ep.dist
        out.append(
            EntryPoint(ep.name, ep.value, group, d.name if d else None, d.version if d else None)
        )
    return out


def entry_points(group: str) -> list[EntryPoint]:
    """The entry points of ``group`` of every installed distribution (a fresh read: a
    plugin installed while the process runs is found by the next manager)."""
    found = _scan(group)
    return _fallback(group) if found is None else found


@functools.lru_cache(maxsize=1)
def packages_distributions() -> dict[str, list[str]]:
    """Top-level package -> the distributions providing it (for explicit plugins)."""
    import importlib.metadata as md

    try:
        return dict(md.packages_distributions())
    except Exception:  # pragma: no cover - broken metadata
        return {}


def version_of(dist: str) -> str | None:
    """The installed version of ``dist`` (``None`` when it is not installed)."""
    import importlib.metadata as md

    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None
