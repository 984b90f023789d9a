"""Cost of the run store per task: the 10,000-task layered DAG with and without a store.

``python benchmarks/bench_store.py [--quick]``. Compares, in the same process and run, the
bare core (threads, 2 workers) against the same manager with a SQLite store, and reports
medians of several repeats and the added µs per task.

It also runs the **plain floor** (issue 10): a plain-Python scheduler (a
``ThreadPoolExecutor(2)`` and successor counts) on the same DAG, once without and once with
``sqlite3`` recording the same rows as the store (one ``tasks`` row per task, its start
folded in, primary-key index, WAL, ``synchronous=NORMAL``) under the same guarantee: a
finished task's row is committed before any successor starts, group commit without a window
(whoever finishes while no commit is in flight commits everything queued). Its added µs per
task is what that guarantee costs without xlib-pipeline; the store's added cost is reported
as a multiple of it. Wall and process CPU, interleaved rounds, medians.
"""

from __future__ import annotations

import argparse
import pickle
import random
import sqlite3
import statistics
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

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


def timed(pm: PipelineManager, p: Pipeline) -> tuple[float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    r = pm.execute_pipeline(p)
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    assert r.success, r.error
    return dt, dc


_TASKS_SQL = """CREATE TABLE IF NOT EXISTS tasks (run_id TEXT NOT NULL, task TEXT NOT NULL,
status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, started REAL, finished REAL,
error_type TEXT, error TEXT, traceback TEXT, output BLOB, output_run TEXT, tenant TEXT,
ran REAL, ran_attempt INTEGER, PRIMARY KEY (run_id, task))"""
_INSERT = "INSERT OR REPLACE INTO tasks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


def plain_floor(deps: dict[str, list[str]], path: str | None) -> tuple[float, float]:
    """The DAG on a plain scheduler, recording each task's row in ``path`` (None: no
    store) before its successors start; (wall, process CPU) seconds."""
    succs: dict[str, list[str]] = {n: [] for n in deps}
    for n, ds in deps.items():
        for d in ds:
            succs[d].append(n)
    remaining = {n: len(ds) for n, ds in deps.items()}
    conn = None
    if path is not None:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(_TASKS_SQL)
    run_id = str(uuid.uuid4())
    lock = threading.Lock()
    pending: list[tuple[str, tuple[Any, ...]]] = []
    state = {"busy": False, "left": len(deps)}
    done = threading.Event()
    pool = ThreadPoolExecutor(2)

    def release(name: str) -> None:
        ready = []
        with lock:
            for s in succs[name]:
                remaining[s] -= 1
                if remaining[s] == 0:
                    ready.append(s)
            state["left"] -= 1
            if state["left"] == 0:
                done.set()
        for s in ready:
            pool.submit(body, s)

    def body(name: str) -> None:
        t0 = time.time()
        out = noop()
        t1 = time.time()
        if conn is None:
            release(name)
            return
        row = (run_id, name, "succeeded", 1, t0, t1, None, None, None,
               pickle.dumps(out, protocol=5), None, None, t0, 1)  # fmt: skip
        with lock:
            pending.append((name, row))
            if state["busy"]:
                return  # the commit in flight takes it next
            state["busy"] = True
        while True:  # flat combining: commit whatever is queued, then release successors
            with lock:
                batch = pending[:]
                pending.clear()
                if not batch:
                    state["busy"] = False
                    return
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_INSERT, [r for _, r in batch])
            conn.execute("COMMIT")
            for n, _ in batch:
                release(n)

    c0, t0 = time.process_time(), time.perf_counter()
    for n, ds in deps.items():
        if not ds:
            pool.submit(body, n)
    done.wait()
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    pool.shutdown()
    if conn is not None:
        conn.close()
    return dt, dc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-floor", action="store_true", help="skip the plain floor")
    args = ap.parse_args()
    n = 2_000 if args.quick else 10_000
    repeats = 3 if args.quick else 7
    p = layered(n)
    deps = {t.name: list(t.depends_on) for t in p.tasks.values()}
    with tempfile.TemporaryDirectory() as tmp:
        bare = PipelineManager({"max_workers": 2}, entry_points=False)
        stored = PipelineManager(
            {"max_workers": 2, "store": {"path": str(Path(tmp) / "runs.sqlite")}},
            entry_points=False,
        )
        floor_db = str(Path(tmp) / "floor.sqlite")
        timed(bare, p), timed(stored, p)  # warm up
        a, b, fa, fb = [], [], [], []
        for _ in range(repeats):
            a.append(timed(bare, p))
            b.append(timed(stored, p))
            if not args.no_floor:
                fa.append(plain_floor(deps, None))
                fb.append(plain_floor(deps, floor_db))
        stored.close()

    def med(xs: list[tuple[float, float]], k: int) -> float:
        return statistics.median(x[k] for x in xs) / n * 1e6

    print("| DAG | tasks | measure | bare core µs/task | with store µs/task | added µs/task |"
          " plain loop µs/task | plain + sqlite3 µs/task | floor added µs/task |"
          " store added ÷ floor added |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for k, what in ((0, "wall"), (1, "process CPU")):
        ma, mb = med(a, k), med(b, k)
        row = f"| random layered | {n} | {what} | {ma:.1f} | {mb:.1f} | {mb - ma:.1f} |"
        if fa:
            pa, pb = med(fa, k), med(fb, k)
            ratio = (mb - ma) / (pb - pa) if pb > pa else float("nan")
            row += f" {pa:.1f} | {pb:.1f} | {pb - pa:.1f} | {ratio:.2f}× |"
        else:
            row += " | | | |"
        print(row)


if __name__ == "__main__":
    main()
