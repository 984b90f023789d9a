"""Dask executor overhead: a fan-out DAG (1 -> N -> 1) through xlib-pipeline vs plain Dask.

Both run on the same 2-worker local cluster (fresh worker processes, 1 thread each), in the
same process, interleaved, and report medians of several repeats::

    python benchmarks/bench_dask.py [--n 100] [--repeats 7] [--work-ms 10]

Rows: ``noop`` bodies (pure overhead), the same with every output fetched to the driver
(what a hook reading outputs, or a store recording them, asks for; every run did this
before issue 16), bodies sleeping ``--work-ms``, the same DAG with ``keep_remote``
(intermediate values stay on the cluster, like plain Dask futures), and a ``map_over`` task
against ``client.map``. The store is off.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("XLIB_PIPELINE_HOME", "/tmp/xlib-pipeline-bench-dask")

from xlib_pipeline_dask import DaskPlugin

from xlib_pipeline import OUTPUTS_IN_DRIVER, Pipeline, PipelineManager, hookimpl


class FetchAll:
    """When ``on``: says in ``before_pipeline`` that the driver reads every output."""

    name = "bench-fetch-all"
    on = False

    @hookimpl
    def before_pipeline(self, run):
        if self.on:
            run.stash[OUTPUTS_IN_DRIVER] = True


def root():
    return 1


def mid_noop(r, i):
    return r + i


def sink(*xs):
    return sum(xs)


def make_mid(work: float):
    def mid(r, i):
        if work:
            time.sleep(work)
        return r + i

    return mid


def plain(client, mid, n: int) -> float:
    t = time.perf_counter()
    r = client.submit(root, pure=False)
    ms = [client.submit(mid, r, i, pure=False) for i in range(n)]
    total = client.submit(sink, *ms, pure=False).result()
    took = time.perf_counter() - t
    assert total == sum(1 + i for i in range(n))
    return took


def pipeline(mid, n: int, keep_remote: bool = False) -> Pipeline:
    p = Pipeline(f"fanout_{n}")
    p.add_task("root", root, distribute={"keep_remote": keep_remote})
    names = []
    for i in range(n):
        name = f"mid_{i}"

        def body(r, _i=i):
            return mid(r, _i)

        p.add_task(name, body, depends_on=["root"], distribute={"keep_remote": keep_remote})
        names.append(name)
    p.add_task("sink", sink, depends_on=names)
    return p


def ours(pm, p, n: int) -> float:
    t = time.perf_counter()
    result = pm.execute_pipeline(p, distributed=True)
    took = time.perf_counter() - t
    assert result.success, result.error
    assert result.final_result == sum(1 + i for i in range(n))
    return took


def plain_map(client, mid, n: int) -> float:
    t = time.perf_counter()
    futs = client.map(mid, [1] * n, list(range(n)), pure=False)
    out = client.gather(futs)
    took = time.perf_counter() - t
    assert out == [1 + i for i in range(n)]
    return took


def map_pipeline(mid, n: int) -> Pipeline:
    p = Pipeline(f"map_{n}")
    p.add_task("items", lambda: list(range(n)))
    p.add_task("one", lambda: 1)
    p.add_task("each", mid, depends_on=["one", "items"], map_over=1)
    return p


def ours_map(pm, p, n: int) -> float:
    t = time.perf_counter()
    result = pm.execute_pipeline(p, distributed=True)
    took = time.perf_counter() - t
    assert result.success, result.error
    assert result.final_result == [1 + i for i in range(n)]
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--work-ms", type=float, default=10.0)
    ap.add_argument(
        "--lanes", type=int, default=None, help="distributed.lanes (default 8 per worker thread)"
    )
    ap.add_argument("--only-noop", action="store_true")
    a = ap.parse_args()
    n = a.n
    fetch_all = FetchAll()
    pm = PipelineManager(
        {"distributed": {"n_workers": 2, "threads_per_worker": 1, "lanes": a.lanes}},
        entry_points=False,
        plugins=[DaskPlugin(), fetch_all],
    )
    client = pm.get_plugin("dask").handle.client()
    work = a.work_ms / 1000
    cases = [
        ("noop bodies", mid_noop, False, False),
        ("noop bodies, every output fetched", mid_noop, False, True),
        ("noop bodies, keep_remote", mid_noop, True, False),
        (f"{a.work_ms:g} ms bodies", make_mid(work), False, False),
        (f"{a.work_ms:g} ms bodies, keep_remote", make_mid(work), True, False),
    ]
    if a.only_noop:
        cases = cases[:3]
    rows = []
    for label, mid, keep, fetch in cases:
        fetch_all.on = fetch
        p = pipeline(mid, n, keep_remote=keep)
        ours(pm, p, n)  # warm-up: functions cached on workers
        plain(client, mid, n)
        a_times, b_times = [], []
        for _ in range(a.repeats):
            b_times.append(plain(client, mid, n))
            a_times.append(ours(pm, p, n))
        rows.append(
            (f"1 -> {n} -> 1, {label}", statistics.median(b_times), statistics.median(a_times))
        )
    fetch_all.on = False
    mid = make_mid(work)
    if a.only_noop:
        return _report(pm, a, rows, n)
    mp = map_pipeline(mid, n)
    ours_map(pm, mp, n)
    plain_map(client, mid, n)
    a_times, b_times = [], []
    for _ in range(a.repeats):
        b_times.append(plain_map(client, mid, n))
        a_times.append(ours_map(pm, mp, n))
    rows.append(
        (
            f"map_over {n} items vs client.map, {a.work_ms:g} ms",
            statistics.median(b_times),
            statistics.median(a_times),
        )
    )
    _report(pm, a, rows, n)


def _report(pm, a, rows, n) -> None:
    pm.close()
    print(
        f"Dask executor, 2-worker local cluster (1 thread each), N={n}, "
        f"medians of {a.repeats} (cpu_count={os.cpu_count()})\n"
    )
    print("| case | plain Dask (ms) | xlib-pipeline (ms) | ratio | overhead per task (µs) |")
    print("|---|---:|---:|---:|---:|")
    for label, base, mine in rows:
        tasks = n + 2 if "map_over" not in label else n
        per = (mine - base) / tasks * 1e6
        print(f"| {label} | {base * 1e3:.1f} | {mine * 1e3:.1f} | {mine / base:.2f}x | {per:.0f} |")


if __name__ == "__main__":
    main()
