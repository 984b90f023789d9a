"""Per-run lineage state: the OpenLineage events of one run, built on the emitter thread
from the pipeline's :class:`~._layout.Layout` (text fixed per pipeline version) and the
parts serialised once per run (the run ids, the parent facet); see ``_plugin``."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from xlib_pipeline import CLASSIFICATION, FALLBACKS, OutputLevel, StashKey

from . import _events as ev
from ._emit import Emitter
from ._layout import DEP_TAIL, Layout, layout_key

if TYPE_CHECKING:  # pragma: no cover
    from ._plugin import LineagePlugin

_TERMINAL = {
    "succeeded": "COMPLETE",
    "cached": "COMPLETE",
    "fallback": "COMPLETE",
    "failed": "FAIL",
    "skipped": "ABORT",
    "upstream_failed": "ABORT",
    "cancelled": "ABORT",
}
_REASONS = {
    "skipped": "task skipped (condition false or an upstream was skipped)",
    "upstream_failed": "an upstream task failed",
    "cancelled": "run cancelled before the task started",
    "cached": "output served from the result cache; the task did not run",
    "fallback": "the task failed; its fallback supplied the output",
}
#: The outcomes whose terminal event names the output (with its classification).
_WITH_OUTPUT = frozenset(("succeeded", "cached", "fallback"))


class _Alone:
    """A task the run does not hold, as :class:`Layout` reads tasks."""

    __slots__ = ("name",)
    depends_on: tuple[str, ...] = ()
    merge_strategy = None

    def __init__(self, name: str) -> None:
        self.name = name


class RunState:
    """Per-run lineage state; all mutable parts are touched by the emitter thread only.

    Events are written as JSON text assembled from the pipeline's layout (job names,
    datasets, dependencies: serialised once per pipeline version), fragments serialised
    once per run (the parent facet, every task's run id and ``jobDependencies`` entry), and
    the event's own time and outcome: each event costs a string format plus the parts that
    really vary.
    """

    def __init__(self, plugin: LineagePlugin, run: Any) -> None:
        d = json.dumps
        self.namespace: str = plugin.namespace
        self.producer: str = plugin.producer
        self.include_stack: bool = plugin.include_stack
        self.pipeline: str = run.pipeline_name
        self.run_id: str = run.run_id
        self.tenant: str | None = run.tenant_id
        self.executor: str = run.executor
        #: The run's params (redacted like error texts) and its logical date when given.
        self.params: dict[str, Any] | None = run.recorded_params() or None
        day = run.logical_date if "logical_date" in run.params else None
        self.nominal: str | None = ev.iso(day.timestamp()) if day is not None else None
        tenant = run.tenant_id
        manager = run.manager
        # Error texts quote data: they leave through the manager's redaction (PII removed
        # when classification's detection is on).
        self.redact: Callable[[str], str] = lambda text: manager.redact(text, tenant=tenant)
        self.describe: Callable[[BaseException], str] = lambda err: manager.describe_error(
            err, tenant=tenant
        )
        self.stash = run.stash  # read lazily: other plugins publish in their own hooks
        self.tasks = {t.name: t for t in run.tasks}
        self.datasets = plugin.datasets_for(run)
        self.started: set[str] = set()
        self.ended: set[str] = set()
        # the run's layout (shared by the pipeline's runs) and every task's run id, both
        # taken on the emitter thread when the first task event is built
        pipeline, tasks, datasets = run.pipeline, run.tasks, self.datasets
        key = layout_key(run, plugin)
        self._layout_of: Callable[[], Layout] = lambda: plugin.layout_for(
            pipeline, key, tasks, datasets
        )
        self._layout: Layout | None = None
        self._rids: list[str] = []
        self._deps: list[str] = []
        self._unknown: dict[str, tuple[Layout, int, str]] = {}
        self._ns_bytes = uuid.UUID(self.run_id).bytes
        p = self.producer
        self._ns = d(self.namespace)
        self._head = f'"producer":{d(p)},"schemaURL":{d(ev.EVENT_SCHEMA)}'
        parent = d(ev.parent_facet(p, self.run_id, self.namespace, self.pipeline))
        # a task event's text around its variable parts (see _start and _end)
        self._ev_mid = f'",{self._head},"run":{{"runId":"'
        self._ev_facets = f'","facets":{{"parent":{parent},"{ev.RUN_FACET}":'
        self._engine = plugin.engine_facet
        # classified outputs: the facets' JSON per distinct classification of the run, and
        # per OutputLevel object (the classification plugin shares one per distinct value)
        self._cls_facets: dict[tuple[str, str | None, tuple[str, ...]], str] = {}
        self._cls_seen: dict[int, tuple[OutputLevel, str]] = {}
        self.emitter = Emitter(plugin.sink(), self.build)

    @property
    def task_run_ids(self) -> dict[str, str]:
        """Task name -> OpenLineage runId of its task run (every task of the run, and every
        task a ``depends_on`` names, once the run's first task event was built)."""
        layout = self._layout
        out = dict(zip(layout.names, self._rids, strict=True)) if layout is not None else {}
        out.update((name, entry[2]) for name, entry in self._unknown.items())
        return out

    # -- event building (emitter thread) -------------------------------------------------

    def _prepare(self) -> Layout:
        """The run's layout, and the run ids and ``jobDependencies`` entries of all its
        tasks (every task gets its events in every run that starts)."""
        layout = self._layout_of()
        nsb = self._ns_bytes
        uuid5 = ev.fast_uuid5
        self._rids = rids = [uuid5(nsb, name) for name in layout.names]
        self._deps = [f"{h}{r}{DEP_TAIL}" for h, r in zip(layout.dep_head, rids, strict=True)]
        self._layout = layout
        return layout

    def _locate(self, name: str) -> tuple[Layout, int, str]:
        """(layout, index, task run id) of ``name``; a task the run does not hold (none of
        the core's hooks name one) gets a layout of its own, without dependencies."""
        layout = self._layout or self._prepare()
        i = layout.index.get(name)
        if i is not None:
            return layout, i, self._rids[i]
        got = self._unknown.get(name)
        if got is None:
            alone = Layout(
                (),
                tasks=[_Alone(name)],
                pipeline=self.pipeline,
                namespace=self.namespace,
                producer=self.producer,
                engine=self._engine,
                datasets=self.datasets,
            )
            got = self._unknown[name] = (alone, 0, ev.fast_uuid5(self._ns_bytes, name))
        return got

    def _start(self, name: str, ts: float, out: list[str]) -> None:
        self.started.add(name)
        layout = self._layout or self._prepare()
        i = layout.index.get(name)
        if i is None:
            layout, i, rid = self._locate(name)
            ups = downs = ""  # a task the run does not hold has no dependencies
        else:
            rid = self._rids[i]
            deps = self._deps
            ups = ",".join([deps[j] for j in layout.ups[i]])
            downs = ",".join([deps[j] for j in layout.downs[i]])
        out.append(
            f'{{"eventType":"START","eventTime":"{ev.iso(ts)}{self._ev_mid}{rid}'
            f'{self._ev_facets}{layout.start_head[i]}{ups}],"downstream":[{downs}'
            f"{layout.start_tail[i]}"
        )

    def _end(
        self,
        name: str,
        status: str,
        error: BaseException | None,
        tb: str | None,
        attempts: int,
        ts: float,
        out: list[str],
        reason: str | None = None,
    ) -> None:
        if name in self.ended:
            return
        if name not in self.started:
            self._start(name, ts, out)
        self.ended.add(name)
        layout, i, rid = self._locate(name)
        etype = _TERMINAL.get(status, "ABORT")
        why = reason or _REASONS.get(status)
        if status == "fallback":
            used = (self.stash.get(FALLBACKS, None) or {}).get(name)
            if used is not None:
                why = f"{why} ({used.source}, replacing {used.error_class})"
        facet = f'{layout.end_head[i]}{status}","attempts":{int(attempts)}' + (
            f',"reason":{json.dumps(why)}}}' if why else "}"
        )
        if etype == "FAIL":
            facet_ = ev.error_facet(self.producer, error, tb, self.describe, self.redact)
            facet += ',"errorMessage":' + json.dumps(facet_)
        outs = layout.declared[i]
        if status in _WITH_OUTPUT:
            cls = self.stash.get(CLASSIFICATION, None)
            entry = cls.outputs.get(name) if cls is not None else None
            if entry is not None:
                outs = self._classified(layout, i, name, entry)
        out.append(
            f'{{"eventType":"{etype}","eventTime":"{ev.iso(ts)}{self._ev_mid}{rid}'
            f"{self._ev_facets}{facet}{layout.end_tail[i]}{outs}}}"
        )

    def _classified(self, layout: Layout, i: int, name: str, entry: OutputLevel) -> str:
        """The event's ``outputs`` with ``entry``'s classification facet, as JSON. An output
        without declared datasets (the usual case) is assembled from its facets' text,
        rendered once per distinct classification of the run: the same text as
        ``json.dumps`` of :meth:`_classified_outputs`."""
        if layout.has_outputs[i]:
            return json.dumps(self._classified_outputs(name))
        seen = self._cls_seen.get(id(entry))
        if seen is not None and seen[0] is entry:
            facets = seen[1]
        else:
            key = (entry.level, entry.declared, entry.detected)
            got = self._cls_facets.get(key)
            if got is None:
                facet = ev.classification_facet(self.producer, entry)
                got = self._cls_facets[key] = json.dumps({ev.CLASSIFICATION_FACET: facet})
            self._cls_seen[id(entry)] = (entry, got)
            facets = got
        return f"{layout.classified_head[i]}{facets}}}]"

    def _classified_json(self, name: str) -> str:
        """The ``outputs`` text of ``name``'s terminal event when classified (``""``: the
        output is not classified)."""
        cls = self.stash.get(CLASSIFICATION, None)
        entry = cls.outputs.get(name) if cls is not None else None
        if entry is None:
            return ""
        layout, i, _ = self._locate(name)
        return self._classified(layout, i, name, entry)

    def _classified_outputs(self, name: str) -> list[dict[str, Any]] | None:
        """Outputs with the classification facet, read from ``run.stash[CLASSIFICATION]``."""
        cls = self.stash.get(CLASSIFICATION, None)
        entry = cls.outputs.get(name) if cls is not None else None
        if entry is None:
            return None
        facet = ev.classification_facet(self.producer, entry)
        declared = self.datasets.get(name, ((), ()))[1]
        targets = list(declared) or [
            {"namespace": self.namespace, "name": f"{self.pipeline}.{name}.result"}
        ]
        outs = []
        for d in targets:
            d2 = dict(d)
            d2["facets"] = {**(d.get("facets") or {}), ev.CLASSIFICATION_FACET: facet}
            outs.append(d2)
        return outs

    def _pipeline_event(
        self, etype: str, ts: float, status: str, error: BaseException | None = None
    ) -> str:
        p = self.producer
        facets: dict[str, Any] = {
            ev.RUN_FACET: ev.xlib_facet(
                p,
                kind="pipeline",
                status=status,
                tenant=self.tenant,
                executor=self.executor,
                params=self.params,
            ),
            "processing_engine": json.loads(self._engine),
        }
        if self.nominal is not None:
            facets["nominalTime"] = ev.nominal_time_facet(p, self.nominal)
        if etype == "FAIL":
            facets["errorMessage"] = ev.error_facet(p, error, None, self.describe)
        return json.dumps(
            ev.run_event(
                etype,
                ts,
                run_id=self.run_id,
                namespace=self.namespace,
                job=self.pipeline,
                producer=p,
                run_facets=facets,
                job_facets={"jobType": ev.job_type_facet(p, "DAG")},
            ),
            separators=(",", ":"),
        )

    def build(self, rec: tuple[Any, ...], out: list[str]) -> None:
        """Turn one queued record into zero or more events (emitter thread)."""
        kind = rec[0]
        if kind == "S":
            if rec[1] not in self.started:
                self._start(rec[1], rec[2], out)
        elif kind == "E":
            self._end(rec[1], rec[2], rec[3], rec[4], rec[5], rec[6], out)
        elif kind == "PS":
            out.append(self._pipeline_event("START", rec[1], "running"))
        elif kind == "PE":
            status, error, ts = rec[1], rec[2], rec[3]
            if status != "refused":
                for name in self.tasks:  # tasks abandoned without an outcome
                    if name not in self.ended:
                        self._end(
                            name,
                            "cancelled",
                            None,
                            None,
                            0,
                            ts,
                            out,
                            reason="the run ended without an outcome for this task",
                        )
            etype = {"succeeded": "COMPLETE", "cancelled": "ABORT"}.get(status, "FAIL")
            out.append(self._pipeline_event(etype, ts, status, error))


#: This plugin's per-run state.
LINEAGE_RUN: StashKey[RunState] = StashKey("lineage")
