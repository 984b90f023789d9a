"""Per-task scheduling overhead of the bare core against plain-Python reference loops.

    python benchmarks/bench_core.py [--quick] [--repeat N] [--rounds K] [--no-write]

Contenders, all in the same process and interleaved repeat by repeat:

* ``ours threads``: ``PipelineManager(entry_points=False, config={"max_workers": 2})``,
  ``execute_pipeline(p)`` (2 lanes);
* ``ours inline``: the same manager, ``execute_pipeline(p, parallel=False)``;
* ``ref threads``: graphlib.TopologicalSorter + ThreadPoolExecutor(2): submit every ready
  node, wait FIRST_COMPLETED, mark done, repeat (``_dags.reference_threads``);
* ``ref inline``: graphlib.static_order calling each body directly (``_dags.reference_inline``).

All run the same no-op bodies with the same argument passing (upstream results as
positional arguments). Overhead per task = (wall time - body time) / tasks, where body
time is measured by calling the bodies with their arguments in a bare loop. The plan is
compiled once (first, unmeasured run); "cold" numbers include it. Each figure is the median
of ``--repeat`` runs; with ``--rounds K`` the whole suite runs K times and the table shows
the median over rounds (per-round medians are listed too).

The 100,000-task DAG runs in child processes (clean memory): one for time and RSS, one
under tracemalloc for allocated bytes. The cold start (build + first run of a 10,000-task
DAG with every plugin installed, manager creation, ``--help``) runs in fresh processes
against the reference in fresh processes (``_cold.py``). Makespan / critical-path ratios
use sleeping tasks.
Writes ``benchmarks/results/core.md`` unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _dags import (  # noqa: E402
    Dag,
    chain,
    critical_path,
    fan,
    guide_ml,
    layered,
    reference_inline,
    reference_threads,
    sleeping_fan,
    to_pipeline,
)

TARGET_INLINE_US = 10.0
TARGET_THREAD_RATIO = 1.5
TARGET_100K_S = 10.0
TARGET_100K_BYTES = 2048


def _manager(max_workers: int | None = 2) -> Any:
    from xlib_pipeline import PipelineManager

    config = {"max_workers": max_workers} if max_workers else {}
    return PipelineManager(config, entry_points=False)


def body_time(dag: Dag) -> float:
    """Seconds the bodies themselves take: each called once with prebuilt arguments."""
    calls = [(dag.fn(i), (None,) * len(dag.deps[i])) for i in range(len(dag))]
    t0 = time.perf_counter()
    for fn, args in calls:
        fn(*args)
    return time.perf_counter() - t0


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _ours(pm: Any, p: Any, parallel: bool) -> Callable[[], Any]:
    def run() -> Any:
        r = pm.execute_pipeline(p, parallel=parallel)
        if not r.success:
            raise SystemExit(f"benchmark run failed: {r.error}")
        return r

    return run


def overhead(dag: Dag, repeat: int) -> dict[str, Any]:
    """Median wall seconds per contender on ``dag``, interleaved, after one warm-up each."""
    from _dags import _prepared

    pm = _manager(2)
    p = to_pipeline(dag)
    prepared = _prepared(dag)
    t0 = time.perf_counter()
    pm.execute_pipeline(p)  # compiles and caches the plan
    cold = time.perf_counter() - t0
    runs: dict[str, Callable[[], Any]] = {
        "ours threads": _ours(pm, p, True),
        "ours inline": _ours(pm, p, False),
        "ref threads": lambda: reference_threads(dag, 2, prepared),
        "ref inline": lambda: reference_inline(dag, prepared),
    }
    for fn in runs.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in runs}
    keys = list(runs)
    for r in range(repeat):
        gc.collect()
        for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
            times[k].append(_timed(runs[k]))
    body = statistics.median(body_time(dag) for _ in range(3))
    pm.close()
    return {
        "dag": dag.name,
        "tasks": len(dag),
        "edges": dag.edges(),
        "cold": cold,
        "body": body,
        "median": {k: statistics.median(v) for k, v in times.items()},
    }


# -- 100k in child processes ---------------------------------------------------------------


def _child_100k(repeat: int, mem: bool) -> None:
    import resource

    import psutil

    proc = psutil.Process()
    gc.collect()
    if mem:
        import tracemalloc

        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        dag = layered(100_000, width=100)
        p = to_pipeline(dag)
        built = tracemalloc.get_traced_memory()[0] - base
        del dag
        gc.collect()
        after_build = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.reset_peak()
        pm = _manager(2)
        result = pm.execute_pipeline(p)
        assert result.success, result.error
        _, peak = tracemalloc.get_traced_memory()
        held = tracemalloc.get_traced_memory()[0] - base
        print(
            json.dumps(
                {
                    "definitions_bytes": after_build,
                    "build_with_spec_bytes": built,
                    "peak_bytes": peak - base,
                    "held_after_run_bytes": held,
                }
            )
        )
        return
    rss0 = proc.memory_info().rss
    t0 = time.perf_counter()
    dag = layered(100_000, width=100)
    spec = time.perf_counter() - t0
    t0 = time.perf_counter()
    p = to_pipeline(dag)
    build = time.perf_counter() - t0
    rss_built = proc.memory_info().rss
    pm = _manager(2)
    t0 = time.perf_counter()
    result = pm.execute_pipeline(p)
    cold = time.perf_counter() - t0
    assert result.success, result.error
    rss_run = proc.memory_info().rss
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    del result
    from _dags import _prepared

    prepared = _prepared(dag)
    runs = {
        "ours threads": _ours(pm, p, True),
        "ours inline": _ours(pm, p, False),
        "ref threads": lambda: reference_threads(dag, 2, prepared),
        "ref inline": lambda: reference_inline(dag, prepared),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    keys = list(runs)
    for r in range(repeat):
        gc.collect()
        for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
            times[k].append(_timed(runs[k]))
    print(
        json.dumps(
            {
                "spec": spec,
                "build": build,
                "cold": cold,
                "body": body_time(dag),
                "rss_before": rss0,
                "rss_built": rss_built,
                "rss_after_run": rss_run,
                "maxrss": maxrss,
                "median": {k: statistics.median(v) for k, v in times.items()},
            }
        )
    )


def big(repeat: int) -> dict[str, Any]:
    """Run the 100k-task DAG in two child processes; merge their JSON answers."""
    out: dict[str, Any] = {}
    for flag in ("--child-100k", "--child-100k-mem"):
        cmd = [sys.executable, str(Path(__file__).resolve()), flag, "--repeat", str(repeat)]
        text = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        out.update(json.loads(text.strip().splitlines()[-1]))
    return out


# -- makespan --------------------------------------------------------------------------------


def makespan(dag: Dag, workers: int, repeat: int) -> dict[str, Any]:
    """Median wall time of a sleeping DAG, ours and the reference, vs its critical path."""
    from _dags import _prepared

    pm = _manager(workers)
    p = to_pipeline(dag)
    prepared = _prepared(dag)
    pm.execute_pipeline(p)
    ours, ref = [], []
    for _ in range(repeat):
        ours.append(_timed(_ours(pm, p, True)))
        ref.append(_timed(lambda: reference_threads(dag, workers, prepared)))
    pm.close()
    return {
        "dag": dag.name,
        "workers": workers,
        "critical": critical_path(dag),
        "ours": statistics.median(ours),
        "ref": statistics.median(ref),
    }


# -- where the time goes -------------------------------------------------------------------


def profile_breakdown(runs: int = 3) -> list[tuple[str, float, float]]:
    """cProfile the inline run of the 10k layered DAG: (function, share of time, µs/task).

    µs/task rescales each function's share of the profiled time (own time, callees
    excluded) to the unprofiled wall time, since cProfile itself inflates every call.
    """
    import cProfile
    import pstats

    dag = layered(10_000, width=100)
    pm = _manager(2)
    p = to_pipeline(dag)
    pm.execute_pipeline(p, parallel=False)
    wall = statistics.median(
        _timed(lambda: pm.execute_pipeline(p, parallel=False)) for _ in range(runs)
    )
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(runs):
        pm.execute_pipeline(p, parallel=False)
    prof.disable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in stats.values())
    rows = []
    for (file, line, func), v in stats.items():
        name = f"{Path(file).name}:{line}({func})" if file != "~" else func
        rows.append((name, v[2] / total))
    rows.sort(key=lambda r: r[1], reverse=True)
    per_task = wall / len(dag) * 1e6
    return [(name, share, share * per_task) for name, share in rows[:8]]


# -- reporting ------------------------------------------------------------------------------


def _us(seconds: float, n: int) -> float:
    return seconds / n * 1e6


def suite(repeat: int, quick: bool) -> dict[str, Any]:
    dags = [chain(1_000), fan(1_000), layered(10_000, width=100)]
    res: dict[str, Any] = {"overhead": [overhead(d, repeat) for d in dags]}
    res["big"] = big(repeat if not quick else 1)
    import _cold

    res["cold"] = _cold.measure(repeat)
    res["makespan"] = [
        makespan(sleeping_fan(20, 0.05), 20, repeat),
        makespan(guide_ml(0.05), 6, repeat),
    ]
    return res


def _med(values: list[float]) -> float:
    return statistics.median(values)


def combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over rounds of every number (same structure as one round)."""

    def merge(items: list[Any]) -> Any:
        first = items[0]
        if isinstance(first, dict):
            return {k: merge([it[k] for it in items]) for k in first}
        if isinstance(first, list):
            return [merge([it[i] for it in items]) for i in range(len(first))]
        if isinstance(first, int | float) and not isinstance(first, bool):
            return _med([float(x) for x in items]) if isinstance(first, float) else first
        return first

    return merge(rounds)


def render(
    res: dict[str, Any],
    rounds: list[dict[str, Any]],
    breakdown: list[tuple[str, float, float]] | None = None,
) -> str:
    lines: list[str] = []
    add = lines.append
    add("### Scheduling overhead (no-op tasks, µs per task, median)")
    add("")
    add(
        "| DAG | tasks | ours threads (2) | ref threads (2) | ratio | ours inline | "
        "ref inline | ratio | first run (plan + run) |"
    )
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for o in res["overhead"]:
        n, m, body = o["tasks"], o["median"], o["body"]
        rows.append(o)
        ot, rt = _us(m["ours threads"] - body, n), _us(m["ref threads"] - body, n)
        oi, ri = _us(m["ours inline"] - body, n), _us(m["ref inline"] - body, n)
        add(
            f"| {o['dag']} | {n:,} | {ot:.2f} | {rt:.2f} | {ot / rt:.2f}× | {oi:.2f} | "
            f"{ri:.2f} | {oi / ri:.2f}× | {o['cold'] * 1e3:.0f} ms |"
        )
    b = res["big"]
    n = 100_000
    m = b["median"]
    ot, rt = _us(m["ours threads"] - b["body"], n), _us(m["ref threads"] - b["body"], n)
    oi, ri = _us(m["ours inline"] - b["body"], n), _us(m["ref inline"] - b["body"], n)
    add(
        f"| layered_100000 | 100,000 | {ot:.2f} | {rt:.2f} | {ot / rt:.2f}× | {oi:.2f} | "
        f"{ri:.2f} | {oi / ri:.2f}× | {b['cold'] * 1e3:.0f} ms |"
    )
    add("")
    add(
        "Body time (the no-op calls themselves, measured in a bare loop) is subtracted; "
        "it is about "
        f"{_us(res['overhead'][-1]['body'], res['overhead'][-1]['tasks']):.2f} µs per task."
    )
    add("")
    add("### 100,000-task random layered DAG (1,000 layers × 100, 1-3 deps)")
    add("")
    total = b["build"] + b["cold"]
    rss = b["rss_after_run"] - b["rss_before"]
    add("| measure | value | target |")
    add("|---|---:|---|")
    add(f"| generate the random DAG spec (not counted) | {b['spec']:.2f} s | |")
    add(f"| build the Pipeline (100k `add_task`) | {b['build']:.2f} s | |")
    add(f"| first run (plan + validate + run, threads) | {b['cold']:.2f} s | |")
    ok_t = "✅" if total < TARGET_100K_S else "❌"
    add(f"| build + first run | {total:.2f} s | < {TARGET_100K_S:g} s {ok_t} |")
    add(f"| later runs, threads (median) | {m['ours threads']:.2f} s | |")
    add(f"| later runs, inline (median) | {m['ours inline']:.2f} s | |")
    add(
        f"| reference threads / inline (median) | {m['ref threads']:.2f} s / "
        f"{m['ref inline']:.2f} s | |"
    )
    per = b["peak_bytes"] / n
    ok_m = "✅" if per < TARGET_100K_BYTES else "❌"
    add(
        f"| tracemalloc: definitions held (Pipeline + Tasks) | "
        f"{b['definitions_bytes'] / n:,.0f} B/task | |"
    )
    add(
        f"| tracemalloc: peak allocated during the first run | {per:,.0f} B/task | "
        f"< 2 KiB/task {ok_m} |"
    )
    add(
        f"| tracemalloc: definitions + peak of the first run | "
        f"{(b['definitions_bytes'] + b['peak_bytes']) / n:,.0f} B/task | |"
    )
    add(
        f"| tracemalloc: held after the run (incl. the result) | "
        f"{b['held_after_run_bytes'] / n:,.0f} B/task | |"
    )
    add(f"| RSS growth: build + first run | {rss / n:,.0f} B/task | |")
    add("")
    if "cold" in res:
        import _cold

        lines.extend(_cold.render(res["cold"]))
        add("")
    add("### Makespan of sleeping tasks / critical path (median)")
    add("")
    add("| DAG | workers | critical path | ours | ours / CP | reference | ref / CP |")
    add("|---|---:|---:|---:|---:|---:|---:|")
    for s in res["makespan"]:
        cp = s["critical"]
        add(
            f"| {s['dag']} | {s['workers']} | {cp * 1e3:.0f} ms | {s['ours'] * 1e3:.1f} ms | "
            f"{s['ours'] / cp:.3f} | {s['ref'] * 1e3:.1f} ms | {s['ref'] / cp:.3f} |"
        )
    add("")
    add("### Targets")
    add("")
    worst_inline = max(
        _us(o["median"]["ours inline"] - o["body"], o["tasks"]) for o in res["overhead"]
    )
    worst_ratio = max(
        (o["median"]["ours threads"] - o["body"]) / (o["median"]["ref threads"] - o["body"])
        for o in res["overhead"]
    )
    add(
        f"- inline ≤ {TARGET_INLINE_US:g} µs/task: worst {worst_inline:.2f} µs "
        + ("✅" if worst_inline <= TARGET_INLINE_US else "❌")
    )
    add(
        f"- threads ≤ {TARGET_THREAD_RATIO:g}× reference: worst {worst_ratio:.2f}× "
        + ("✅" if worst_ratio <= TARGET_THREAD_RATIO else "❌")
    )
    add(f"- 100k tasks < {TARGET_100K_S:g} s (build + first run): {total:.2f} s {ok_t}")
    add(f"- 100k tasks < 2 KiB/task (tracemalloc peak of the run): {per:,.0f} B {ok_m}")
    if breakdown:
        add("")
        add("### Where the time goes (inline, layered_10000, cProfile own time)")
        add("")
        add("| function | share | ≈ µs per task |")
        add("|---|---:|---:|")
        for name, share, us in breakdown:
            add(f"| `{name}` | {share * 100:.0f}% | {us:.2f} |")
    if len(rounds) > 1:
        add("")
        add(f"### Per round ({len(rounds)} rounds; the tables above are medians over rounds)")
        add("")
        add(
            "| round | "
            + " | ".join(o["dag"] + " threads/ref" for o in res["overhead"])
            + " | 100k threads µs | 100k inline µs |"
        )
        add("|---|" + "---:|" * (len(res["overhead"]) + 2))
        for k, r in enumerate(rounds, 1):
            cells = []
            for o in r["overhead"]:
                n = o["tasks"]
                mm = o["median"]
                cells.append(
                    f"{_us(mm['ours threads'] - o['body'], n):.2f} / "
                    f"{_us(mm['ref threads'] - o['body'], n):.2f}"
                )
            bm = r["big"]["median"]
            cells.append(f"{_us(bm['ours threads'], 100_000):.2f}")
            cells.append(f"{_us(bm['ours inline'], 100_000):.2f}")
            add(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> str:
    return (
        f"{platform.platform()}; nproc={os.cpu_count()}; "
        f"Python {platform.python_version()} ({platform.python_implementation()})"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 repeats, one 100k run, no file")
    ap.add_argument("--repeat", type=int, default=None, help="runs per measurement (default 5)")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the whole suite K times")
    ap.add_argument("--no-write", action="store_true", help="do not write results/core.md")
    ap.add_argument("--child-100k", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child-100k-mem", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    repeat = args.repeat or (3 if args.quick else 5)
    if args.child_100k or args.child_100k_mem:
        _child_100k(repeat, mem=args.child_100k_mem)
        return 0
    started = time.perf_counter()
    rounds = []
    for k in range(max(1, args.rounds)):
        print(f"round {k + 1}/{args.rounds} ...", file=sys.stderr, flush=True)
        rounds.append(suite(repeat, args.quick))
    res = combine(rounds)
    breakdown = None if args.quick else profile_breakdown()
    table = render(res, rounds, breakdown)
    print(table)
    if not args.no_write and not args.quick:
        cmd = (
            "python benchmarks/bench_core.py"
            + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
        )
        text = (
            "# Core benchmarks: scheduling overhead, 100k tasks, makespan\n\n"
            f"- Machine: {machine()} (shared with other jobs while measured)\n"
            f"- Command: `{cmd}` ({repeat} repeats per figure, {len(rounds)} round(s), "
            f"{time.perf_counter() - started:.0f} s)\n"
            f"- Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}\n"
            "- Bare core: `PipelineManager({'max_workers': 2}, entry_points=False)`; "
            "reference: graphlib.TopologicalSorter + ThreadPoolExecutor(2) "
            "(submit all ready, wait FIRST_COMPLETED), and graphlib.static_order inline.\n\n"
            + table
            + "\n"
        )
        (HERE / "results" / "core.md").write_text(text)
        print(f"\nwrote {HERE / 'results' / 'core.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
