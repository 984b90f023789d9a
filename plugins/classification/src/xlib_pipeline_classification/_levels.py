"""Declared levels of a pipeline's tasks, and the per-run state built from them."""

from __future__ import annotations

from collections.abc import Iterable

from xlib_pipeline import Classification, OutputLevel, StashKey, Task

from ._detectors import LEVELS, RANK

#: A task's declared level: (its rank, with the default for none; the declared name or
#: ``None``; its upstream tasks), by task name.
Declared = dict[str, tuple[int, str | None, tuple[str, ...]]]
#: The key of one shared :class:`OutputLevel`: (rank, declared, detected, inherited_from).
EntryKey = tuple[int, str | None, tuple[str, ...], str | None]


def static_levels(tasks: Iterable[Task], default: str) -> dict[str, int]:
    """Declared levels propagated along the edges: rank by task name.

    ``tasks`` in topological order (``run.tasks``), upstreams first.
    """
    d = RANK[default]
    out: dict[str, int] = {}
    for t in tasks:
        own = t.options.get("classification")
        lvl = RANK[own] if own is not None else d
        for up in t.depends_on:
            if out[up] > lvl:
                lvl = out[up]
        out[t.name] = lvl
    return out


class Plan:
    """What a run's tasks declare (levels, clearances): read once per pipeline version and
    default level (the core passes the same ``tasks`` tuple to every run of a version),
    shared by its runs, never changed."""

    __slots__ = ("clearance", "declared", "default", "tasks")

    def __init__(self, tasks: tuple[Task, ...], default: str) -> None:
        self.tasks = tasks
        self.default = default
        own_default = RANK[default]
        self.declared: Declared = {}
        for t in tasks:
            own = t.options.get("classification")
            self.declared[t.name] = (
                RANK[own] if own is not None else own_default,
                own,
                t.depends_on,
            )
        self.clearance: dict[str, int] = {
            t.name: RANK[t.options["clearance"]]
            for t in tasks
            if t.options.get("clearance") is not None
        }


class Plans:
    """The last :class:`Plan` built (a stream runs one version batch after batch), and the
    :class:`OutputLevel` entries runs share (frozen: one per distinct key, bounded)."""

    def __init__(self) -> None:
        self._last: Plan | None = None
        self.entries: dict[EntryKey, OutputLevel] = {}

    def plan(self, tasks: tuple[Task, ...], default: str) -> Plan:
        """The plan of ``tasks`` under the default level ``default``."""
        last = self._last
        if last is None or last.tasks is not tasks or last.default != default:
            last = self._last = Plan(tasks, default)
        return last

    def entry(self, key: EntryKey) -> OutputLevel:
        """The shared :class:`OutputLevel` of ``key``."""
        found = self.entries.get(key)
        if found is None:
            if len(self.entries) >= 1024:
                self.entries.clear()
            lvl, declared, detected, inherited = key
            found = self.entries[key] = OutputLevel(
                level=LEVELS[lvl], declared=declared, detected=detected, inherited_from=inherited
            )
        return found


class RunState:
    """Per-run levels (``levels``: task name -> rank of its output), with the run's plan's
    ``declared`` and ``clearance`` (shared, read only)."""

    __slots__ = ("clearance", "declared", "levels", "published")

    def __init__(self, plan: Plan) -> None:
        self.declared = plan.declared
        self.clearance = plan.clearance
        self.levels: dict[str, int] = {}
        self.published = Classification(levels=LEVELS)


#: This plugin's own per-run state.
CLASSIFICATION_RUN: StashKey[RunState] = StashKey("classification.run")
