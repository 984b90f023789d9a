"""Streams: throughput against a plain loop, per-batch overhead, memory under backpressure.

    python benchmarks/bench_streams.py [--quick] [--repeat N] [--no-write] [--postgres]

1. Throughput: 1,000,000 JSON records (100,000 with --quick) through a 3-task pipeline of
   trivial bodies, ``batch_size=1000``, run store and checkpoints on, a JSON-lines sink.
   Reference in the same process: a plain loop that reads the same file, ``json.loads``
   each line and calls the same three functions on the same batches (it writes nothing).
   Records per second, medians of interleaved repeats; target ours / plain >= 0.5.
2. Per-batch overhead: 300 batches of 10 records through the same pipeline with every
   compliance plugin on (audit, lineage, classification with PII detection, encryption at
   rest) and with the core only, minus the plain loop's time per batch; target <= 1 ms.
   ``--batch-rounds`` interleaved rounds (default 9: a round costs ~0.5 s, and medians of 3
   moved by 0.3 ms from one run to the next on a quiet 2-core VM); the plain loop's own
   time per batch is printed too: it shows the machine's speed during the run.
3. Memory: an endless source into a sink 10x slower than a batch's processing, for 60 s
   (10 s with --quick), in a child process; peak RSS; target < 200 MiB.

4. ``--postgres`` (only this, then exit): the per-batch overhead of the core on the SQLite
   store against the same on a PostgreSQL store (a throwaway local server from
   xlib_pipeline_postgres.testing, fsync on), interleaved in one run, each minus the plain
   loop; the ratio PostgreSQL / SQLite.

Writes ``benchmarks/results/streams.md`` unless ``--no-write`` or ``--quick``.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from xlib_pipeline import Pipeline, PipelineManager

HERE = Path(__file__).resolve().parent


def parse(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return batch


def enrich(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return rows


def emit(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return rows


def three_tasks(name: str = "bench") -> Pipeline:
    p = Pipeline(name)
    p.add_task("parse", parse)
    p.add_task("enrich", enrich, depends_on=["parse"])
    p.add_task("emit", emit, depends_on=["enrich"])
    return p


def write_input(path: Path, n: int) -> None:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": i, "amount": i % 997, "note": "payment"}) + "\n")


def plain_loop(path: Path, batch_size: int) -> int:
    count = 0
    with open(path, "rb") as f:
        batch: list[Any] = []
        for line in f:
            batch.append(json.loads(line))
            if len(batch) == batch_size:
                count += len(emit(enrich(parse(batch))))
                batch = []
        if batch:
            count += len(emit(enrich(parse(batch))))
    return count


def ours(pm: PipelineManager, path: Path, out: Path, batch_size: int) -> int:
    s = pm.stream(
        three_tasks(),
        source=f"jsonl:{path}",
        sink=f"jsonl:{out}",
        batch_size=batch_size,
        from_start=True,
    )
    assert s.status == "completed", s.error
    return s.records


def timed(fn: Any) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def throughput(tmp: Path, n: int, repeat: int) -> dict[str, Any]:
    src = tmp / "in.jsonl"
    write_input(src, n)
    pm = PipelineManager({"store": {"path": str(tmp / "runs.sqlite")}}, entry_points=False)
    plain: list[float] = []
    mine: list[float] = []
    try:
        ours(pm, src, tmp / "out.jsonl", 1000)  # warm-up
        for _ in range(repeat):
            plain.append(timed(lambda: plain_loop(src, 1000)))
            mine.append(timed(lambda: ours(pm, src, tmp / "out.jsonl", 1000)))
    finally:
        pm.close()
    p, m = statistics.median(plain), statistics.median(mine)
    return {"records": n, "plain_s": p, "ours_s": m, "ratio": p / m, "plain": plain, "ours": mine}


def all_plugins_config(tmp: Path) -> dict[str, Any]:
    return {
        "store": {"path": str(tmp / "c.sqlite")},
        "audit": {"path": str(tmp / "audit.jsonl")},
        "lineage": {"transport": {"type": "file", "path": str(tmp / "lineage.jsonl")}},
        "classification": {"detect_pii": True},
        "security": {"encryption_at_rest": True},
    }


def per_batch(tmp: Path, batches: int, repeat: int) -> dict[str, Any]:
    size = 10
    src = tmp / "small.jsonl"
    write_input(src, batches * size)
    rows: dict[str, list[float]] = {"plain": [], "core": [], "all plugins": []}
    managers = {
        "core": PipelineManager({"store": {"path": str(tmp / "core.sqlite")}}, entry_points=False),
        "all plugins": PipelineManager(all_plugins_config(tmp)),
    }
    try:
        for pm in managers.values():
            ours(pm, src, tmp / "o.jsonl", size)  # warm-up
        for _ in range(repeat):
            rows["plain"].append(timed(lambda: plain_loop(src, size)) / batches)
            for name, pm in managers.items():
                rows[name].append(
                    timed(lambda pm=pm: ours(pm, src, tmp / "o.jsonl", size)) / batches
                )
    finally:
        for pm in managers.values():
            pm.close()
    med = {k: statistics.median(v) for k, v in rows.items()}
    # each round's overhead against the same round's plain loop: the spread across rounds
    spread = {
        k: [round((x - p) * 1000, 3) for x, p in zip(rows[k], rows["plain"], strict=True)]
        for k in ("core", "all plugins")
    }
    return {
        "batches": batches,
        "rounds": repeat,
        "per_batch_ms": {k: v * 1000 for k, v in med.items()},
        "overhead_ms": {k: (med[k] - med["plain"]) * 1000 for k in ("core", "all plugins")},
        "round_overheads_ms": spread,
    }


def per_batch_stores(tmp: Path, batches: int, repeat: int) -> dict[str, Any]:
    """Per-batch cost of the core on SQLite and on PostgreSQL, interleaved, minus plain."""
    from xlib_pipeline_postgres.testing import local_server

    size = 10
    src = tmp / "stores.jsonl"
    write_input(src, batches * size)
    rows: dict[str, list[float]] = {"plain": [], "sqlite": [], "postgres": []}
    with local_server(fsync=True) as url:
        managers = {
            "sqlite": PipelineManager({"store": {"path": str(tmp / "s.sqlite")}}),
            "postgres": PipelineManager(
                {"store": {"url": url, "blobs": {"url": str(tmp / "pg-blobs")}}}
            ),
        }
        try:
            for pm in managers.values():
                ours(pm, src, tmp / "o.jsonl", size)  # warm-up
            for _ in range(repeat):
                rows["plain"].append(timed(lambda: plain_loop(src, size)) / batches)
                for name, pm in managers.items():
                    rows[name].append(
                        timed(lambda pm=pm: ours(pm, src, tmp / "o.jsonl", size)) / batches
                    )
        finally:
            for pm in managers.values():
                pm.close()
    med = {k: statistics.median(v) for k, v in rows.items()}
    over = {k: (med[k] - med["plain"]) * 1000 for k in ("sqlite", "postgres")}
    return {
        "batches": batches,
        "per_batch_ms": {k: v * 1000 for k, v in med.items()},
        "overhead_ms": over,
        "ratio": over["postgres"] / over["sqlite"],
    }


MEMORY_CHILD = """
import itertools, json, resource, sys, time
from xlib_pipeline import Pipeline, PipelineManager
seconds, store = float(sys.argv[1]), sys.argv[2]
p = Pipeline("endless")
p.add_task("parse", lambda batch: [{**r, "ok": True} for r in batch])
def endless():
    for i in itertools.count():
        yield {"id": i, "payload": "x" * 200}
with PipelineManager({"store": {"path": store + ".cal"}}, entry_points=False) as pm:
    t0 = time.perf_counter()  # calibrate: one batch's processing time without a slow sink
    cal = pm.stream(p, source=itertools.islice(endless(), 20_000), batch_size=1000)
    per_batch = (time.perf_counter() - t0) / cal.batches
def slow_sink(records):
    time.sleep(10 * per_batch)
with PipelineManager({"store": {"path": store, "record_outputs": False}}, entry_points=False) as pm:
    s = pm.stream(p, source=endless(), sink=slow_sink, batch_size=1000, max_in_flight=4,
                  wait=False)
    start = time.time()
    samples = []
    while time.time() - start < seconds:
        time.sleep(1)
        samples.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    s.stop(); s.wait()
print(json.dumps({"records": s.records, "peak_kib": max(samples), "samples_kib": samples,
                  "batch_ms": per_batch * 1000}))
"""


def memory(tmp: Path, seconds: float) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD, str(seconds), str(tmp / "m.sqlite")],
        capture_output=True,
        text=True,
        timeout=seconds + 300,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    data: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return data


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch-rounds", type=int, default=9, help="per-batch overhead rounds")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--postgres", action="store_true", help="SQLite vs PostgreSQL per batch")
    args = ap.parse_args()
    if args.postgres:
        with tempfile.TemporaryDirectory() as d:
            st = per_batch_stores(Path(d), 100 if args.quick else 300, args.repeat)
        print(
            f"per batch (10 records, {st['batches']} batches, core): "
            + ", ".join(f"{k} {v:.3f} ms" for k, v in st["per_batch_ms"].items())
            + "; overhead "
            + ", ".join(f"{k} {v:.3f} ms" for k, v in st["overhead_ms"].items())
            + f"; postgres/sqlite {st['ratio']:.2f}x"
        )
        return
    n = 100_000 if args.quick else 1_000_000
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        tp = throughput(tmp, n, args.repeat)
        print(
            f"throughput: {n:,} records, plain {n / tp['plain_s']:,.0f} rec/s, ours "
            f"{n / tp['ours_s']:,.0f} rec/s, ours/plain {tp['ratio']:.2f}x (target >= 0.5)"
        )
        pb = per_batch(tmp, 100 if args.quick else 300, args.batch_rounds)
        print(
            f"per batch (10 records, medians of {pb['rounds']} rounds): "
            + ", ".join(f"{k} {v:.3f} ms" for k, v in pb["per_batch_ms"].items())
            + "; overhead "
            + ", ".join(f"{k} {v:.3f} ms" for k, v in pb["overhead_ms"].items())
            + " (target <= 1 ms with all plugins); rounds, all plugins: "
            + str(pb["round_overheads_ms"]["all plugins"])
        )
        mem = memory(tmp, 10 if args.quick else 60)
        print(
            f"memory: endless source, sink 10x slower, {mem['records']:,} records, "
            f"peak {mem['peak_kib'] / 1024:.1f} MiB (target < 200 MiB)"
        )
    if args.quick or args.no_write:
        return
    out = HERE / "results" / "streams.md"
    out.write_text(
        f"# bench_streams ({datetime.now(UTC):%Y-%m-%d}, {platform.python_version()}, "
        f"{platform.machine()})\n\n"
        f"- throughput, {n:,} records, batch 1000: plain {n / tp['plain_s']:,.0f} rec/s, "
        f"ours {n / tp['ours_s']:,.0f} rec/s, **{tp['ratio']:.2f}x** (runs: plain "
        f"{[round(x, 2) for x in tp['plain']]} s, ours {[round(x, 2) for x in tp['ours']]} s)\n"
        f"- per batch of 10 records, medians of {pb['rounds']} rounds: "
        + ", ".join(f"{k} {v:.3f}" for k, v in pb["per_batch_ms"].items())
        + " ms; overhead "
        + ", ".join(f"{k} **{v:.3f}**" for k, v in pb["overhead_ms"].items())
        + f" ms; each round's overhead (ms): {pb['round_overheads_ms']}\n"
        f"- memory: {mem['records']:,} records in the window, peak "
        f"{mem['peak_kib'] / 1024:.1f} MiB, samples (KiB) {mem['samples_kib']}\n"
    )
    _ = resource


if __name__ == "__main__":
    main()
