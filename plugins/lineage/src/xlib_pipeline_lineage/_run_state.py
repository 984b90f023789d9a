"""Per-run lineage state: the OpenLineage events of one run, built on the emitter thread
from JSON fragments serialised once per run and once per task (see ``_plugin``)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from xlib_pipeline import CLASSIFICATION, FALLBACKS, StashKey

from . import _events as ev
from ._emit import Emitter

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


def trigger_rule(task: Any) -> str:
    """The ``trigger_rule`` of a task's ``jobDependencies`` facet: ``ALL_SUCCESS`` (runs
    when every upstream succeeded; a skipped upstream skips it), ``NONE_FAILED`` for
    ``merge_strategy="collect_available"`` (runs when no upstream failed)."""
    if task is not None and task.merge_strategy == "collect_available":
        return "NONE_FAILED"
    return "ALL_SUCCESS"


class RunState:
    """Per-run lineage state; all mutable parts are touched by the emitter thread only.

    Events are written as JSON text assembled from fragments serialised once per run (the
    parent facet, producer, namespace) and once per task (run id, job name, datasets), so
    each event costs a string format plus the parts that really vary.
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
        self._downstream: dict[str, list[str]] | None = None  # built on the emitter thread
        self.datasets = plugin.datasets_for(run)
        self.started: set[str] = set()
        self.ended: set[str] = set()
        #: task name -> OpenLineage runId of its task run (the recorded mapping).
        self.task_run_ids: dict[str, str] = {}
        self._info: dict[str, tuple[str, str, str, str, str, str]] = {}
        self._ns_bytes = uuid.UUID(self.run_id).bytes
        p = self.producer
        self._head = f'"producer":{d(p)},"schemaURL":{d(ev.EVENT_SCHEMA)}'
        self._parent = d(ev.parent_facet(p, self.run_id, self.namespace, self.pipeline))
        self._xhead = f'{{"_producer":{d(p)},"_schemaURL":{d(ev.RUN_FACET_SCHEMA)},"kind":"task",'
        self._ns = d(self.namespace)
        self._job_prefix = self.pipeline + "."
        # standard facets: jobType on every event's job, processing_engine on run STARTs
        self._task_job_facets = '{"jobType":' + d(ev.job_type_facet(p, "TASK")) + "}"
        self._engine = plugin.engine_facet
        # jobDependencies: its head, and one fragment per task run it names (built once)
        self._deps_head = (
            f'{{"_producer":{d(p)},"_schemaURL":{d(ev.schema("JOB_DEPENDENCIES_SCHEMA"))},'
            '"upstream":['
        )
        self._dep_ns = f'{{"job":{{"namespace":{self._ns},"name":'
        self._dep_tail = (
            '"dependency_type":"DIRECT_INVOCATION","sequence_trigger_rule":"FINISH_TO_START",'
            '"status_trigger_rule":"EXECUTE_ON_SUCCESS"}'
        )
        self._deps: dict[str, str] = {}
        # a task event's text around its variable parts (see _task_event)
        self._ev_mid = f'",{self._head},"run":{{"runId":"'
        self._ev_facets = f'","facets":{{"parent":{self._parent},"{ev.RUN_FACET}":'
        # classified outputs: the facets' JSON per distinct classification of the run
        self._cls_facets: dict[tuple[str, str | None, tuple[str, ...]], str] = {}
        self.emitter = Emitter(plugin.sink(), self.build)

    # -- event building (emitter thread) -------------------------------------------------

    def _task_info(self, name: str) -> tuple[str, str, str, str, str, str]:
        """(run id, job name JSON, task name JSON, inputs JSON, declared outputs JSON, the
        event text from the end of the run facets to ``"outputs":``), built once per task."""
        info = self._info.get(name)
        if info is None:
            d = json.dumps
            rid = self.task_run_ids[name] = ev.fast_uuid5(self._ns_bytes, name)
            ins, outs = self.datasets.get(name, ((), ()))
            job = ev.quote(self._job_prefix + name)
            ins_json = d(list(ins)) if ins else "[]"
            info = self._info[name] = (
                rid,
                job,
                ev.quote(name),
                ins_json,
                d(list(outs)) if outs else "[]",
                f'}}}},"job":{{"namespace":{self._ns},"name":{job},'
                f'"facets":{self._task_job_facets}}},"inputs":{ins_json},"outputs":',
            )
        return info

    def _task_event(
        self,
        etype: str,
        info: tuple[str, str, str, str, str, str],
        ts: float,
        facet: str,
        extra: str = "",
        outs: str = "",
    ) -> str:
        """One task event's text; ``info`` is the task's :meth:`_task_info`."""
        rid, _, _, _, declared, tail = info
        return (
            f'{{"eventType":"{etype}","eventTime":"{ev.iso(ts)}{self._ev_mid}{rid}'
            f"{self._ev_facets}{facet}{extra}{tail}{outs or declared}}}"
        )

    def _dep(self, name: str) -> str:
        """One entry of a jobDependencies facet naming ``name``'s task run (as JSON)."""
        dep = self._deps.get(name)
        if dep is None:
            rid, job = self._task_info(name)[:2]
            dep = self._deps[name] = (
                f'{self._dep_ns}{job}}},"run":{{"runId":"{rid}"}},{self._dep_tail}'
            )
        return dep

    def job_dependencies(self, name: str) -> str:
        """The ``jobDependencies`` run facet of ``name``'s task run, as JSON: the same facet
        as :func:`._events.job_dependencies_facet`, from fragments built once per task."""
        down = self._downstream
        if down is None:
            down = self._downstream = {}
            for t in self.tasks.values():
                for up in t.depends_on:
                    down.setdefault(up, []).append(t.name)
        task = self.tasks.get(name)
        dep = self._dep
        ups = ",".join([dep(t) for t in task.depends_on]) if task is not None else ""
        downs = ",".join([dep(t) for t in down.get(name, ())])
        rule = trigger_rule(task)
        return f'{self._deps_head}{ups}],"downstream":[{downs}],"trigger_rule":"{rule}"}}'

    def _start(self, name: str, ts: float, out: list[str]) -> None:
        self.started.add(name)
        info = self._task_info(name)
        facet = f'{self._xhead}"task":{info[2]},"status":"running"}}'
        extra = (
            f',"jobDependencies":{self.job_dependencies(name)},"processing_engine":{self._engine}'
        )
        out.append(self._task_event("START", info, ts, facet, extra))

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
        etype = _TERMINAL.get(status, "ABORT")
        why = reason or _REASONS.get(status)
        if status == "fallback":
            used = (self.stash.get(FALLBACKS, None) or {}).get(name)
            if used is not None:
                why = f"{why} ({used.source}, replacing {used.error_class})"
        info = self._task_info(name)
        facet = f'{self._xhead}"task":{info[2]},"status":"{status}","attempts":{int(attempts)}' + (
            f',"reason":{json.dumps(why)}}}' if why else "}"
        )
        extra = ""
        if etype == "FAIL":
            facet_ = ev.error_facet(self.producer, error, tb, self.describe, self.redact)
            extra = ',"errorMessage":' + json.dumps(facet_)
        outs = ""
        if status in ("succeeded", "cached", "fallback") and CLASSIFICATION in self.stash:
            outs = self._classified_json(name)
        out.append(self._task_event(etype, info, ts, facet, extra, outs))

    def _classified_json(self, name: str) -> str:
        """The event's ``outputs`` with the classification facet, as JSON (``""``: the
        output is not classified). An output without declared datasets (the usual case)
        is assembled from its facets' text, rendered once per distinct classification of
        the run: the same text as ``json.dumps`` of :meth:`_classified_outputs`."""
        cls = self.stash.get(CLASSIFICATION, None)
        entry = cls.outputs.get(name) if cls is not None else None
        if entry is None:
            return ""
        if self.datasets.get(name, ((), ()))[1]:
            return json.dumps(self._classified_outputs(name))
        key = (entry.level, entry.declared, entry.detected)
        facets = self._cls_facets.get(key)
        if facets is None:
            facet = ev.classification_facet(self.producer, entry)
            facets = self._cls_facets[key] = json.dumps({ev.CLASSIFICATION_FACET: facet})
        result = ev.quote(f"{self.pipeline}.{name}.result")
        return f'[{{"namespace": {self._ns}, "name": {result}, "facets": {facets}}}]'

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
