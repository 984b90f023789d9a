"""The task events the emitter assembles as text (a pipeline's layout, cached across its
runs, plus each run's ids and each event's own fields) are the events built as dicts by
``_events``'s facet builders and serialised by ``json.dumps``: for arbitrary task names,
namespaces, edges, merge strategies, declared datasets, classifications, outcomes, orders
of arrival and runs of one pipeline; and a run's events are written whole however many
writes they take."""

from __future__ import annotations

import json
import uuid
from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from xlib_pipeline_lineage import LineagePlugin, task_run_id
from xlib_pipeline_lineage import _emit as emit
from xlib_pipeline_lineage import _events as ev
from xlib_pipeline_lineage._run_state import RunState

from xlib_pipeline import CLASSIFICATION, Pipeline, PipelineManager
from xlib_pipeline._records import Classification, OutputLevel, Stash

_PRODUCER = "https://example.invalid/lineage/"
_STATUSES = ["succeeded", "cached", "fallback", "failed", "skipped", "upstream_failed", "cancelled"]
_TERMINAL = {
    "succeeded": "COMPLETE",
    "cached": "COMPLETE",
    "fallback": "COMPLETE",
    "failed": "FAIL",
}
_REASONS = {
    "skipped": "task skipped (condition false or an upstream was skipped)",
    "upstream_failed": "an upstream task failed",
    "cancelled": "run cancelled before the task started",
    "cached": "output served from the result cache; the task did not run",
    "fallback": "the task failed; its fallback supplied the output",
}
_ABANDONED = "the run ended without an outcome for this task"


class _Task:
    def __init__(self, name: str, ups: tuple[str, ...], merge: str | None, opts: Any) -> None:
        self.name = name
        self.depends_on = ups
        self.merge_strategy = merge
        self.options = opts


class _Pipeline:
    """The run's pipeline: the key the layout is cached under (weakly)."""

    def __init__(self, name: str) -> None:
        self.name = name


class _NullSink:
    """The emitter's sink, never written to (the test builds events itself)."""

    def batch(self) -> _NullSink:
        return self

    def write(self, events: list[str]) -> None:
        raise AssertionError("not written")

    def close(self) -> None:
        pass


_names = st.lists(
    st.text(min_size=1, max_size=6) | st.sampled_from(['a"b', "t\\1", "é", "x.y"]),
    min_size=1,
    max_size=6,
    unique=True,
)
_levels = st.sampled_from(["public", "internal", "confidential", "restricted"])
_entry = st.builds(
    OutputLevel,
    level=_levels,
    declared=st.none() | _levels,
    inherited_from=st.none(),
    detected=st.lists(st.sampled_from(["email", "ssn"]), unique=True).map(tuple),
)
_dataset = st.sampled_from(["warehouse:orders", "lake:clean", "plain", "s:ü"])


@st.composite
def _pipelines(draw: Any) -> tuple[list[_Task], str]:
    names = draw(_names)
    tasks = []
    for k, name in enumerate(names):
        ups = tuple(draw(st.lists(st.sampled_from(names[:k]), unique=True))) if k else ()
        opts: dict[str, Any] = {}
        if draw(st.booleans()):
            opts["inputs"] = draw(st.lists(_dataset, max_size=2))
            opts["outputs"] = draw(st.lists(_dataset, max_size=2))
        merge = draw(st.sampled_from([None, "collect_available"]))
        tasks.append(_Task(name, ups, merge, opts))
    return tasks, draw(st.text(min_size=1, max_size=5))


@st.composite
def _records(draw: Any, names: list[str]) -> list[tuple[Any, ...]]:
    """Records as the hooks queue them: a START and/or an end per task, in any order;
    some tasks get none (abandoned: the run's end cancels them)."""
    recs: list[tuple[Any, ...]] = []
    ts = st.floats(min_value=1e9, max_value=2e9)
    for name in names:
        kind = draw(st.sampled_from(["both", "start", "end", "none"]))
        if kind in ("both", "start"):
            recs.append(("S", name, draw(ts)))
        if kind in ("both", "end"):
            status = draw(st.sampled_from(_STATUSES))
            error = ValueError(draw(st.text(max_size=8))) if status == "failed" else None
            attempts = draw(st.integers(min_value=0, max_value=3))
            recs.append(("E", name, status, error, None, attempts, draw(ts)))
    order = draw(st.permutations(range(len(recs))))
    return [recs[k] for k in order]


def _expected(
    tasks: list[_Task], pipeline: str, ns: str, run_id: str, recs: list[Any], stash: Stash
) -> list[dict[str, Any]]:
    """The task events as dicts, built by ``_events``'s general builders."""
    p = _PRODUCER
    own = {t.name: t for t in tasks}
    downs: dict[str, list[str]] = {}
    for t in tasks:
        for up in t.depends_on:
            downs.setdefault(up, []).append(t.name)

    def rid(name: str) -> str:
        return task_run_id(run_id, name)

    def datasets(name: str, key: str) -> list[dict[str, Any]]:
        return ev.parse_datasets(own[name].options.get(key), ns)

    def event(etype: str, name: str, ts: float, facets: dict[str, Any], outs: Any) -> Any:
        return ev.run_event(
            etype,
            ts,
            run_id=rid(name),
            namespace=ns,
            job=f"{pipeline}.{name}",
            producer=p,
            run_facets={"parent": ev.parent_facet(p, run_id, ns, pipeline), **facets},
            job_facets={"jobType": ev.job_type_facet(p, "TASK")},
            inputs=datasets(name, "inputs"),
            outputs=outs,
        )

    def start(name: str, ts: float) -> Any:
        t = own[name]
        rule = "NONE_FAILED" if t.merge_strategy == "collect_available" else "ALL_SUCCESS"
        deps = ev.job_dependencies_facet(
            p, ns, pipeline, run_id, t.depends_on, downs.get(name, []), rid, rule
        )
        facets = {
            ev.RUN_FACET: ev.xlib_facet(p, kind="task", task=name, status="running"),
            "jobDependencies": deps,
            "processing_engine": ev.processing_engine_facet(p),
        }
        return event("START", name, ts, facets, datasets(name, "outputs"))

    def end(name: str, status: str, error: Any, attempts: int, ts: float, why: Any) -> Any:
        facets: dict[str, Any] = {
            ev.RUN_FACET: ev.xlib_facet(
                p, kind="task", task=name, status=status, attempts=attempts, reason=why
            )
        }
        etype = _TERMINAL.get(status, "ABORT")
        if etype == "FAIL":
            facets["errorMessage"] = ev.error_facet(p, error, None, lambda e: f"said: {e}")
        outs: Any = datasets(name, "outputs")
        entry = stash[CLASSIFICATION].outputs.get(name)
        if etype == "COMPLETE" and entry is not None:
            facet = {ev.CLASSIFICATION_FACET: ev.classification_facet(p, entry)}
            outs = [{**d, "facets": {**d.get("facets", {}), **facet}} for d in outs] or [
                {"namespace": ns, "name": f"{pipeline}.{name}.result", "facets": facet}
            ]
        return event(etype, name, ts, facets, outs)

    out: list[Any] = []
    started: set[str] = set()
    ended: set[str] = set()

    def finish(name: str, status: str, error: Any, attempts: int, ts: float, why: Any) -> None:
        if name in ended:
            return
        if name not in started:
            started.add(name)
            out.append(start(name, ts))
        ended.add(name)
        out.append(end(name, status, error, attempts, ts, why))

    for rec in recs:
        if rec[0] == "S" and rec[1] not in started:
            started.add(rec[1])
            out.append(start(rec[1], rec[2]))
        elif rec[0] == "E":
            finish(rec[1], rec[2], rec[3], rec[5], rec[6], _REASONS.get(rec[2]))
        elif rec[0] == "PE":
            for t in tasks:
                finish(t.name, "cancelled", None, 0, rec[3], _ABANDONED)
    return out


@settings(max_examples=120, deadline=None)
@given(data=st.data(), shape=_pipelines(), namespace=st.text(min_size=1, max_size=5))
def test_task_events_are_the_general_builders(data: Any, shape: Any, namespace: str) -> None:
    tasks, pipeline_name = shape
    plugin = LineagePlugin()
    plugin.namespace = namespace
    plugin.producer = _PRODUCER
    plugin.engine_facet = json.dumps(ev.processing_engine_facet(_PRODUCER))
    plugin._sink = _NullSink()  # type: ignore[assignment]
    manager = SimpleNamespace(
        redact=lambda text, tenant: text, describe_error=lambda err, tenant: f"said: {err}"
    )
    pipeline = _Pipeline(pipeline_name)
    for k in range(3):
        # the second run of the pipeline takes the cached layout; the third may run other
        # tasks under the same pipeline (a new version: the layout is built again)
        if k == 2 and data.draw(st.booleans()):
            tasks = data.draw(_pipelines())[0]
        names = [t.name for t in tasks]
        run_id = str(uuid.uuid4())
        stash = Stash()
        outputs = data.draw(st.dictionaries(st.sampled_from(names), _entry))
        stash[CLASSIFICATION] = Classification(levels=(), outputs=outputs)
        run = SimpleNamespace(
            pipeline=pipeline,
            pipeline_name=pipeline_name,
            run_id=run_id,
            tenant_id=None,
            executor="threads",
            recorded_params=dict,
            params={},
            logical_date=None,
            manager=manager,
            stash=stash,
            tasks=tuple(tasks),
        )
        recs = data.draw(_records(names))
        recs.append(("PE", "succeeded", None, 1.5e9))
        state = RunState(plugin, run)
        try:
            lines: list[str] = []
            for rec in recs:
                state.build(rec, lines)
        finally:
            state.emitter.finish()
        lines.pop()  # the pipeline's own event
        expected = _expected(tasks, pipeline_name, namespace, run_id, recs, stash)
        # same fields, values and order (json.dumps keeps the order it reads)
        assert [json.dumps(json.loads(line)) for line in lines] == [json.dumps(e) for e in expected]
        assert state.task_run_ids == {n: task_run_id(run_id, n) for n in names}


def test_a_run_is_written_whole_in_many_writes(tmp_path: Any, monkeypatch: Any) -> None:
    """More events than one write holds: every line whole and in order, the file opened
    once per emitter batch; a second run appends."""
    monkeypatch.setattr(emit, "LINES_PER_WRITE", 3)
    opened: list[str] = []
    real = emit.batched_file_transport().open_lines

    def counting(self: Any) -> Any:
        opened.append(self.config.log_file_path)
        return real(self)

    monkeypatch.setattr(emit.batched_file_transport(), "open_lines", counting)
    path = tmp_path / "lineage.jsonl"
    p = Pipeline("many")
    for k in range(20):
        p.task(name=f"t{k}", depends_on=[f"t{k - 1}"] if k else [])(lambda *a: None)
    pm = PipelineManager({"lineage": {"transport": {"type": "file", "path": str(path)}}})
    try:
        for _ in range(2):
            assert pm.execute_pipeline(p).success
    finally:
        pm.close()
    lines = path.read_text().splitlines()
    events = [json.loads(line) for line in lines]  # every line whole
    assert len(events) == 2 * (2 + 2 * 20)
    for half in (events[:42], events[42:]):
        assert half[0]["job"]["name"] == half[-1]["job"]["name"] == "many"
        tasks = [e["job"]["name"] for e in half[1:-1]]
        assert sorted(tasks) == sorted([f"many.t{k}" for k in range(20)] * 2)
    assert 2 <= len(opened) < 2 * (2 + 2 * 20) / 3  # per batch, not per write
