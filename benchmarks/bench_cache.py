"""Cost of a result-cache hit against executing a no-op task, in the same process.

    python benchmarks/bench_cache.py [--repeat N] [--tasks N] [--postgres]

Each contender runs the same pipeline of ``--tasks`` independent no-op tasks inline
(one lane) on a manager with a run store: ``executed`` runs them (no cache), ``cache hit``
serves every task from the cache (after one warming run), ``cache miss+store`` runs them
with ``cache=True`` and ``refresh=True`` (key, execution and storing the entry). Reported:
median µs per task and the ratio to ``executed`` (same run, interleaved repeats).

Issue 14's target is "a hit costs at most 30 µs plus the lookup of its stored output". Two
more rows, timed in the same rounds, make it checkable: ``lookup`` reads every task's entry
as a hit does (the cache table's ``get``, the ``decrypt`` hook, ``pickle.loads``), and
``key`` computes every task's cache key (code fingerprint compiled once per plan, input
fingerprint, tenant, version, params). The hit's own cost is then ``cache hit`` less
``executed`` (the scheduling and the task's row, which both pay) less ``lookup``; the key
is part of it. Wall and process CPU are both reported (the machine is shared: CPU is the
steadier figure).

``--postgres`` adds the same hit on a PostgreSQL run store (a throwaway local server from
xlib_pipeline_postgres.testing, fsync on, as a real server): ``executed`` and ``cache hit``
on each store, interleaved, and the PostgreSQL hit's ratio to the SQLite hit.
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

from xlib_pipeline import Pipeline, PipelineManager
from xlib_pipeline._cache import (
    CachePolicy,
    cache_key,
    cache_ref,
    cache_store_of,
    function_fingerprint,
)


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
    n = a.tasks
    with tempfile.TemporaryDirectory() as d:
        cfg = {"store": {"path": str(Path(d) / "runs.sqlite")}}
        with PipelineManager(cfg, entry_points=False) as pm:
            plain, cached = build(n, False), build(n, True)
            pm.execute_pipeline(cached, parallel=False)  # warm the cache
            table = cache_store_of(pm, pm.store)
            entries = table.list(pipeline="bench_cache")
            assert len(entries) == n
            policy = CachePolicy(ttl=None, version="", key_fn=None, code=function_fingerprint(noop))
            names = [f"t{i}" for i in range(n)]
            hooks = pm.hooks

            def lookup() -> None:
                """What a hit reads: the entry, the decrypt hook, the unpickled output."""
                now = time.time()
                for e in entries:
                    found = table.get(e.key, e.tenant, now)
                    assert found is not None
                    ref = cache_ref(e.key, e.pipeline, e.task, e.tenant)
                    pickle.loads(hooks.decrypt(data=found[0], ref=ref))

            def keys() -> None:
                """Every task's cache key, as a run computes it before the lookup."""
                for name in names:
                    cache_key(
                        policy, tenant=None, pipeline="bench_cache", task=name, args=(), params=""
                    )

            contenders = {
                "executed": lambda: pm.execute_pipeline(plain, parallel=False),
                "cache hit": lambda: pm.execute_pipeline(cached, parallel=False),
                "miss+store": lambda: pm.execute_pipeline(cached, parallel=False, refresh=True),
                "lookup": lookup,
                "key": keys,
            }
            wall: dict[str, list[float]] = {k: [] for k in contenders}
            cpu: dict[str, list[float]] = {k: [] for k in contenders}
            for _ in range(a.repeat):
                for name, fn in contenders.items():
                    c0 = time.process_time()
                    t0 = time.perf_counter()
                    r = fn()
                    wall[name].append((time.perf_counter() - t0) / n * 1e6)
                    cpu[name].append((time.process_time() - c0) / n * 1e6)
                    assert r is None or r.success
            assert r is None
            assert pm.execute_pipeline(cached, parallel=False).cached
    med = {k: statistics.median(v) for k, v in wall.items()}
    medc = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"| contender | wall µs/task (median of {a.repeat}) | ratio | CPU µs/task | ratio |")
    print("|---|---:|---:|---:|---:|")
    for name in contenders:
        print(
            f"| {name} | {med[name]:.1f} | {med[name] / med['executed']:.2f} "
            f"| {medc[name]:.1f} | {medc[name] / medc['executed']:.2f} |"
        )
    for label, m in (("wall", med), ("CPU", medc)):
        own = m["cache hit"] - m["executed"] - m["lookup"]
        print(
            f"{label}: a hit's own cost beyond executing the no-op and the lookup: "
            f"{own:+.1f} µs/task (target ≤ 30; the key alone {m['key']:.1f})"
        )
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


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
