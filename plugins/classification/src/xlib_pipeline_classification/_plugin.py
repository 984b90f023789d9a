"""The classification plugin: levels, propagation, PII detection and clearance policy.

* Every task output has a level: the task's declared ``classification=`` (else the
  configured ``default_level``, ``internal``), raised to at least the highest level of its
  upstream outputs (propagation), and raised to at least ``confidential`` (each detector's
  ``level``) when a detector finds PII in the output.
* A task's ``clearance=`` is the highest level it may receive. ``validate_pipeline``
  refuses a run whose declared levels, propagated along the edges, reach a task above its
  clearance (nothing runs). ``before_task`` refuses, at run time, a task whose upstream
  output was raised above its clearance by detection: it fails with ComplianceError before
  its function is called.
* The levels are published in ``run.stash["classification"]`` (see :mod:`.` docs) for the
  audit and lineage plugins, written by a ``tryfirst`` ``after_task`` so they are there
  before any other plugin's ``after_task`` for the same task.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from typing import Any

from xlib_pipeline import ConfigKey, TaskOption, check_keys, hookimpl
from xlib_pipeline.exceptions import ComplianceError, ConfigError

from ._detectors import LEVELS, RANK, Detector, check_detector, check_level, resolve
from ._scan import gather_text

STASH_KEY = "classification"
CONTRACT_VERSION = 1
_SECTION_KEYS = (
    "enabled",
    "detect_pii",
    "default_level",
    "detectors",
    "scan_limit_bytes",
)
DEFAULT_SCAN_LIMIT = 64 * 1024


def _section(value: Any) -> dict[str, Any]:
    out = check_keys(
        value, _SECTION_KEYS, example="{'detect_pii': True, 'default_level': 'internal'}"
    )
    for key in ("enabled", "detect_pii"):
        if key in out and not isinstance(out[key], bool):
            raise ValueError(f"{key!r} must be true or false, got {out[key]!r}")
    if "default_level" in out:
        try:
            check_level(out["default_level"])
        except ValueError as exc:
            raise ValueError(f"'default_level': {exc}") from None
    limit = out.get("scan_limit_bytes")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"'scan_limit_bytes' must be a positive integer, got {limit!r}")
    dets = out.get("detectors")
    if dets is not None and (isinstance(dets, str) or not isinstance(dets, list | tuple)):
        raise ValueError(f"'detectors' must be a list of detector names, got {dets!r}")
    return out


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def output_level(run: Any, task: str) -> str | None:
    """The classification level of ``task``'s output in ``run`` (``None`` when unknown)."""
    entry = (run.stash.get(STASH_KEY) or {}).get("outputs", {}).get(task)
    return entry["level"] if entry else None


def static_levels(plan: Any, default: str) -> list[int]:
    """Declared levels propagated along the edges (ranks, indexed like ``plan.tasks``)."""
    d = RANK[default]
    out = [0] * len(plan)
    for i in plan.order:
        own = plan.tasks[i].options.get("classification")
        lvl = RANK[own] if own is not None else d
        for p in plan.preds[i]:
            if out[p] > lvl:
                lvl = out[p]
        out[i] = lvl
    return out


class _RunState:
    """Per-run levels. ``levels`` maps task index to the rank of its output."""

    __slots__ = ("clearance", "declared", "levels", "outputs", "preds", "stash")

    def __init__(self, plugin: ClassificationPlugin, run: Any) -> None:
        plan = run.plan
        own_default = RANK[plugin.default_level]
        self.declared: dict[str, tuple[int, int, str | None, tuple[str, ...]]] = {}
        for i, t in enumerate(plan.tasks):
            own = t.options.get("classification")
            self.declared[t.name] = (
                i,
                RANK[own] if own is not None else own_default,
                own,
                tuple(plan.names[p] for p in plan.preds[i]),
            )
        self.clearance = {
            t.name: RANK[t.options["clearance"]]
            for t in plan.tasks
            if t.options.get("clearance") is not None
        }
        self.levels: dict[str, int] = {}
        self.outputs: dict[str, dict[str, Any]] = {}
        self.stash = {
            "version": CONTRACT_VERSION,
            "levels": LEVELS,
            "outputs": self.outputs,
        }


class ClassificationPlugin:
    """Sensitivity levels, PII detection and clearances (``xlib-pipeline-classification``).

    ``detectors`` adds detector objects (see :class:`Detector`) by name, as
    :meth:`register_detector` does.
    """

    name = "classification"

    def __init__(self, detectors: Iterable[Detector] = ()) -> None:
        self.enabled = False
        self.detect_pii = False
        self.default_level = "internal"
        self.scan_limit = DEFAULT_SCAN_LIMIT
        self.detectors: list[Detector] = []
        self._registered: dict[str, Detector] = {}
        self._selected: list[Any] | None = None
        self._static: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        for d in detectors:
            self.register_detector(d)

    # -- public API --------------------------------------------------------------------------

    def register_detector(self, detector: Detector) -> None:
        """Add (or replace, by name) a detector; it is used when ``detect_pii`` is on.

        When ``classification.detectors`` lists names, a registered detector must be listed.
        """
        det = check_detector(detector, "register_detector")
        self._registered[det.name] = det
        if self._selected is None or det.name in self._selected:
            self.detectors = [d for d in self.detectors if d.name != det.name] + [det]

    def classify(self, value: Any) -> tuple[str | None, tuple[str, ...]]:
        """Scan ``value`` with the active detectors: (highest level found, detector names)."""
        text = gather_text(value, self.scan_limit)
        if not text:
            return None, ()
        found: list[str] = []
        top = -1
        for d in self.detectors:
            if d.detect(text):
                found.append(d.name)
                r = RANK[d.level]
                if r > top:
                    top = r
        return (LEVELS[top] if top >= 0 else None), tuple(found)

    # -- registration ----------------------------------------------------------------------

    @hookimpl
    def register_config_keys(self) -> Iterable[ConfigKey]:
        return (
            ConfigKey(
                name="classification",
                convert=_section,
                doc="Sensitivity levels: {detect_pii, default_level, detectors, "
                "scan_limit_bytes, enabled}.",
            ),
            ConfigKey(
                name="security_scanning",
                convert=_flag,
                doc="true: classification on with PII detection (detect_pii).",
            ),
        )

    @hookimpl
    def register_task_options(self) -> Iterable[TaskOption]:
        return (
            TaskOption(
                name="classification",
                convert=check_level,
                doc="Declared level of the task's output: public|internal|confidential|restricted.",
            ),
            TaskOption(
                name="clearance",
                convert=check_level,
                doc="Highest level of data the task may receive from its upstreams.",
            ),
        )

    @hookimpl
    def configure(self, manager: Any, config: Any) -> bool | None:
        section = config.get("classification")
        scanning = config.get("security_scanning")
        if section is None and scanning is None:
            # Inactive for this manager; the core re-activates the plugin when a pipeline
            # uses classification= or clearance=, so a declared clearance is never ignored.
            return False
        section = dict(section or {})
        self.enabled = bool(section.get("enabled", True)) and not (
            scanning is False and not section
        )
        self.detect_pii = bool(section.get("detect_pii", bool(scanning)))
        if scanning is True:
            self.detect_pii = True
        self.default_level = section.get("default_level", "internal")
        self.scan_limit = section.get("scan_limit_bytes", DEFAULT_SCAN_LIMIT)
        self._selected = list(section["detectors"]) if "detectors" in section else None
        try:
            self.detectors = resolve(self._selected, self._registered)
        except ValueError as exc:
            raise ConfigError(
                f"config key 'classification.detectors': {exc}", key="classification.detectors"
            ) from exc

    def _active(self, run: Any) -> bool:
        """Configured, or the pipeline declares classification/clearance options."""
        if self.enabled:
            return True
        plan = run.plan
        hit = self._static.get(plan)
        if hit is None:
            hit = any("classification" in t.options or "clearance" in t.options for t in plan.tasks)
            with self._lock:
                self._static[plan] = hit
        return bool(hit)

    # -- run hooks -------------------------------------------------------------------------

    @hookimpl
    def validate_pipeline(self, pipeline: Any, run: Any) -> None:
        if not self._active(run):
            return
        plan = run.plan
        cleared = [
            (i, RANK[t.options["clearance"]])
            for i, t in enumerate(plan.tasks)
            if t.options.get("clearance") is not None
        ]
        if not cleared:
            return
        levels = static_levels(plan, self.default_level)
        violations = []
        for i, c in cleared:
            for p in plan.preds[i]:
                if levels[p] > c:
                    violations.append(
                        f"{plan.names[p]} -> {plan.names[i]} "
                        f"({LEVELS[levels[p]]} > clearance {LEVELS[c]})"
                    )
        if violations:
            more = f" (and {len(violations) - 5} more)" if len(violations) > 5 else ""
            raise ComplianceError(
                f"pipeline {plan.pipeline_name!r} refused before running: data flows above a "
                f"task's clearance: {'; '.join(violations[:5])}{more}"
            )

    @hookimpl
    def before_pipeline(self, run: Any) -> None:
        if not self._active(run):
            return
        state = _RunState(self, run)
        run.stash["classification.state"] = state
        run.stash[STASH_KEY] = state.stash

    @hookimpl(tryfirst=True)
    def before_task(self, task: Any, run: Any, inputs: tuple[Any, ...]) -> None:
        state = run.stash.get("classification.state")
        if state is None:
            return
        c = state.clearance.get(task.name)
        if c is None:
            return
        levels = state.levels
        for up in state.declared[task.name][3]:
            lvl = levels.get(up)
            if lvl is not None and lvl > c:
                entry = state.outputs.get(up) or {}
                why = ""
                if entry.get("detected"):
                    why = f", raised by detected {', '.join(entry['detected'])}"
                raise ComplianceError(
                    f"task {task.name!r} refused: its upstream {up!r} produced "
                    f"{LEVELS[lvl]} data{why}, above {task.name!r}'s clearance "
                    f"{LEVELS[c]} (flow {up} -> {task.name})"
                )

    @hookimpl(tryfirst=True)
    def after_task(self, task: Any, run: Any, outcome: Any) -> None:
        if not outcome.final or outcome.status.value != "succeeded":
            return
        state = run.stash.get("classification.state")
        if state is None:
            return
        _, own, declared, ups = state.declared[task.name]
        lvl = own
        inherited = None
        levels = state.levels
        for up in ups:
            u = levels.get(up)
            if u is not None and u > lvl:
                lvl = u
                inherited = up
        detected: tuple[str, ...] = ()
        if self.detect_pii and self.detectors:
            found, detected = self.classify(outcome.output)
            if found is not None and RANK[found] > lvl:
                lvl = RANK[found]
                inherited = None
        levels[task.name] = lvl
        state.outputs[task.name] = {
            "level": LEVELS[lvl],
            "declared": declared,
            "detected": list(detected),
            "inherited_from": inherited,
        }
