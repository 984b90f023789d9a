"""Hypothesis strategies for random pipelines, and the reference model they are checked against.

A :class:`DagSpec` describes a random DAG: per task its upstreams (in ``depends_on``
order), whether it fails, its condition (none, always true, always false) and its merge
strategy. :func:`build_pipeline` turns a spec into a real :class:`~xlib_pipeline.Pipeline`
whose tasks report what they received; :meth:`DagSpec.expected` is the simple reference
model the scheduler must agree with.

Loaded by ``tests/conftest.py`` as ``xlib_pipeline_core_strategies`` and registered with
cloudpickle to be pickled by value, so the task functions also run in worker processes.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable
from typing import Any

import attrs
from hypothesis import strategies as st

from xlib_pipeline import Pipeline, Status

SUCCEEDED = Status.SUCCEEDED
FAILED = Status.FAILED
SKIPPED = Status.SKIPPED
UPSTREAM_FAILED = Status.UPSTREAM_FAILED
CANCELLED = Status.CANCELLED


class InjectedFailure(ValueError):
    """The error a task of a random DAG raises when the spec says it fails."""


@attrs.frozen
class NodeSpec:
    """One task of a random DAG."""

    name: str
    deps: tuple[str, ...]
    fail: bool = False
    #: ``None``: no condition; ``True``/``False``: a condition answering that.
    condition: bool | None = None
    collect: bool = False


@attrs.frozen
class DagSpec:
    """A random DAG; ``nodes`` are in a topological order, ``definition`` in the order the
    tasks are added to the pipeline (any order: dependencies may be declared before the
    task they name exists)."""

    nodes: tuple[NodeSpec, ...]
    definition: tuple[int, ...]

    @property
    def by_name(self) -> dict[str, NodeSpec]:
        return {n.name: n for n in self.nodes}

    @property
    def sinks(self) -> list[str]:
        used = {d for n in self.nodes for d in n.deps}
        return [self.nodes[i].name for i in self.definition if self.nodes[i].name not in used]

    def expected(self) -> dict[str, Status]:
        """The reference model of the statuses, with ``on_failure="continue"``.

        A task whose upstream failed (or was upstream_failed) is upstream_failed; else, an
        upstream was skipped and the task does not collect what is available: skipped;
        else its condition is false: skipped; else it runs (and fails if told to).
        """
        out: dict[str, Status] = {}
        for node in self.nodes:
            ups = [out[d] for d in node.deps]
            if any(u in (FAILED, UPSTREAM_FAILED) for u in ups):
                out[node.name] = UPSTREAM_FAILED
            elif (any(u is SKIPPED for u in ups) and not node.collect) or node.condition is False:
                out[node.name] = SKIPPED
            elif node.fail:
                out[node.name] = FAILED
            else:
                out[node.name] = SUCCEEDED
        return out

    def expected_inputs(self, statuses: dict[str, Status]) -> dict[str, tuple[str | None, ...]]:
        """For every task: which upstream's output each positional argument carries
        (``None`` where a skipped upstream is collected as ``None``)."""
        return {
            n.name: tuple(d if statuses[d] is SUCCEEDED else None for d in n.deps)
            for n in self.nodes
        }


@st.composite
def dags(
    draw: st.DrawFn,
    *,
    min_nodes: int = 1,
    max_nodes: int = 10,
    max_deps: int = 4,
    failures: bool = True,
    conditions: bool = True,
    collect: bool = True,
) -> DagSpec:
    """A random :class:`DagSpec` (edges only go from earlier to later nodes: acyclic)."""
    n = draw(st.integers(min_nodes, max_nodes))
    nodes = []
    for i in range(n):
        if i:
            picked = draw(st.lists(st.integers(0, i - 1), unique=True, max_size=min(i, max_deps)))
        else:
            picked = []
        fail = failures and draw(st.integers(0, 5)) == 5
        cond = draw(st.sampled_from([None, None, True, False])) if conditions else None
        col = collect and draw(st.booleans())
        nodes.append(
            NodeSpec(
                name=f"t{i}",
                deps=tuple(f"t{j}" for j in picked),
                fail=fail,
                condition=cond,
                collect=col,
            )
        )
    order = draw(st.permutations(range(n)))
    return DagSpec(nodes=tuple(nodes), definition=tuple(order))


class Recorder:
    """A thread-safe log of ``(event, task, args)`` in the order things happened."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: list[tuple[str, str, tuple[Any, ...]]] = []

    def add(self, event: str, task: str, args: tuple[Any, ...] = ()) -> None:
        with self._lock:
            self.events.append((event, task, args))

    def index(self, event: str, task: str) -> int:
        """Position of the first ``event`` of ``task`` (ValueError when absent)."""
        for k, (e, t, _) in enumerate(self.events):
            if e == event and t == task:
                return k
        raise ValueError(f"no {event!r} event for {task!r}")

    def count(self, event: str, task: str) -> int:
        return sum(1 for e, t, _ in self.events if e == event and t == task)

    def of(self, event: str) -> list[tuple[str, tuple[Any, ...]]]:
        return [(t, a) for e, t, a in self.events if e == event]


def output_of(name: str, args: tuple[Any, ...]) -> dict[str, Any]:
    """What a random-DAG task returns: its name and the names its arguments came from."""
    got = tuple(a["task"] if isinstance(a, dict) else None for a in args)
    return {"task": name, "got": got, "pid": os.getpid()}


def _make_fn(
    node: NodeSpec, recorder: Recorder | None, marker_dir: str | None
) -> Callable[..., Any]:
    name = node.name
    fail = node.fail

    def task_fn(*args: Any) -> Any:
        if recorder is not None:
            recorder.add("start", name, args)
        if marker_dir is not None:  # one file per call: counts calls across processes
            with open(os.path.join(marker_dir, f"{name}.{uuid.uuid4().hex}"), "w"):
                pass
        try:
            if fail:
                raise InjectedFailure(f"injected failure in {name}")
            return output_of(name, args)
        finally:
            if recorder is not None:
                recorder.add("end", name, args)

    task_fn.__name__ = f"fn_{name}"
    task_fn.__qualname__ = f"fn_{name}"
    return task_fn


def _make_condition(node: NodeSpec, recorder: Recorder | None) -> Callable[..., Any]:
    name = node.name
    answer = bool(node.condition)

    def condition(*args: Any) -> bool:
        if recorder is not None:
            recorder.add("condition", name, args)
        return answer

    return condition


def build_pipeline(
    spec: DagSpec,
    *,
    recorder: Recorder | None = None,
    marker_dir: str | None = None,
    condition_recorder: Recorder | None = None,
    name: str = "random_dag",
) -> Pipeline:
    """A pipeline for ``spec``. ``recorder`` logs calls (threads and inline only: it holds a
    lock, which cannot travel to a worker process); ``marker_dir`` counts calls with files.
    Conditions always run in the driver: ``condition_recorder`` (default ``recorder``) logs
    them with any executor."""
    cond_rec = condition_recorder if condition_recorder is not None else recorder
    p = Pipeline(name)
    for i in spec.definition:
        node = spec.nodes[i]
        p.add_task(
            node.name,
            _make_fn(node, recorder, marker_dir),
            depends_on=list(node.deps),
            condition=None if node.condition is None else _make_condition(node, cond_rec),
            merge_strategy="collect_available" if node.collect else "all_success",
        )
    return p


def linear_names(n: int) -> list[str]:
    """``["s0", "s1", ...]``: names for hand-built chains."""
    return [f"s{i}" for i in range(n)]
