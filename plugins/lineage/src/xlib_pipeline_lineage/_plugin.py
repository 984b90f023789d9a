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
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

from xlib_pipeline import (
    CliCommand,
    ConfigKey,
    EvidenceSection,
    RunContext,
    TaskOption,
    check_keys,
    data_dir,
    hookimpl,
)
from xlib_pipeline.exceptions import ConfigError

from . import _events as ev
from . import _evidence as evidence
from ._emit import Sink, WriteError, report
from ._emit import _log as _emit_log
from ._layout import Layout
from ._run_state import LINEAGE_RUN, RunState
from ._stream_writer import StreamWriter
from ._streams import stream_event

_SECTION_KEYS = ("enabled", "namespace", "transport", "producer", "include_stack_trace")


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
        self._recorder: _Recorder | None = None
        self._lock = threading.Lock()
        self._datasets: weakref.WeakKeyDictionary[Any, tuple[Any, dict[str, Any]]] = (
            weakref.WeakKeyDictionary()
        )
        self._layouts: weakref.WeakKeyDictionary[Any, Layout] = weakref.WeakKeyDictionary()

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
        return (
            CliCommand(
                name="lineage",
                help="show the OpenLineage graph of a run (Mermaid)",
                add_arguments=_cli_arguments,
                run=_cli_run,
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
        self._recorder = _Recorder(self)
        manager.register(self._recorder, name="lineage.recorder")

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

    def layout_for(
        self, pipeline: Any, key: tuple[Any, ...], tasks: Any, datasets: dict[str, Any]
    ) -> Layout:
        """The task events' text fixed per pipeline version (:class:`~._layout.Layout`),
        cached per pipeline and rebuilt when ``key`` (:func:`~._layout.layout_key`: the
        run's tasks, the pipeline's name, this plugin's settings) changes."""
        cached = self._layouts.get(pipeline)
        if cached is not None and cached.key[0] is key[0] and cached.key[1:] == key[1:]:
            return cached
        layout = Layout(
            key,
            tasks=tasks,
            pipeline=key[1],
            namespace=key[2],
            producer=key[3],
            engine=key[4],
            datasets=datasets,
        )
        with self._lock:
            self._layouts[pipeline] = layout
        return layout

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
        if self._recorder is not None:
            self._recorder.close()
        if self._sink is not None:
            self._sink.close()


class _Recorder:
    """The per-run and per-task hooks, registered by ``configure`` when lineage is on."""

    def __init__(self, plugin: LineagePlugin) -> None:
        self.p = plugin
        #: Each running stream's writer (see ``_stream_writer``): the file transport's file
        #: stays open from the stream's START to its end, and the events are written several
        #: per write, within HOLD_S + TICK_S of their batch's commit (a write per micro-batch
        #: cost more than building the event); the end event writes the rest and closes it.
        self.streams: weakref.WeakKeyDictionary[Any, StreamWriter] = weakref.WeakKeyDictionary()
        #: The state of each plain run between its before_ and after_pipeline, by run id
        #: (also ``run.stash[LINEAGE_RUN]``): the per-task hooks find it, or that the run is
        #: a stream's batch (none), with one dict lookup, not a call of ``Stash.get``.
        self.runs: dict[str, RunState] = {}
        #: (the stream of the last event, its writer): a stream's batches come one after
        #: the other, and the weak dictionary's lookup costs more than the event's noting
        self._last: tuple[weakref.ref[Any], StreamWriter] | None = None

    @hookimpl
    def stream_event(self, stream: Any, event: str, info: Any) -> None:
        p = self.p
        if event == "batch" and stream.stream_run_id:
            # noted now, built when written (see StreamWriter): a RUNNING event's text
            # depends only on the stream, the batch's info and this time
            noted: Any = (stream, info, time.time())
        else:
            noted = stream_event(stream, event, info, namespace=p.namespace, producer=p.producer)
            if noted is None:
                return
        last = self._last
        if last is not None and last[0]() is stream:  # the stream of the last event
            writer = last[1]
        else:
            found = self.streams.get(stream)
            if found is None:
                found = self.streams[stream] = StreamWriter(p.sink(), self._build)
            writer = found
            self._last = (weakref.ref(stream), writer)
        if event == "batch" or event == "started":
            writer.add(noted)  # a failed write fails the stream, as it always did
            return
        self._last = None
        self.streams.pop(stream, None)  # the stream ended
        writer.close(noted)

    def _build(self, noted: tuple[Any, Any, float]) -> str:
        """The text of a noted ``batch`` event (a RUNNING event)."""
        p = self.p
        stream, info, now = noted
        line = stream_event(
            stream, "batch", info, namespace=p.namespace, producer=p.producer, now=now
        )
        assert line is not None  # a batch of a stream with a run id
        return line

    def close(self) -> None:
        """Write the events of streams still open and close their files (the manager is
        closing; a failed write is logged, as a run's is, not raised)."""
        self._last = None
        while self.streams:
            _, writer = self.streams.popitem()
            try:
                writer.close()
            except WriteError as exc:
                _emit_log.warning(
                    "lineage.emit_failed file=%s errno=%s error=%s", exc.where, exc.errno, exc
                )

    @hookimpl
    def before_pipeline(self, run: Any) -> None:
        if "stream" in run.params:  # a stream's batch belongs to the stream's run
            return
        state = RunState(self.p, run)
        run.stash[LINEAGE_RUN] = state
        self.runs[run.run_id] = state
        state.emitter.put(("PS", run.started))

    @hookimpl
    def before_task(self, task: Any, run: Any, inputs: tuple[Any, ...]) -> None:
        state = self.runs.get(run.run_id)
        if state is not None:
            state.emitter.put(("S", task.name, time.time()))

    @hookimpl
    def after_task(self, task: Any, run: Any, outcome: Any) -> None:
        if not outcome.final:
            return
        state = self.runs.get(run.run_id)
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
        self.runs.pop(run.run_id, None)
        state = run.stash.get(LINEAGE_RUN, None)
        if state is None:  # refused before before_pipeline ran
            state = RunState(self.p, run)
            run.stash[LINEAGE_RUN] = state
            state.emitter.put(("PS", result.started))
        state.emitter.put(("PE", result.status, result.error, result.finished or time.time()))
        state.emitter.finish()
        report(state.emitter, run.log)


def _cli_arguments(parser: Any) -> None:
    """The command's arguments (its module is imported when the command is chosen)."""
    from ._graph import add_arguments

    add_arguments(parser)


def _cli_run(args: Any) -> int:
    from ._graph import run_cli

    return int(run_cli(args))
