"""µs per task added by the lineage plugin (file transport) on a 10,000-task DAG.

    python benchmarks/bench_lineage.py [--tasks 10000] [--repeat 5] [--threads 2]

Builds a random layered DAG of no-op tasks (each task depends on 1-3 tasks of the
previous layer), runs it with the bare core (no plugins) and with only the lineage plugin
(file transport into a temporary folder), interleaved, and prints a markdown table of
medians. "added" is (lineage - bare) / tasks: everything lineage costs, including
writing every event to the file before execute_pipeline returns. It is given in wall time
and in process CPU time (user + system, all threads), which a loaded machine disturbs less.

Before/after a change of the plugin: run it alternately with the other build's source
first on the path, e.g. ``PYTHONPATH=/tmp/old/plugins/lineage/src python
benchmarks/bench_lineage.py``, and compare the "added" figures of neighbouring runs.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path


def layered_dag(n: int, width: int = 100, seed: int = 7):
    from xlib_pipeline import Pipeline

    rng = random.Random(seed)
    p = Pipeline(f"bench_{n}")
    prev: list[str] = []
    i = 0
    while i < n:
        layer = []
        for _ in range(min(width, n - i)):
            name = f"t{i}"
            deps = rng.sample(prev, k=min(len(prev), rng.randint(1, 3))) if prev else []

            def fn(*args):
                return None

            p.add_task(name, fn, depends_on=deps)
            layer.append(name)
            i += 1
        prev = layer
    return p


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(pm, pipeline, threads: int, cpu: list[float] | None = None) -> float:
    c0, t0 = _cpu(), time.perf_counter()
    r = pm.execute_pipeline(pipeline, max_workers=threads)
    dt = time.perf_counter() - t0
    if cpu is not None:
        cpu.append(_cpu() - c0)
    assert r.success, r.error
    return dt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="bench-lineage-")
    os.environ["XLIB_PIPELINE_HOME"] = tmp
    from xlib_pipeline_lineage import LineagePlugin

    from xlib_pipeline import PipelineManager

    pipeline = layered_dag(args.tasks)
    path = Path(tmp) / "lineage.jsonl"
    bare = PipelineManager(entry_points=False)
    lin = PipelineManager(
        {"lineage": {"transport": {"type": "file", "path": str(path)}}},
        entry_points=False,
        plugins=[LineagePlugin()],
    )
    timed(bare, pipeline, args.threads)  # warm-up (plan compile, threads)
    timed(lin, pipeline, args.threads)
    b, l_, cb, cl = [], [], [], []
    for _ in range(args.repeat):
        b.append(timed(bare, pipeline, args.threads, cb))
        l_.append(timed(lin, pipeline, args.threads, cl))
    with open(path) as f:
        events = sum(1 for _ in f)
    n = args.tasks
    mb, ml = statistics.median(b), statistics.median(l_)
    print(
        f"lineage benchmark: {n} no-op tasks, random layered DAG, {args.threads} threads, "
        f"median of {args.repeat} (Python {sys.version.split()[0]}, {os.cpu_count()} CPUs)\n"
    )
    print("| configuration | run (ms) | µs/task | ratio vs bare |")
    print("|---|---:|---:|---:|")
    print(f"| bare core (reference) | {mb * 1e3:.1f} | {mb / n * 1e6:.1f} | 1.00 |")
    print(
        f"| core + lineage (file transport) | {ml * 1e3:.1f} | {ml / n * 1e6:.1f} | {ml / mb:.2f} |"
    )
    print(
        f"\nadded by lineage: **{(ml - mb) / n * 1e6:.1f} µs/task** "
        f"({events} events written, {events / ((args.repeat + 1) * n):.2f} per task per run, "
        f"file {path.stat().st_size / 1e6:.1f} MB)"
    )
    cpu_b, cpu_l = statistics.median(cb), statistics.median(cl)
    print(
        f"CPU time: bare {cpu_b / n * 1e6:.1f}, lineage {cpu_l / n * 1e6:.1f}, "
        f"added **{(cpu_l - cpu_b) / n * 1e6:.1f} µs/task** "
        f"(load average {os.getloadavg()[0]:.1f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
