"""Security plugin costs: envelope encryption per stored output, tenant isolation per task.

Run: ``python benchmarks/bench_security.py [--quick]``; prints markdown tables.

1. Encryption: the ``encrypt``/``decrypt`` hooks of xlib-pipeline-encryption (AES-256-GCM,
   per-tenant data key cached, fresh nonce per output) on 1 KiB and 1 MiB payloads, against
   a plain ``bytes`` copy of the same payload. Target: <= 20 us per 1 KiB output.
2. Tenant isolation: a chain of tasks (each waits for the previous, so the per-task
   latency is measured, not throughput) run with ``isolation_mode="tenant"`` on warm
   tenant worker pools, against the same chain on threads. Target: <= 2 ms per task.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

from xlib_pipeline_encryption import EncryptionPlugin, Keyring, new_master_key

from xlib_pipeline import PayloadRef, Pipeline, PipelineManager

QUICK = "--quick" in sys.argv


def per_op(fn, n: int, repeats: int) -> float:
    """Median seconds per call of ``fn`` over ``repeats`` batches of ``n`` calls."""
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - t0) / n)
    return statistics.median(samples)


def bench_encryption() -> list[tuple[str, float, float, float, float]]:
    ring = Keyring([new_master_key()], source="bench")
    pm = PipelineManager(
        {"security": {"encryption_at_rest": True}}, plugins=[EncryptionPlugin(kms=ring)]
    )
    hooks = pm.hooks
    ref = PayloadRef(run_id="run-1", pipeline="bench", task="t", tenant="acme")
    rows = []
    for label, size, n in (("1 KiB", 1024, 20000), ("1 MiB", 1024**2, 200)):
        if QUICK:
            n = max(20, n // 10)
        data = os.urandom(size)
        ct = hooks.encrypt(data=data, ref=ref)
        copy = per_op(lambda d=data: bytes(bytearray(d)), n, 7)
        enc = per_op(lambda d=data: hooks.encrypt(data=d, ref=ref), n, 7)
        dec = per_op(lambda c=ct: hooks.decrypt(data=c, ref=ref), n, 7)
        rows.append((label, copy * 1e6, enc * 1e6, dec * 1e6, enc / copy))
    return rows


def chain(name: str, n: int, tenant: str) -> Pipeline:
    p = Pipeline(name)
    prev = None
    for k in range(n):
        if prev is None:
            p.add_task(f"t{k}", lambda: 0, tenant_id=tenant)
        else:
            p.add_task(f"t{k}", lambda x: x + 1, depends_on=[prev], tenant_id=tenant)
        prev = f"t{k}"
    return p


def bench_isolation() -> tuple[float, float, float, int]:
    """Threads, a memory-limited tenant pool (RLIMIT_AS and the process-tree watchdog) and
    a CPU-only pool (no watchdog), interleaved in one run."""
    n = 100 if QUICK else 400
    repeats = 3 if QUICK else 7
    pm = PipelineManager({"multi_tenant": True})
    p = chain("iso", n, "acme")
    cpu_only = chain("cpu", n, "globex")
    limits = {"cpu_cores": 1, "memory_gb": 2}
    pm.execute_pipeline(p, isolation_mode="tenant", resource_limits=limits)  # warm the pools
    pm.execute_pipeline(cpu_only, isolation_mode="tenant", resource_limits={"cpu_cores": 1})
    iso, thr, cpu = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = pm.execute_pipeline(p, isolation_mode="tenant", resource_limits=limits)
        iso.append((time.perf_counter() - t0) / n)
        assert r.success and r.final_result == n - 1
        t0 = time.perf_counter()
        r = pm.execute_pipeline(cpu_only, isolation_mode="tenant", resource_limits={"cpu_cores": 1})
        cpu.append((time.perf_counter() - t0) / n)
        assert r.success
        t0 = time.perf_counter()
        r = pm.execute_pipeline(p, isolation_mode="none")
        thr.append((time.perf_counter() - t0) / n)
        assert r.success
    pm.close()
    return statistics.median(thr), statistics.median(iso), statistics.median(cpu), n


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("XLIB_PIPELINE_HOME", os.path.join(tmp, "home"))
        os.environ.setdefault("XLIB_PIPELINE_KEYS_DIR", os.path.join(tmp, "keys"))
        rows = bench_encryption()
        print("### Encryption per stored output (median of 7 batches)\n")
        print(
            "| payload | plain bytes copy (us) | encrypt hook (us) | decrypt hook (us) "
            "| encrypt / copy |"
        )
        print("|---|---:|---:|---:|---:|")
        for label, copy, enc, dec, ratio in rows:
            print(f"| {label} | {copy:.2f} | {enc:.2f} | {dec:.2f} | {ratio:.1f}x |")
        thr, iso, cpu, n = bench_isolation()
        print(f"\n### Tenant isolation per task (chain of {n} tasks, warm pool)\n")
        print("| executor | per task (ms) | overhead vs threads (ms) | ratio |")
        print("|---|---:|---:|---:|")
        print(f"| threads (reference) | {thr * 1e3:.3f} | - | 1.0x |")
        print(
            f"| tenant worker, cpu_cores only | {cpu * 1e3:.3f} | {(cpu - thr) * 1e3:.3f} "
            f"| {cpu / thr:.1f}x |"
        )
        print(
            f"| tenant worker, + memory limit (tree watchdog) | {iso * 1e3:.3f} "
            f"| {(iso - thr) * 1e3:.3f} | {iso / thr:.1f}x |"
        )
        print(f"\nmachine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
