"""Cost of a result-cache hit against executing a no-op task, in the same process.

    python benchmarks/bench_cache.py [--repeat N] [--tasks N] [--postgres]

Each contender runs the same pipeline of ``--tasks`` independent no-op tasks inline
(one lane) on a manager with a run store: ``executed`` runs them (no cache), ``cache hit``
serves every task from the cache (after one warming run), ``cache miss+store`` runs them
with ``cache=True`` and ``refresh=True`` (key, execution and storing the entry). Reported:
median µs per task and the ratio to ``executed`` (same run, interleaved repeats).

``--postgres`` adds the same hit on a PostgreSQL run store (a throwaway local server from
xlib_pipeline_postgres.testing, fsync on, as a real server): ``executed`` and ``cache hit``
on each store, interleaved, and the PostgreSQL hit's ratio to the SQLite hit.
"""

from __future__ import annotations

import argparse
import statistics
import sys
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
    ap.add_argument("--postgres", action="store_true", help="compare SQLite and PostgreSQL")
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


def compare_stores(tasks: int, repeat: int) -> None:
    """A hit on SQLite against a hit on PostgreSQL (and each store's executed), interleaved."""
    from xlib_pipeline_postgres.testing import local_server

    with tempfile.TemporaryDirectory() as d, local_server(fsync=True) as url:
        configs = {
            "sqlite": {"store": {"path": str(Path(d) / "runs.sqlite")}},
            "postgres": {"store": {"url": url, "blobs": {"url": str(Path(d) / "blobs")}}},
        }
        managers = {k: PipelineManager(c) for k, c in configs.items()}
        plain, cached = build(tasks, False), build(tasks, True)
        times: dict[str, list[float]] = {}
        try:
            for pm in managers.values():
                pm.execute_pipeline(cached, parallel=False)  # warm the cache
                pm.execute_pipeline(plain, parallel=False)
            for _ in range(repeat):
                for store, pm in managers.items():
                    for name, p in (("executed", plain), ("cache hit", cached)):
                        t0 = time.perf_counter()
                        r = pm.execute_pipeline(p, parallel=False)
                        dt = (time.perf_counter() - t0) / tasks * 1e6
                        times.setdefault(f"{store}: {name}", []).append(dt)
                        assert r.success and (name == "executed" or len(r.cached) == tasks)
        finally:
            for pm in managers.values():
                pm.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"| store: contender | µs/task (median of {repeat}) | ratio to SQLite's |")
    print("|---|---:|---:|")
    for key, m in med.items():
        store, name = key.split(": ")
        print(f"| {key} | {m:.1f} | {m / med[f'sqlite: {name}']:.2f} |")
    for store in ("sqlite", "postgres"):
        extra = med[f"{store}: cache hit"] - med[f"{store}: executed"]
        print(f"{store}: a hit costs {extra:+.1f} µs/task against executing the no-op")


if __name__ == "__main__":
    main()
    if "--postgres" in sys.argv:
        ap = argparse.ArgumentParser()
        ap.add_argument("--repeat", type=int, default=7)
        ap.add_argument("--tasks", type=int, default=2000)
        ap.add_argument("--postgres", action="store_true")
        a = ap.parse_args()
        compare_stores(a.tasks, a.repeat)
