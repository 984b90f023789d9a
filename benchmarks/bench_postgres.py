"""Cost of the PostgreSQL run store per task, against the bare core and the SQLite store.

``python benchmarks/bench_postgres.py [--quick] [--workers N]``. Starts a private PostgreSQL
server from the Debian binaries (``xlib_pipeline_postgres.testing.local_server``, fsync on,
as a real server), then times the 10,000-task layered DAG of ``bench_store.py`` (threads)
with no store, with the SQLite store and with the PostgreSQL store, interleaved in one
process, and reports medians and the µs per task each store adds. Target: PostgreSQL adds
<= 60 µs per task. ``--workers 1`` measures the inline mode (one lane: every task waits for
its own commit, one round trip each); the default, 2 lanes, lets concurrent tasks share
commits.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from xlib_pipeline import PipelineManager

sys.path.insert(0, str(Path(__file__).parent))
from bench_store import layered, timed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workers", type=int, default=2, help="max_workers (1: inline)")
    args = ap.parse_args()
    w = args.workers
    n = 2_000 if args.quick else 10_000
    repeats = 3 if args.quick else 5
    from xlib_pipeline_postgres import PostgresPlugin
    from xlib_pipeline_postgres.testing import fresh_database, local_server

    p = layered(n)
    with tempfile.TemporaryDirectory() as tmp, local_server(fsync=True) as server:
        url = fresh_database(server)
        managers = {
            "bare": PipelineManager({"max_workers": w}, entry_points=False),
            "sqlite": PipelineManager(
                {"max_workers": w, "store": {"path": str(Path(tmp) / "runs.sqlite")}},
                entry_points=False,
            ),
            # Only the PostgreSQL plugin, as the other two load no plugin: with every plugin
            # installed, the unconfigured encryption plugin's ``encrypt`` alone made every
            # output go through the hook, a cost of that plugin and not of this store.
            "postgres": PipelineManager(
                {"max_workers": w, "store": {"url": url}},
                entry_points=False,
                plugins=[PostgresPlugin()],
            ),
        }
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in managers}
        for pm in managers.values():
            timed(pm, p)  # warm up (and open the stores)
        for _ in range(repeats):
            for name, pm in managers.items():
                times[name].append(timed(pm, p))  # (wall, this process's CPU)
        for pm in managers.values():
            pm.close()
    print(f"{n} tasks, max_workers {w}, {repeats} repeats, medians")
    print("| store | measure | µs/task | added µs/task | ratio to bare |")
    print("|---|---|---|---|---|")
    for k, what in ((0, "wall"), (1, "process CPU (client)")):
        med = {name: statistics.median(x[k] for x in v) for name, v in times.items()}
        bare = med["bare"]
        for name, t in med.items():
            print(
                f"| {name} | {what} | {t / n * 1e6:.1f} | {(t - bare) / n * 1e6:.1f} "
                f"| {t / bare:.2f}× |"
            )


if __name__ == "__main__":
    main()
