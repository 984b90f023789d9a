"""The lineage plugin: OpenLineage START/COMPLETE/FAIL/ABORT events for runs and task runs.

Hot path: ``before_task``/``after_task`` append one tuple to the run's queue; a background
thread builds the events (run ids, facets, datasets) and writes them in batches;
``after_pipeline`` waits until everything of the run is written.

Event rules (see docs/plugins/lineage.md):

* every task run that reaches an outcome has exactly one START and exactly one terminal
  event: COMPLETE (succeeded), FAIL (failed, with an ``errorMessage`` facet) or ABORT
  (skipped, upstream_failed, cancelled; the ``xlibPipeline_run`` facet says which). A task
  that never ran gets its START and its ABORT together, at the moment it was decided;
* retries: only the final attempt's outcome is terminal; the START is the first attempt's;
* the pipeline run gets START at ``before_pipeline`` and COMPLETE/FAIL/ABORT at
  ``after_pipeline``; a run refused before it started gets START and FAIL, no task events.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from xlib_pipeline import (
    CLASSIFICATION,
    FALLBACKS,
    CliCommand,
    ConfigKey,
    EvidenceSection,
    RunContext,
    StashKey,
    TaskOption,
    check_keys,
    data_dir,
    hookimpl,
)
from xlib_pipeline.exceptions import ConfigError

from . import _events as ev
from . import _evidence as evidence
from ._emit import Emitter, Sink

_SECTION_KEYS = ("enabled", "namespace", "transport", "producer", "include_stack_trace")
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


def _section(value: Any) -> dict[str, Any]:
    out = check_keys(
        value, _SECTION_KEYS, example="{'namespace': 'my-team', 'transport': {'type': 'file'}}"
    )
    for key in ("enabled", "include_stack_trace"):
        if key in out and not isinstance(out[key], bool):
            raise ValueError(f"{key!r} must be true or false, got {out[key]!r}")
    for key in ("namespace", "producer"):
        if key in out and (not isinstance(out[key], str) or not out[key]):
            raise ValueError(f"{key!r} must be a non-empty string, got {out[key]!r}")
    if "producer" in out and "://" not in out["producer"]:
        raise ValueError(f"'producer' must be a URI (https://...), got {out['producer']!r}")
    transport = out.get("transport")
    if transport is not None:
        if not isinstance(transport, Mapping) or not isinstance(transport.get("type"), str):
            raise ValueError(
                "'transport' must be a mapping with a 'type' (file, console, http, kafka ...), "
                f"got {transport!r}"
            )
        out["transport"] = dict(transport)
    return out


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _datasets_option(value: Any) -> Any:
    # validates without importing openlineage; the run names them with the configured namespace
    ev.parse_datasets(value, check_only=True)
    return value


def trigger_rule(task: Any) -> str:
    """The ``trigger_rule`` of a task's ``jobDependencies`` facet: ``ALL_SUCCESS`` (runs
    when every upstream succeeded; a skipped upstream skips it), ``NONE_FAILED`` for
    ``merge_strategy="collect_available"`` (runs when no upstream failed)."""
    if task is not None and task.merge_strategy == "collect_available":
        return "NONE_FAILED"
    return "ALL_SUCCESS"


class _RunState:
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
            job = d(self._job_prefix + name)
            ins_json = d(list(ins)) if ins else "[]"
            info = self._info[name] = (
                rid,
                job,
                d(name),
                ins_json,
                d(list(outs)) if outs else "[]",
                f'}}}},"job":{{"namespace":{self._ns},"name":{job},'
                f'"facets":{self._task_job_facets}}},"inputs":{ins_json},"outputs":',
            )
        return info

    def _task_event(
        self, etype: str, name: str, ts: float, facet: str, extra: str = "", outs: str = ""
    ) -> str:
        rid, _, _, _, declared, tail = self._task_info(name)
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
        out.append(self._task_event("START", name, ts, facet, extra))

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
        facet = (
            f'{self._xhead}"task":{self._task_info(name)[2]},"status":"{status}",'
            f'"attempts":{int(attempts)}' + (f',"reason":{json.dumps(why)}}}' if why else "}")
        )
        extra = ""
        if etype == "FAIL":
            facet_ = ev.error_facet(self.producer, error, tb, self.describe, self.redact)
            extra = ',"errorMessage":' + json.dumps(facet_)
        outs = ""
        if status in ("succeeded", "cached", "fallback") and CLASSIFICATION in self.stash:
            classified = self._classified_outputs(name)
            if classified is not None:
                outs = json.dumps(classified)
        out.append(self._task_event(etype, name, ts, facet, extra, outs))

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
LINEAGE_RUN: StashKey[_RunState] = StashKey("lineage")


class LineagePlugin:
    """OpenLineage run events for pipelines and tasks (``xlib-pipeline-lineage``)."""

    name = "lineage"

    def __init__(self) -> None:
        self.enabled = False
        self.namespace = ev.DEFAULT_NAMESPACE
        self.producer = ev.default_producer()
        self.include_stack = False
        #: The ``processing_engine`` run facet as JSON (versions read once, at configure).
        self.engine_facet = "{}"
        self.transport: dict[str, Any] = {}
        self._sink: Sink | None = None
        self._lock = threading.Lock()
        self._datasets: weakref.WeakKeyDictionary[Any, tuple[Any, dict[str, Any]]] = (
            weakref.WeakKeyDictionary()
        )

    # -- registration ----------------------------------------------------------------------

    @hookimpl
    def register_config_keys(self) -> Iterable[ConfigKey]:
        return (
            ConfigKey(
                name="lineage",
                convert=_section,
                doc="OpenLineage events: {namespace, transport: {type: file|console|http|..., "
                "...}, producer, include_stack_trace, enabled}.",
            ),
            ConfigKey(
                name="data_lineage",
                convert=_flag,
                doc="true: emit OpenLineage events with defaults (file data_dir()/lineage.jsonl).",
            ),
        )

    @hookimpl
    def register_task_options(self) -> Iterable[TaskOption]:
        return (
            TaskOption(
                name="inputs",
                convert=_datasets_option,
                doc="Datasets the task reads: 'namespace:name' strings or {namespace, name} dicts.",
            ),
            TaskOption(
                name="outputs",
                convert=_datasets_option,
                doc="Datasets the task writes: 'namespace:name' strings or {namespace, name} "
                "dicts.",
            ),
        )

    @hookimpl
    def register_cli_commands(self) -> Iterable[CliCommand]:
        from ._graph import add_arguments, run_cli

        return (
            CliCommand(
                name="lineage",
                help="show the OpenLineage graph of a run (Mermaid)",
                add_arguments=add_arguments,
                run=run_cli,
            ),
        )

    @hookimpl
    def configure(self, manager: Any, config: Any) -> None:
        section = config.get("lineage")
        flag = config.get("data_lineage")
        if flag is False or (section is None and not flag):
            return  # nothing registered: no per-run or per-task cost
        section = dict(section or {})
        if not section.get("enabled", True):
            return
        self.enabled = True
        self.namespace = section.get("namespace", ev.DEFAULT_NAMESPACE)
        self.producer = section.get("producer") or ev.default_producer()
        self.include_stack = bool(section.get("include_stack_trace", False))
        self.engine_facet = json.dumps(ev.processing_engine_facet(self.producer))
        transport = dict(section.get("transport") or {"type": "file"})
        if transport.get("type") == "file" and not (
            transport.get("path") or transport.get("log_file_path")
        ):
            transport["path"] = str(data_dir() / "lineage.jsonl")
        self.transport = transport
        try:
            self._sink = Sink(transport)
        except Exception as exc:
            raise ConfigError(
                f"config key 'lineage.transport': cannot build the {transport.get('type')!r} "
                f"transport: {type(exc).__name__}: {exc}",
                key="lineage.transport",
            ) from exc
        manager.register(_Recorder(self), name="lineage.recorder")

    @property
    def path(self) -> Any:
        """The file the file transport writes (``None`` for other transports)."""
        return self._sink.path if self._sink is not None else None

    def sink(self) -> Sink:
        """The manager's transport (built at configure)."""
        assert self._sink is not None
        return self._sink

    def datasets_for(self, run: RunContext) -> dict[str, Any]:
        """Parsed ``inputs``/``outputs`` per task of ``run`` (cached per pipeline version)."""
        cached = self._datasets.get(run.pipeline)
        if cached is not None and cached[0] is run.tasks:
            return cached[1]
        out: dict[str, Any] = {}
        ns = self.namespace
        for t in run.tasks:
            opts = t.options
            if "inputs" in opts or "outputs" in opts:
                out[t.name] = (
                    tuple(ev.parse_datasets(opts.get("inputs"), ns)),
                    tuple(ev.parse_datasets(opts.get("outputs"), ns)),
                )
        with self._lock:
            self._datasets[run.pipeline] = (run.tasks, out)
        return out

    @hookimpl
    def collect_evidence(
        self, manager: Any, run_id: str, run: RunContext | None
    ) -> EvidenceSection | None:
        """Event counts and datasets; with ``run=None`` also ``lineage.jsonl``."""
        if not self.enabled:
            return None
        if run is not None:
            state = run.stash.get(LINEAGE_RUN, None)
            if state is None:
                return None
            facts = evidence.from_state(state)
            if self.path is not None:
                facts["file"] = str(self.path)
            return EvidenceSection(name="lineage", facts=facts)
        if self.path is None:
            return None
        got = evidence.from_file(self.path, run_id, self.namespace)
        if got is None:
            return None
        return EvidenceSection(name="lineage", facts=got["facts"], files=got["files"])

    @hookimpl
    def close(self, manager: Any) -> None:
        if self._sink is not None:
            self._sink.close()


class _Recorder:
    """The per-run and per-task hooks, registered by ``configure`` when lineage is on."""

    def __init__(self, plugin: LineagePlugin) -> None:
        self.p = plugin

    @hookimpl
    def stream_event(self, stream: Any, event: str, info: Any) -> None:
        from ._streams import stream_event

        p = self.p
        line = stream_event(stream, event, info, namespace=p.namespace, producer=p.producer)
        if line is not None:
            p.sink().write([line])

    @hookimpl
    def before_pipeline(self, run: Any) -> None:
        if "stream" in run.params:  # a stream's batch belongs to the stream's run
            return
        state = _RunState(self.p, run)
        run.stash[LINEAGE_RUN] = state
        state.emitter.put(("PS", run.started))

    @hookimpl
    def before_task(self, task: Any, run: Any, inputs: tuple[Any, ...]) -> None:
        state = run.stash.get(LINEAGE_RUN, None)
        if state is not None:
            state.emitter.put(("S", task.name, time.time()))

    @hookimpl
    def after_task(self, task: Any, run: Any, outcome: Any) -> None:
        if not outcome.final:
            return
        state = run.stash.get(LINEAGE_RUN, None)
        if state is not None:
            state.emitter.put(
                (
                    "E",
                    task.name,
                    outcome.status.value,
                    outcome.error,
                    outcome.traceback if state.include_stack else None,
                    outcome.attempt,
                    outcome.finished or time.time(),
                )
            )

    @hookimpl
    def after_pipeline(self, run: Any, result: Any) -> None:
        if "stream" in run.params:
            return
        state = run.stash.get(LINEAGE_RUN, None)
        if state is None:  # refused before before_pipeline ran
            state = _RunState(self.p, run)
            run.stash[LINEAGE_RUN] = state
            state.emitter.put(("PS", result.started))
        state.emitter.put(("PE", result.status, result.error, result.finished or time.time()))
        state.emitter.finish()
        if state.emitter.errors and run.log is not None:
            err = state.emitter.errors[0]
            run.log.warning(
                "lineage.emit_failed",
                errors=len(state.emitter.errors),
                error=f"{type(err).__name__}: {err}",
            )
