"""Signed evidence: what signing adds to a run, and building/verifying a 10,000-task pack.

    python benchmarks/bench_evidence.py [--quick] [--repeat N] [--no-write]

1. Signing cost per run: a 10-task pipeline with store + audit + lineage on, run with and
   without ``evidence`` (interleaved, same process); the median difference is what the
   attestation adds to a run (target <= 5 ms). The time of the attestation step alone
   (``statement_for`` + ``sign``: store read, predicate, Ed25519) is measured too.
2. A 10,000-task layered DAG (no-op tasks) run once with every compliance plugin on;
   then ``evidence build`` and ``evidence verify`` of its pack, medians of N (targets
   <= 2 s each); the reference in the same process is reading the pack's files and
   hashing them (the least any verifier must do), reported as a ratio.

Writes ``benchmarks/results/evidence.md`` unless ``--no-write`` or ``--quick``.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _dags import layered, to_pipeline  # noqa: E402

from xlib_pipeline import Pipeline, PipelineManager  # noqa: E402

CPU: list[float] = []  # process CPU seconds of the last timed() calls (less load-sensitive)


def timed(fn: Callable[[], Any]) -> float:
    gc.collect()
    c0 = time.process_time()
    t0 = time.perf_counter()
    fn()
    CPU.append(time.process_time() - c0)
    return time.perf_counter() - t0


def small_pipeline() -> Pipeline:
    p = Pipeline("bench_small")
    prev = None
    for k in range(10):
        p.add_task(f"t{k}", lambda *a: None, depends_on=[prev] if prev else [])
        prev = f"t{k}"
    return p


def config(home: Path, key: Path | None) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "max_workers": 2,
        "store": {"path": str(home / "runs.sqlite")},
        "audit": {"path": str(home / "audit.jsonl"), "fsync": "batch"},
        "lineage": {"transport": {"type": "file", "path": str(home / "lineage.jsonl")}},
    }
    if key is not None:
        cfg["evidence"] = {"signing_key_file": str(key)}
    return cfg


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=None)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--signing-only", action="store_true", help="part 1 only")
    args = ap.parse_args()
    repeat = args.repeat or (5 if args.quick else 31)
    big = 2_000 if args.quick else 10_000
    tmp = Path(tempfile.mkdtemp(prefix="bench-evidence-"))
    os.environ["XLIB_PIPELINE_HOME"] = str(tmp / "home")
    os.environ["XLIB_PIPELINE_KEYS_DIR"] = str(tmp / "keys")
    from xlib_pipeline_evidence import build, generate, load_private, sign, statement_for, verify

    key, pub, _ = generate(tmp / "keys" / "bench.pem")
    lines: list[str] = []

    # 1. signing cost per run
    p = small_pipeline()
    with (
        PipelineManager(config(tmp / "home", None)) as plain,
        PipelineManager(config(tmp / "home", key)) as signed,
    ):
        for _ in range(3):
            plain.execute_pipeline(p)
            signed.execute_pipeline(p)
        a: list[float] = []
        b: list[float] = []
        ca: list[float] = []
        cb_: list[float] = []
        for _ in range(repeat):
            a.append(timed(lambda: plain.execute_pipeline(p)))
            ca.append(CPU[-1])
            b.append(timed(lambda: signed.execute_pipeline(p)))
            cb_.append(CPU[-1])
        rid = signed.execute_pipeline(p).run_id
        priv = load_private(key)
        step = [timed(lambda: sign(statement_for(signed, rid, None), priv)) for _ in range(repeat)]
    ma, mb, ms = statistics.median(a), statistics.median(b), statistics.median(step)
    mca, mcb = statistics.median(ca), statistics.median(cb_)
    lines += [
        "## Signing cost per run (10-task chain, store + audit + lineage on)",
        "",
        f"{repeat} interleaved runs each, medians. Load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} CPUs. CPU: the process's CPU time while the run returned (the "
        "background signing thread included while it overlaps).",
        "",
        "| run | median wall | median CPU | |",
        "|---|---:|---:|---|",
        f"| without evidence | {ma * 1e3:.2f} ms | {mca * 1e3:.2f} ms | reference |",
        f"| with evidence | {mb * 1e3:.2f} ms | {mcb * 1e3:.2f} ms | {mb / ma:.2f}× |",
        f"| **added by signing** | **{(mb - ma) * 1e3:.2f} ms** | {(mcb - mca) * 1e3:.2f} ms "
        "| target ≤ 5 ms |",
        f"| statement rebuilt from the store + Ed25519 (as for a pack) | {ms * 1e3:.2f} ms | | |",
        "",
    ]
    print("\n".join(lines[-10:]))
    if args.signing_only:
        shutil.rmtree(tmp, ignore_errors=True)
        return 0

    # 2. a 10,000-task pack
    home = tmp / "big"
    dag = layered(big)
    pipe = to_pipeline(dag, "bench_big")
    cfg = config(home, key)
    cfg["classification"] = {"detect_pii": False}
    t_run0 = time.perf_counter()
    with PipelineManager(cfg) as pm:
        res = pm.execute_pipeline(pipe)
    t_run = time.perf_counter() - t_run0
    assert res.success, res.error
    cfg_b = dict(cfg)
    cfg_b["evidence"] = {**cfg["evidence"], "enabled": False}
    priv = load_private(key)
    builds: list[float] = []
    verifies: list[float] = []
    refs: list[float] = []
    n = max(3, repeat // 6)
    out = tmp / "pack"
    cpu_b: list[float] = []
    cpu_v: list[float] = []
    cpu_r: list[float] = []
    with PipelineManager(cfg_b) as pm:
        for _ in range(n):
            shutil.rmtree(out, ignore_errors=True)
            builds.append(timed(lambda: build(pm, res.run_id, out, priv)))
            cpu_b.append(CPU[-1])
    for _ in range(n):
        verifies.append(timed(lambda: bool(verify(out, public_key=pub)) or sys.exit(1)))
        cpu_v.append(CPU[-1])
        refs.append(timed(lambda: [hashlib.sha256(f.read_bytes()).digest() for f in out.iterdir()]))
        cpu_r.append(CPU[-1])
    mbld, mver, mref = (statistics.median(x) for x in (builds, verifies, refs))
    cb, cv, cr = (statistics.median(x) for x in (cpu_b, cpu_v, cpu_r))
    load = os.getloadavg()[0]
    size = sum(f.stat().st_size for f in out.iterdir())
    lines += [
        f"## Pack of a {big:,}-task run (layered DAG, audit + lineage + classification)",
        "",
        f"Run itself: {t_run:.2f} s. Pack: {size / 1e6:.1f} MB in {len(list(out.iterdir()))} "
        f"files. Medians of {n}.",
        "",
        f"Load average while measuring: {load:.1f} on {os.cpu_count()} CPUs.",
        "",
        "| step | median wall | median CPU | target | wall vs reading + hashing the pack |",
        "|---|---:|---:|---:|---:|",
        f"| evidence build | {mbld:.3f} s | {cb:.3f} s | ≤ 2 s | {mbld / mref:.0f}× |",
        f"| evidence verify | {mver:.3f} s | {cv:.3f} s | ≤ 2 s | {mver / mref:.0f}× |",
        f"| reference: read + sha256 every file | {mref * 1e3:.1f} ms | {cr * 1e3:.1f} ms | | 1× |",
        "",
    ]
    print("\n".join(lines[-10:]))
    if not (args.quick or args.no_write):
        head = [
            "# Evidence benchmark (`bench_evidence.py`)",
            "",
            f"{datetime.now(UTC):%Y-%m-%d}, Python {platform.python_version()}, "
            f"{os.cpu_count()} CPUs (shared).",
            "",
        ]
        (HERE / "results" / "evidence.md").write_text("\n".join(head + lines))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
