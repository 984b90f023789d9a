"""A pipeline's task events as text around their run-dependent parts, built once per
pipeline version (not per run) and shared by its runs.

A task event's text is fixed by the pipeline and the plugin's settings except for the
event time, the run ids (the task run's own, and in a START's ``jobDependencies`` those
of the tasks it names: UUIDv5s of the pipeline run id) and the outcome. :class:`Layout`
holds every other part, per task, in the order of the run's tasks (and after them any
task a ``depends_on`` names that the run does not hold); ``_run_state.RunState`` puts in
the run ids (computed for every task at once when its first task event is built) and the
event's own fields. The text is the one the fragments of ``_run_state`` were assembled
into before (see ``tests/test_lineage_render.py``: equal to the events built as dicts by
``_events`` and serialised by ``json.dumps``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from . import _events as ev


def trigger_rule(task: Any) -> str:
    """The ``trigger_rule`` of a task's ``jobDependencies`` facet: ``ALL_SUCCESS`` (runs
    when every upstream succeeded; a skipped upstream skips it), ``NONE_FAILED`` for
    ``merge_strategy="collect_available"`` (runs when no upstream failed)."""
    if task is not None and task.merge_strategy == "collect_available":
        return "NONE_FAILED"
    return "ALL_SUCCESS"


#: The end of a ``jobDependencies`` entry after the run id it names.
DEP_TAIL = (
    '"},"dependency_type":"DIRECT_INVOCATION","sequence_trigger_rule":"FINISH_TO_START",'
    '"status_trigger_rule":"EXECUTE_ON_SUCCESS"}'
)


class Layout:
    """Per task (by index): the event text that does not depend on the run.

    ``names`` are the run's tasks in order, then any other task named by a ``depends_on``
    (they only appear in ``jobDependencies``). ``index`` maps a name to its position.
    """

    __slots__ = (
        "classified_head",
        "declared",
        "dep_head",
        "downs",
        "end_head",
        "end_tail",
        "has_outputs",
        "index",
        "key",
        "names",
        "qname",
        "start_head",
        "start_tail",
        "ups",
    )

    def __init__(
        self,
        key: tuple[Any, ...],
        *,
        tasks: Sequence[Any],
        pipeline: str,
        namespace: str,
        producer: str,
        engine: str,
        datasets: dict[str, Any],
    ) -> None:
        d = json.dumps
        #: What the layout was built for (the cache's check).
        self.key = key
        names = [t.name for t in tasks]
        index = {n: i for i, n in enumerate(names)}
        for t in tasks:
            for up in t.depends_on:
                if up not in index:
                    index[up] = len(names)
                    names.append(up)
        self.names: tuple[str, ...] = tuple(names)
        self.index = index
        own = {t.name: t for t in tasks}
        downs: list[list[int]] = [[] for _ in names]
        for t in tasks:
            i = index[t.name]
            for up in t.depends_on:
                downs[index[up]].append(i)
        self.downs: tuple[tuple[int, ...], ...] = tuple(tuple(x) for x in downs)
        self.ups: tuple[tuple[int, ...], ...] = tuple(
            tuple(index[u] for u in own[n].depends_on) if n in own else () for n in names
        )
        ns = d(namespace)
        job_facets = '{"jobType":' + d(ev.job_type_facet(producer, "TASK")) + "}"
        prefix = pipeline + "."
        self.qname: tuple[str, ...] = tuple(ev.quote(n) for n in names)
        xhead = f'{{"_producer":{d(producer)},"_schemaURL":{d(ev.RUN_FACET_SCHEMA)},"kind":"task",'
        deps_head = (
            f'"jobDependencies":{{"_producer":{d(producer)},'
            f'"_schemaURL":{d(ev.schema("JOB_DEPENDENCIES_SCHEMA"))},"upstream":['
        )
        #: A START's text from its run's facets to its upstream entries.
        self.start_head: tuple[str, ...] = tuple(
            f'{xhead}"task":{q},"status":"running"}},{deps_head}' for q in self.qname
        )
        #: A terminal event's text from its run's facets to its status.
        self.end_head: tuple[str, ...] = tuple(f'{xhead}"task":{q},"status":"' for q in self.qname)
        jobs = [ev.quote(prefix + n) for n in names]
        #: A ``jobDependencies`` entry up to the run id it names.
        self.dep_head: tuple[str, ...] = tuple(
            f'{{"job":{{"namespace":{ns},"name":{job}}},"run":{{"runId":"' for job in jobs
        )
        end_tail: list[str] = []
        declared: list[str] = []
        has_outputs: list[bool] = []
        start_tail: list[str] = []
        for n, job in zip(names, jobs, strict=True):
            ins, outs = datasets.get(n, ((), ()))
            tail = (
                f'}}}},"job":{{"namespace":{ns},"name":{job},"facets":{job_facets}}},'
                f'"inputs":{d(list(ins)) if ins else "[]"},"outputs":'
            )
            decl = d(list(outs)) if outs else "[]"
            end_tail.append(tail)
            declared.append(decl)
            has_outputs.append(bool(outs))
            rule = trigger_rule(own.get(n))
            start_tail.append(
                f'],"trigger_rule":"{rule}"}},"processing_engine":{engine}{tail}{decl}}}'
            )
        #: From the end of the run facets to ``"outputs":`` (terminal events).
        self.end_tail: tuple[str, ...] = tuple(end_tail)
        #: The declared outputs as JSON (``[]`` when none).
        self.declared: tuple[str, ...] = tuple(declared)
        self.has_outputs: tuple[bool, ...] = tuple(has_outputs)
        #: A START's text after its downstream entries.
        self.start_tail: tuple[str, ...] = tuple(start_tail)
        #: A classified output without declared datasets, up to its facets.
        self.classified_head: tuple[str, ...] = tuple(
            f'[{{"namespace": {ns}, "name": {ev.quote(f"{prefix}{n}.result")}, "facets": '
            for n in names
        )


def layout_key(run: Any, plugin: Any) -> tuple[Any, ...]:
    """What a layout depends on besides the pipeline object it is cached under."""
    return (run.tasks, run.pipeline_name, plugin.namespace, plugin.producer, plugin.engine_facet)
