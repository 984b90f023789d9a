"""Cost of the run store per task: the 10,000-task layered DAG with and without a store.

``python benchmarks/bench_store.py [--quick]``. Compares, in the same process and run, the
bare core (threads, 2 workers) against the same manager with a SQLite store, and reports
medians of several repeats and the added µs per task.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from xlib_pipeline import Pipeline, PipelineManager


def noop(*args: object) -> int:
    return 1


def layered(n: int, width: int = 100, seed: int = 7) -> Pipeline:
    rng = random.Random(seed)
    p = Pipeline(f"layered_{n}")
    names: list[list[str]] = []
    for layer in range(n // width):
        row = []
        for k in range(width):
            name = f"t{layer}_{k}"
            deps = rng.sample(names[-1], rng.randint(1, 3)) if names else []
            p.add_task(name, noop, depends_on=deps)
            row.append(name)
        names.append(row)
    return p


def timed(pm: PipelineManager, p: Pipeline) -> float:
    t0 = time.perf_counter()
    r = pm.execute_pipeline(p)
    dt = time.perf_counter() - t0
    assert r.success, r.error
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n = 2_000 if args.quick else 10_000
    repeats = 3 if args.quick else 7
    p = layered(n)
    with tempfile.TemporaryDirectory() as tmp:
        bare = PipelineManager({"max_workers": 2}, entry_points=False)
        stored = PipelineManager(
            {"max_workers": 2, "store": {"path": str(Path(tmp) / "runs.sqlite")}},
            entry_points=False,
        )
        timed(bare, p), timed(stored, p)  # warm up
        a, b = [], []
        for _ in range(repeats):
            a.append(timed(bare, p))
            b.append(timed(stored, p))
        stored.close()
    ma, mb = statistics.median(a), statistics.median(b)
    print("| DAG | tasks | bare core µs/task | with store µs/task | added µs/task | ratio |")
    print("|---|---|---|---|---|---|")
    print(
        f"| random layered | {n} | {ma / n * 1e6:.1f} | {mb / n * 1e6:.1f} | "
        f"{(mb - ma) / n * 1e6:.1f} | {mb / ma:.2f}× |"
    )


if __name__ == "__main__":
    main()
