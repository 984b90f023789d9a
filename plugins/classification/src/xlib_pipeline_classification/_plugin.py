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
* The levels are published in ``run.stash[xlib_pipeline.CLASSIFICATION]`` (a core-defined
  key with attrs types, as plugins never import each other) for the audit and lineage
  plugins, written by a ``tryfirst`` ``after_task`` so they are there before any other
  plugin's ``after_task`` for the same task.
* The per-run hooks live on a runtime object registered by ``configure`` when the config
  turns classification on, or by ``prepare_run`` when a pipeline declares
  ``classification=``/``clearance=``: otherwise the plugin costs nothing per run or task.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from typing import Any

from xlib_pipeline import (
    CLASSIFICATION,
    OUTPUTS_IN_DRIVER,
    ConfigKey,
    EvidenceSection,
    RunContext,
    Status,
    Task,
    TaskOption,
    check_keys,
    hookimpl,
)
from xlib_pipeline.exceptions import ComplianceError, ConfigError

from ._detectors import LEVELS, RANK, Detector, check_detector, check_level, resolve
from ._levels import CLASSIFICATION_RUN, Plans, RunState, static_levels
from ._scan import _records, gather_text, run_detectors

#: The states whose output after_task classifies (``Status.has_output``, without a call).
_WITH_OUTPUT = frozenset(s for s in Status if s.has_output)
#: The core-defined key the levels are published under (``run.stash[STASH_KEY]``).
STASH_KEY = CLASSIFICATION
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


def output_level(run: RunContext, task: str) -> str | None:
    """The classification level of ``task``'s output in ``run`` (``None`` when unknown)."""
    published = run.stash.get(CLASSIFICATION, None)
    return published.level_of(task) if published is not None else None


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
        #: (detectors, text, answer) of the last text scanned by RegexDetectors only.
        self._last: tuple[tuple[Any, ...], str, tuple[str | None, tuple[str, ...]]] | None = None
        self._runtime: _Enforcer | None = None
        self._clearances: _Clearances | None = None
        #: pipeline -> (its tasks when scanned, declares a level, declares a clearance)
        self._scanned: weakref.WeakKeyDictionary[Any, tuple[tuple[Task, ...], bool, bool]] = (
            weakref.WeakKeyDictionary()
        )
        self.manager: Any = None
        self.plans = Plans()
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
        """Scan ``value`` with the active detectors: (highest level found, detector names).
        The answer for the last text is reused when the next output gathers the same text
        (a task passing its input on) and every detector is a RegexDetector (see
        :func:`~._scan.run_detectors`)."""
        limit = self.scan_limit
        t = type(value)
        # a batch of records (most outputs of a stream): its fast path without the call
        text = _records(value, limit) if (t is list or t is tuple) and value else None
        if text is None:
            text = gather_text(value, limit)
        if not text:
            return None, ()
        dets = tuple(self.detectors)
        last = self._last
        if last is not None and last[0] == dets and last[1] == text:
            return last[2]
        answer, pure = run_detectors(dets, text)
        self._last = (dets, text, answer) if pure else None
        return answer

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
    def configure(self, manager: Any, config: Any) -> None:
        self.manager = manager
        section = config.get("classification")
        scanning = config.get("security_scanning")
        if section is None and scanning is None:
            return  # prepare_run turns the runtime on if a pipeline declares levels
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
        if self.enabled:
            self.activate()
        if self.detect_pii:  # error texts leaving a run are scanned too
            manager.register(_Redactor(self), name="classification.redactor")

    def redact(self, text: str) -> str | None:
        """``text`` as a placeholder naming the PII kinds and level when a detector finds PII
        in it (never the values); ``None`` when it holds none."""
        found: list[str] = []
        top = -1
        sample = text[: self.scan_limit]
        for d in self.detectors:
            if d.detect(sample):
                found.append(d.name)
                top = max(top, RANK[d.level])
        if not found:
            return None
        return f"[redacted: {LEVELS[top]} text with PII ({', '.join(sorted(found))})]"

    @hookimpl
    def prepare_run(
        self, manager: Any, pipeline: Any, tasks: tuple[Task, ...], options: Any
    ) -> None:
        """A declared clearance or level is never ignored, configured or not. The tasks
        are scanned once per pipeline version (the core passes the same ``tasks`` tuple to
        every run of it), not on every run."""
        if self._runtime is not None and self._clearances is not None:
            return
        seen = self._scanned.get(pipeline)
        if seen is None or seen[0] is not tasks:
            levels = any("classification" in t.options or "clearance" in t.options for t in tasks)
            cleared = levels and any(t.options.get("clearance") for t in tasks)
            seen = (tasks, levels, cleared)
            self._scanned[pipeline] = seen
        if seen[1] and self._runtime is None:
            self.activate()
        if seen[2] and self._clearances is None:
            self.activate(clearances=True)

    def activate(self, *, clearances: bool = False) -> None:
        """Register the per-run and per-task hooks (idempotent, thread-safe); with
        ``clearances`` also the ``before_task`` check of clearances, registered once a run
        declares one (a per-task hook costs every task of every run, even when it returns
        at once)."""
        with self._lock:
            if self._runtime is None and self.manager is not None:
                runtime = _Enforcer(self)
                self.manager.register(runtime, name="classification.runtime")
                self._runtime = runtime
            if clearances and self._clearances is None and self._runtime is not None:
                check = _Clearances(self)
                self.manager.register(check, name="classification.clearances")
                self._clearances = check


class _Redactor:
    """Answers the ``redact`` hook when PII detection is on (registered by ``configure``)."""

    def __init__(self, plugin: ClassificationPlugin) -> None:
        self.p = plugin

    @hookimpl
    def redact(self, text: str, tenant: str | None) -> str | None:
        return self.p.redact(text)


class _Enforcer:
    """The per-run and per-task hooks; registered by :meth:`ClassificationPlugin.activate`."""

    def __init__(self, plugin: ClassificationPlugin) -> None:
        self.p = plugin

    @hookimpl
    def validate_pipeline(self, pipeline: Any, run: RunContext) -> None:
        # the clearances are read once per pipeline version (the plan before_pipeline uses)
        clearance = self.p.plans.plan(run.tasks, self.p.default_level).clearance
        if not clearance:
            return
        cleared = [(t, clearance[t.name]) for t in run.tasks if t.name in clearance]
        levels = static_levels(run.tasks, self.p.default_level)
        violations = []
        for t, c in cleared:
            for up in t.depends_on:
                if levels[up] > c:
                    violations.append(
                        f"{up} -> {t.name} ({LEVELS[levels[up]]} > clearance {LEVELS[c]})"
                    )
        if violations:
            for v in violations:
                run.manager.report_compliance_event(
                    "clearance_violation",
                    pipeline=run.pipeline_name,
                    run_id=run.run_id,
                    tenant=run.tenant_id,
                    plugin="classification",
                    detail=v,
                )
            more = f" (and {len(violations) - 5} more)" if len(violations) > 5 else ""
            raise ComplianceError(
                f"pipeline {run.pipeline_name!r} refused before running: data flows above a "
                f"task's clearance: {'; '.join(violations[:5])}{more}"
            )

    @hookimpl
    def collect_evidence(
        self, manager: Any, run_id: str, run: RunContext | None
    ) -> EvidenceSection | None:
        """Levels, PII kinds and flows with their clearance decisions (at the end of a run)."""
        state = run.stash.get(CLASSIFICATION_RUN, None) if run is not None else None
        if state is None:
            return None
        flows = []
        for name, (_own, _declared, ups) in state.declared.items():
            c = state.clearance.get(name)
            for up in ups:
                lvl = state.levels.get(up)
                if lvl is None:
                    continue
                flow: dict[str, Any] = {"from": up, "to": name, "level": LEVELS[lvl]}
                if c is not None:
                    flow["clearance"] = LEVELS[c]
                    flow["decision"] = "refused" if lvl > c else "allowed"
                flows.append(flow)
        outputs = state.published.outputs
        facts = {
            "levels": {k: v.level for k, v in sorted(outputs.items())},
            "pii": {k: list(v.detected) for k, v in sorted(outputs.items()) if v.detected},
            "clearances": {k: LEVELS[v] for k, v in sorted(state.clearance.items())},
            "flows": flows,
        }
        return EvidenceSection(name="classification", facts=facts)

    @hookimpl
    def before_pipeline(self, run: RunContext) -> None:
        state = RunState(self.p.plans.plan(run.tasks, self.p.default_level))
        if self.p.detect_pii and self.p.detectors:
            run.stash[OUTPUTS_IN_DRIVER] = True  # after_task scans each output's content
        run.stash[CLASSIFICATION_RUN] = state
        run.stash[CLASSIFICATION] = state.published

    @hookimpl
    def may_show_values(
        self, task: Task, run: RunContext, value: Any, source: str | None
    ) -> bool | None:
        """Contract errors quote values only up to ``internal`` (declared, inherited along
        edges, or raised by PII detection)."""
        state = run.stash.get(CLASSIFICATION_RUN, None)
        if state is None:
            return None
        internal = RANK["internal"]
        if source is not None:
            lvl = state.levels.get(source)
            if lvl is None:
                lvl = state.declared.get(source, (RANK[self.p.default_level],))[0]
            return lvl <= internal
        own, _, ups = state.declared[task.name]
        lvl = max([own, *(state.levels.get(u, 0) for u in ups)])
        if lvl <= internal and self.p.detect_pii and self.p.detectors:
            found, _ = self.p.classify(value)
            if found is not None:
                lvl = max(lvl, RANK[found])
        return lvl <= internal

    @hookimpl(tryfirst=True)
    def after_task(self, task: Task, run: RunContext, outcome: Any) -> None:
        if not outcome.final or outcome.status not in _WITH_OUTPUT:
            return
        state = run.stash.get(CLASSIFICATION_RUN, None)
        if state is None:
            return
        own, declared, ups = state.declared[task.name]
        lvl = own
        inherited = None
        levels = state.levels
        for up in ups:
            u = levels.get(up)
            if u is not None and u > lvl:
                lvl = u
                inherited = up
        detected: tuple[str, ...] = ()
        p = self.p
        output = outcome.output
        if p.detect_pii and p.detectors and output is not None:  # None holds no text
            found, detected = p.classify(output)
            if detected:
                run.manager.report_compliance_event(
                    "pii_detected",
                    pipeline=run.pipeline_name,
                    run_id=run.run_id,
                    task=task.name,
                    tenant=run.tenant_of(task),
                    plugin="classification",
                    detail=", ".join(detected),
                )
            if found is not None and RANK[found] > lvl:
                lvl = RANK[found]
                inherited = None
        levels[task.name] = lvl
        key = (lvl, declared, detected, inherited)
        plans = p.plans
        state.published.outputs[task.name] = plans.entries.get(key) or plans.entry(key)


class _Clearances:
    """The clearance check before each task; registered by :meth:`ClassificationPlugin.activate`
    once a run declares a clearance."""

    def __init__(self, plugin: ClassificationPlugin) -> None:
        self.p = plugin

    @hookimpl(tryfirst=True)
    def before_task(self, task: Task, run: RunContext, inputs: tuple[Any, ...]) -> None:
        state = run.stash.get(CLASSIFICATION_RUN, None)
        if state is None:
            return
        c = state.clearance.get(task.name)
        if c is None:
            return
        levels = state.levels
        for up in state.declared[task.name][2]:
            lvl = levels.get(up)
            if lvl is not None and lvl > c:
                entry = state.published.outputs.get(up)
                why = ""
                if entry is not None and entry.detected:
                    why = f", raised by detected {', '.join(entry.detected)}"
                run.manager.report_compliance_event(
                    "clearance_violation",
                    pipeline=run.pipeline_name,
                    run_id=run.run_id,
                    task=task.name,
                    tenant=run.tenant_of(task),
                    plugin="classification",
                    detail=f"{up} -> {task.name} ({LEVELS[lvl]} > clearance {LEVELS[c]}{why})",
                )
                raise ComplianceError(
                    f"task {task.name!r} refused: its upstream {up!r} produced "
                    f"{LEVELS[lvl]} data{why}, above {task.name!r}'s clearance "
                    f"{LEVELS[c]} (flow {up} -> {task.name})"
                )
