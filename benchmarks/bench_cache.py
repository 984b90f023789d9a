"""Cost of a result-cache hit against executing a no-op task, in the same process.

    python benchmarks/bench_cache.py [--repeat N] [--tasks N]

Each contender runs the same pipeline of ``--tasks`` independent no-op tasks inline
(one lane) on a manager with a run store: ``executed`` runs them (no cache), ``cache hit``
serves every task from the cache (after one warming run), ``cache miss+store`` runs them
with ``cache=True`` and ``refresh=True`` (key, execution and storing the entry). Reported:
median µs per task and the ratio to ``executed`` (same run, interleaved repeats).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from xlib_pipeline import Pipeline, PipelineManager


def noop() -> int:
    return 1


def build(n: int, cache: bool) -> Pipeline:
    p = Pipeline("bench_cache")
    for i in range(n):
        p.add_task(f"t{i}", noop, cache=cache)
    return p


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--tasks", type=int, default=2000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        cfg = {"store": {"path": str(Path(d) / "runs.sqlite")}}
        with PipelineManager(cfg, entry_points=False) as pm:
            plain, cached = build(a.tasks, False), build(a.tasks, True)
            pm.execute_pipeline(cached, parallel=False)  # warm the cache
            times: dict[str, list[float]] = {"executed": [], "cache hit": [], "miss+store": []}
            for _ in range(a.repeat):
                for name, fn in (
                    ("executed", lambda: pm.execute_pipeline(plain, parallel=False)),
                    ("cache hit", lambda: pm.execute_pipeline(cached, parallel=False)),
                    (
                        "miss+store",
                        lambda: pm.execute_pipeline(cached, parallel=False, refresh=True),
                    ),
                ):
                    t0 = time.perf_counter()
                    r = fn()
                    times[name].append((time.perf_counter() - t0) / a.tasks * 1e6)
                    assert r.success
            assert r.cached == [] and pm.execute_pipeline(cached, parallel=False).cached
    base = statistics.median(times["executed"])
    print(f"| contender | µs/task (median of {a.repeat}) | ratio to executed |")
    print("|---|---:|---:|")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"| {name} | {m:.1f} | {m / base:.2f} |")


if __name__ == "__main__":
    main()
