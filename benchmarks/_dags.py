"""Shared DAG builders for the benchmark scripts.

A DAG is described once as a :class:`Dag` (task names in topological order, each with the
names it depends on, optionally a duration for sleeping tasks), then turned into an
xlib-pipeline :class:`~xlib_pipeline.Pipeline` with :func:`to_pipeline` or run by the
plain-Python reference loops :func:`reference_threads` / :func:`reference_inline`, so every
contender executes the same functions with the same argument passing (upstream results as
positional arguments in dependency order).

    from _dags import chain, fan, layered, to_pipeline
    p = to_pipeline(layered(10_000))

Import from a script in ``benchmarks/`` (the folder is on ``sys.path`` when a script there
runs), or add the folder to ``sys.path`` first.
"""

from __future__ import annotations

import graphlib
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any

__all__ = [
    "Dag",
    "chain",
    "critical_path",
    "fan",
    "guide_ml",
    "layered",
    "noop",
    "reference_inline",
    "reference_threads",
    "sleeper",
    "sleeping_fan",
    "to_pipeline",
]


def noop(*args: Any) -> None:
    """The task body of the overhead benchmarks: accepts its upstream results, does nothing."""
    return None


def sleeper(seconds: float) -> Callable[..., float]:
    """A task body that sleeps ``seconds`` (releasing the GIL) and returns it."""

    def fn(*args: Any) -> float:
        time.sleep(seconds)
        return seconds

    fn.__name__ = f"sleep_{seconds:g}"
    return fn


class Dag:
    """Task names in topological order, their dependencies and optional durations."""

    __slots__ = ("deps", "durations", "name", "names")

    def __init__(
        self,
        name: str,
        names: list[str],
        deps: list[tuple[str, ...]],
        durations: list[float] | None = None,
    ) -> None:
        self.name = name
        self.names = names
        self.deps = deps
        self.durations = durations

    def __len__(self) -> int:
        return len(self.names)

    def fn(self, i: int) -> Callable[..., Any]:
        """The body of task ``i``: a sleeper when durations are set, else :func:`noop`."""
        if self.durations is None:
            return noop
        return sleeper(self.durations[i])

    def edges(self) -> int:
        """Number of dependency edges."""
        return sum(len(d) for d in self.deps)


def chain(n: int = 1_000) -> Dag:
    """``t0 -> t1 -> ... -> t{n-1}``."""
    names = [f"t{i}" for i in range(n)]
    deps = [()] + [(names[i - 1],) for i in range(1, n)]
    return Dag(f"chain_{n}", names, deps)


def fan(width: int = 1_000) -> Dag:
    """``source -> width tasks -> sink`` (fan-out then fan-in)."""
    mids = [f"m{i}" for i in range(width)]
    names = ["source", *mids, "sink"]
    deps: list[tuple[str, ...]] = [(), *[("source",)] * width, tuple(mids)]
    return Dag(f"fan_{width}", names, deps)


def layered(
    n: int = 10_000, width: int = 100, seed: int = 7, span: int = 3, max_deps: int = 3
) -> Dag:
    """A random layered DAG of ``n`` tasks, ``width`` per layer (seeded).

    Each task after the first layer depends on 1 to ``max_deps`` distinct tasks drawn from
    the previous ``span`` layers.
    """
    rng = random.Random(seed)
    names: list[str] = []
    deps: list[tuple[str, ...]] = []
    layers: list[list[str]] = []
    i = 0
    while i < n:
        pool = [t for layer in layers[-span:] for t in layer]
        row: list[str] = []
        for _ in range(min(width, n - i)):
            name = f"t{i}"
            if pool:
                k = rng.randint(1, min(max_deps, len(pool)))
                deps.append(tuple(rng.sample(pool, k)))
            else:
                deps.append(())
            names.append(name)
            row.append(name)
            i += 1
        layers.append(row)
    return Dag(f"layered_{n}", names, deps)


def sleeping_fan(width: int = 20, seconds: float = 0.05) -> Dag:
    """``source -> width x sleep(seconds) -> sink``: the critical path is ``seconds``."""
    d = fan(width)
    d.name = f"sleeping_fan_{width}"
    d.durations = [0.0, *[seconds] * width, 0.0]
    return d


# The user guide's "advanced ML workflow" shape: stage -> durations in seconds.
_GUIDE_ML = (
    ("collect_raw_data", (), 0.0),
    ("validate_data_sources", ("collect_raw_data",), 0.0),
    ("create_numerical_features", ("validate_data_sources",), 2.0),
    ("create_categorical_features", ("validate_data_sources",), 1.5),
    ("create_text_features", ("validate_data_sources",), 3.0),
    (
        "combine_features",
        ("create_numerical_features", "create_categorical_features", "create_text_features"),
        0.0,
    ),
    ("train_classifier", ("combine_features",), 4.0),
    ("train_regressor", ("combine_features",), 3.5),
    ("train_clustering", ("combine_features",), 2.5),
    ("evaluate_models", ("train_classifier", "train_regressor", "train_clustering"), 0.0),
    ("prepare_deployment", ("evaluate_models",), 0.0),
)


def guide_ml(scale: float = 0.05) -> Dag:
    """The user guide's ML workflow shape (3-way fan-out twice) with sleeps times ``scale``."""
    return Dag(
        "guide_ml",
        [n for n, _, _ in _GUIDE_ML],
        [d for _, d, _ in _GUIDE_ML],
        [s * scale for _, _, s in _GUIDE_ML],
    )


def critical_path(dag: Dag) -> float:
    """Sum of durations along the heaviest path (0 for no-op DAGs)."""
    if dag.durations is None:
        return 0.0
    finish: dict[str, float] = {}
    for name, deps, d in zip(dag.names, dag.deps, dag.durations):
        finish[name] = max((finish[x] for x in deps), default=0.0) + d
    return max(finish.values())


def to_pipeline(dag: Dag, name: str | None = None) -> Any:
    """Build the xlib-pipeline :class:`Pipeline` for ``dag``."""
    from xlib_pipeline import Pipeline

    p = Pipeline(name or dag.name)
    add = p.add_task
    for i, (task, deps) in enumerate(zip(dag.names, dag.deps)):
        add(task, dag.fn(i), depends_on=deps)
    return p


def _prepared(dag: Dag) -> tuple[dict[str, tuple[str, ...]], dict[str, Callable[..., Any]]]:
    deps = dict(zip(dag.names, dag.deps))
    fns = {n: dag.fn(i) for i, n in enumerate(dag.names)}
    return deps, fns


def reference_threads(dag: Dag, workers: int = 2, prepared: Sequence[Any] | None = None) -> Any:
    """Plain-Python scheduler: graphlib.TopologicalSorter + ThreadPoolExecutor(workers).

    Submits every ready node, waits FIRST_COMPLETED, marks the finished ones done, repeats.
    Upstream results are passed positionally in dependency order. Returns the outputs.
    """
    deps, fns = prepared if prepared is not None else _prepared(dag)
    ts = graphlib.TopologicalSorter(deps)
    ts.prepare()
    outputs: dict[str, Any] = {}
    pending: dict[Any, str] = {}
    with ThreadPoolExecutor(workers) as ex:
        while ts.is_active():
            for node in ts.get_ready():
                args = tuple([outputs[d] for d in deps[node]])
                pending[ex.submit(fns[node], *args)] = node
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                node = pending.pop(fut)
                outputs[node] = fut.result()
                ts.done(node)
    return outputs


def reference_inline(dag: Dag, prepared: Sequence[Any] | None = None) -> Any:
    """Plain-Python sequential loop: graphlib.static_order, each body called directly."""
    deps, fns = prepared if prepared is not None else _prepared(dag)
    outputs: dict[str, Any] = {}
    for node in graphlib.TopologicalSorter(deps).static_order():
        outputs[node] = fns[node](*[outputs[d] for d in deps[node]])
    return outputs
