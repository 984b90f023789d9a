"""``async def`` tasks: concurrency on the run's event loop, against ``asyncio.gather``.

    python benchmarks/bench_async.py [--quick] [--repeat N] [--no-write]

1. Concurrency: 200 independent tasks, each ``await asyncio.sleep(0.1)``, run by a core-only
   manager with ``max_workers=2`` (threads) and inline; reference in the same process:
   ``asyncio.run(asyncio.gather(...))`` of the same 200 coroutines. Wall time per run, medians
   of interleaved repeats, and the ratio ours / gather (target <= 1.5x).
2. Overhead per coroutine task: 10,000 independent ``async def`` no-ops (``return None``),
   against ``asyncio.gather`` of the same 10,000 coroutines; µs per task and the difference.

Writes ``benchmarks/results/async.md`` unless ``--no-write`` or ``--quick``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from xlib_pipeline import Pipeline, PipelineManager

HERE = Path(__file__).resolve().parent


def sleeper_pipeline(n: int, seconds: float) -> tuple[Pipeline, Callable[[], object]]:
    p = Pipeline(f"async-{n}")

    async def body() -> None:
        await asyncio.sleep(seconds)

    for k in range(n):
        p.add_task(f"t{k}", body)

    async def gather() -> None:
        await asyncio.gather(*(body() for _ in range(n)))

    return p, lambda: asyncio.run(gather())


def timed(fn: Callable[[], object]) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(n: int, seconds: float, repeat: int) -> dict[str, list[float]]:
    p, gather = sleeper_pipeline(n, seconds)
    pm = PipelineManager({"max_workers": 2}, entry_points=False)
    runs: dict[str, list[float]] = {"threads (2)": [], "inline": [], "asyncio.gather": []}
    try:
        pm.execute_pipeline(p, max_workers=2)  # compile the plan once, warm the path
        for _ in range(repeat):
            runs["asyncio.gather"].append(timed(gather))
            runs["threads (2)"].append(timed(lambda: pm.execute_pipeline(p, max_workers=2)))
            runs["inline"].append(timed(lambda: pm.execute_pipeline(p, parallel=False)))
    finally:
        pm.close()
    return runs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    repeat = 3 if args.quick else args.repeat
    lines = [
        "# async def tasks (`bench_async.py`)",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}, "
        f"{platform.machine()}, medians of {repeat} interleaved repeats.",
        "",
        "| case | tasks | ours threads (2) | ours inline | asyncio.gather | ratio threads | "
        "ratio inline |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for n, seconds, label in ((200, 0.1, "await sleep(0.1)"), (10_000, 0.0, "no-op coroutine")):
        runs = measure(n, seconds, repeat)
        med = {k: statistics.median(v) for k, v in runs.items()}
        ref = med["asyncio.gather"]
        if seconds:
            cells = [f"{med[k]:.3f} s" for k in ("threads (2)", "inline", "asyncio.gather")]
        else:
            cells = [
                f"{med[k] / n * 1e6:.1f} µs/task"
                for k in ("threads (2)", "inline", "asyncio.gather")
            ]
        lines.append(
            f"| {label} | {n:,} | {' | '.join(cells)} | {med['threads (2)'] / ref:.2f}x | "
            f"{med['inline'] / ref:.2f}x |"
        )
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if not (args.quick or args.no_write):
        out = HERE / "results" / "async.md"
        out.write_text(text)
        print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
