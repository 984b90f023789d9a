"""Cost of the resource budget's admission walk (``Budget.request``/``release``).

    python benchmarks/bench_budget.py [--backlog N] [--tasks N] [--seeds N]

10,000 tasks needing 1-4 of 8 cpus, heights 1-5 (random, seeded): each is requested once
and released once, at most ``--backlog`` tasks waiting when the next one is requested.
Prints process CPU and wall per task (µs), the best of ``--seeds`` runs. For a same-run
A/B, run it alternately against two trees (``PYTHONPATH=<old>/src`` and ``<new>/src``).
"""

from __future__ import annotations

import argparse
import random
import time
from collections import deque

from xlib_pipeline._budget import Budget, compile_budget


def run(n: int, backlog: int, seed: int) -> tuple[float, float]:
    rng = random.Random(seed)
    needs = [{"cpu": float(rng.randint(1, 4))} for _ in range(n)]
    height = [rng.randint(1, 5) for _ in range(n)]
    spec = compile_budget([str(i) for i in range(n)], needs, {"cpu": 8}, {})
    b = Budget(spec, height)
    running: deque[int] = deque()
    c0, w0 = time.process_time(), time.perf_counter()
    nxt = 0
    while nxt < n or running:
        if nxt < n and (len(b.waiting) < backlog or not running):
            running.extend(b.request(nxt))
            nxt += 1
        else:
            running.extend(b.release(running.popleft()))
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    assert not b.waiting
    return cpu / n * 1e6, wall / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backlog", type=int, default=16)
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--seeds", type=int, default=3)
    a = ap.parse_args()
    cpu, wall = min(run(a.tasks, a.backlog, s) for s in range(a.seeds))
    print(f"backlog={a.backlog} cpu_us={cpu:.2f} wall_us={wall:.2f}")


if __name__ == "__main__":
    main()
