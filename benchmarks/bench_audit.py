"""Audit plugin overhead: µs per task added by the audit trail, per fsync policy.

Runs a random layered DAG of no-op tasks (default 10,000) on 2 threads with the bare core
and with only the audit plugin registered (``entry_points=False`` plus an explicit
``AuditPlugin()``), so other installed plugins do not blur the numbers. Also times an
unconfigured audit plugin (must cost nothing), a plugin with empty ``before_task`` /
``after_task`` hooks (the core's dispatch, which any per-attempt recorder pays) and a
plain-Python hash chain doing the same writes (json.dumps + sha256 + os.write, 2 records
per task) as a reference.

    python benchmarks/bench_audit.py [--tasks 10000] [--repeat 5] [--always-repeat 1]

Prints a markdown table; medians of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import statistics
import tempfile
import threading
import time
from pathlib import Path

from xlib_pipeline_audit import AuditPlugin, verify

from xlib_pipeline import Pipeline, PipelineManager, hookimpl


def noop(*args: object) -> None:
    return None


class NoopHooks:
    """Empty ``before_task``/``after_task`` impls: what the core's hook dispatch alone
    costs per task, the floor under any plugin that records every attempt."""

    name = "noop-hooks"

    @hookimpl
    def before_task(self, task: object, run: object, inputs: object) -> None:
        return None

    @hookimpl
    def after_task(self, task: object, run: object, outcome: object) -> None:
        return None


def layered_dag(n: int, seed: int = 7) -> Pipeline:
    """A random layered DAG: ~sqrt(n) layers, each task depends on 1-3 earlier-layer tasks."""
    rng = random.Random(seed)
    p = Pipeline(f"bench_{n}")
    width = max(1, int(n**0.5))
    layers: list[list[str]] = []
    made = 0
    while made < n:
        layer = []
        for _ in range(min(width, n - made)):
            name = f"t{made}"
            deps: list[str] = []
            if layers:
                pool = layers[-1] + (layers[-2] if len(layers) > 1 else [])
                deps = rng.sample(pool, k=min(len(pool), rng.randint(1, 3)))
            p.add_task(name, noop, depends_on=deps)
            layer.append(name)
            made += 1
        layers.append(layer)
    return p


#: Process CPU time (every thread: the lanes, the flusher) of the last :func:`time_run`.
last_cpu = [0.0]
#: Context switches (voluntary + involuntary, every thread) of the last :func:`time_run`:
#: each GIL hand-off between the lanes and the flusher thread is at least one.
last_switches = [0]
#: CPU time of the audit flusher threads (fsync, head anchor) in the last :func:`time_run`.
last_flusher_cpu = [0.0]


def _switches() -> int:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_nvcsw + ru.ru_nivcsw


def _flusher_cpu() -> float:
    """CPU seconds of the live audit flusher threads (``xlib-audit-sync:*``)."""
    total = 0.0
    for t in threading.enumerate():
        if t.name.startswith("xlib-audit-sync") and t.ident is not None:
            try:
                total += time.clock_gettime(time.pthread_getcpuclockid(t.ident))
            except (OSError, AttributeError):  # ended meanwhile, or not on this platform
                pass
    return total


def time_run(pm: PipelineManager, p: Pipeline) -> float:
    """Wall time of one run; its process CPU time goes to ``last_cpu[0]``."""
    f0 = _flusher_cpu()
    s0 = _switches()
    c0 = time.process_time()
    t0 = time.perf_counter()
    result = pm.execute_pipeline(p)
    elapsed = time.perf_counter() - t0
    last_cpu[0] = time.process_time() - c0
    last_switches[0] = _switches() - s0
    last_flusher_cpu[0] = _flusher_cpu() - f0
    assert result.success, result.error
    return elapsed


def plain_chain(n_records: int, path: Path) -> float:
    """Reference, session 4's: json.dumps + SHA-256 + os.write per record (not the trail's
    bytes, no key, no foreign-writer check). Kept to compare with earlier sessions."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    prev = "0" * 64
    enc = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode
    t0 = time.perf_counter()
    for i in range(n_records):
        rec = {
            "seq": i + 1,
            "ts": "2024-01-01T00:00:00.000000+00:00",
            "actor": "bench",
            "tenant": None,
            "pipeline": "bench",
            "run_id": "01900000-0000-7000-8000-000000000000",
            "task": f"t{i // 2}",
            "action": "task.started",
            "outcome": "started",
            "error_class": None,
            "attempt": 1,
            "prev": prev,
        }
        prev = hashlib.sha256(enc(rec).encode()).hexdigest()
        rec["hash"] = prev
        os.write(fd, (enc(rec) + "\n").encode())
    elapsed = time.perf_counter() - t0
    os.close(fd)
    return elapsed


def honest_chain(n_tasks: int, path: Path, key: bytes) -> float:
    """Reference with the trail's guarantees, in tight plain Python without a scheduler:
    per task the same two records, byte for byte (RFC 8785 text, keys sorted, ``v``,
    ``seq``, ``prev``; the output verifies as a trail), a fresh microsecond timestamp each,
    HMAC-SHA256 from precomputed pads, and for each record the foreign-writer check
    (``lseek``) and one ``write(2)`` before going on (the started record before the
    "body"). No fsync (the trail's is on its flusher thread). What is constant per run
    (actor, pipeline, run id, and per task its name) is text made before the loop: the
    floor for audit's added cost, not a strawman."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    size = os.fstat(fd).st_size
    prev = "0" * 64
    block = key.ljust(64, b"\0")  # HMAC (RFC 2104) pads, as hmac.new precomputes them
    ipad = hashlib.sha256(bytes(b ^ 0x36 for b in block))
    opad = hashlib.sha256(bytes(b ^ 0x5C for b in block))
    actor = json.dumps("bench")
    pipeline = json.dumps(f"bench_{n_tasks}")
    run_id = json.dumps("01900000-0000-7000-8000-000000000000")
    pre = {
        True: f'{{"action":"task.started","actor":{actor},"attempt":1,"error_class":null,'
        f'"outcome":"started","pipeline":{pipeline},"prev":"',
        False: f'{{"action":"task.finished","actor":{actor},"attempt":1,"error_class":null,'
        f'"outcome":"succeeded","pipeline":{pipeline},"prev":"',
    }
    mid = f'","run_id":{run_id},"seq":'
    posts = [f',"task":"t{i}","tenant":null,"ts":"' for i in range(n_tasks)]
    second, prefix = -1, ""
    t0 = time.perf_counter()
    for i in range(2 * n_tasks):
        us = time.time_ns() // 1000
        if us // 1_000_000 != second:
            second = us // 1_000_000
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        ts = f"{prefix}{us % 1_000_000:06d}+00:00"
        body = (
            pre[i % 2 == 0] + prev + mid + str(i + 1) + posts[i // 2] + ts + '","v":2}'
        ).encode()
        inner = ipad.copy()
        inner.update(body)
        outer = opad.copy()
        outer.update(inner.digest())
        prev = outer.hexdigest()
        if os.lseek(fd, 0, os.SEEK_END) != size:
            raise RuntimeError("another writer appended")
        size += os.write(fd, body[:-1] + b',"hash":"' + prev.encode() + b'"}\n')
    elapsed = time.perf_counter() - t0
    os.close(fd)
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--always-repeat", type=int, default=1)
    ap.add_argument(
        "--quick-ab",
        action="store_true",
        help="only bare, audit fsync=batch and the honest chain, interleaved (A/B rounds)",
    )
    args = ap.parse_args()
    n = args.tasks
    p = layered_dag(n)
    tmp = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    os.environ["XLIB_PIPELINE_HOME"] = str(tmp / "home")

    bare = PipelineManager({"max_workers": 2}, entry_points=False)
    inert = PipelineManager({"max_workers": 2}, entry_points=False, plugins=[AuditPlugin()])
    hooks = PipelineManager({"max_workers": 2}, entry_points=False, plugins=[NoopHooks()])
    managers: dict[str, PipelineManager] = {}
    for policy in ("never", "batch", "always"):
        managers[policy] = PipelineManager(
            {"max_workers": 2, "audit": {"path": str(tmp / f"{policy}.jsonl"), "fsync": policy}},
            entry_points=False,
            plugins=[AuditPlugin()],
        )
    # warm-up (plans, thread start, file creation)
    for pm in (bare, inert, hooks, managers["never"], managers["batch"]):
        time_run(pm, p)
    time_run(managers["always"], layered_dag(50))

    times: dict[str, list[float]] = {k: [] for k in ("bare", "inert", "hooks", "never", "batch")}
    times["always"] = []
    cpu: dict[str, list[float]] = {k: [] for k in times}
    switches: dict[str, list[int]] = {k: [] for k in times}
    flusher: dict[str, list[float]] = {k: [] for k in times}
    key = b"bench-key-" * 4
    honest: list[float] = []
    ref: list[float] = []
    honest_cpu: list[float] = []

    def timed(name: str, pm: PipelineManager) -> None:
        times[name].append(time_run(pm, p))
        cpu[name].append(last_cpu[0])
        switches[name].append(last_switches[0])
        flusher[name].append(last_flusher_cpu[0])

    for i in range(args.repeat):
        # interleave so drift hits every variant alike
        timed("bare", bare)
        if not args.quick_ab:
            timed("inert", inert)
            timed("hooks", hooks)
            timed("never", managers["never"])
        timed("batch", managers["batch"])
        c0 = time.process_time()
        honest.append(honest_chain(n, tmp / f"honest{i}.jsonl", key))
        honest_cpu.append(time.process_time() - c0)
        if not args.quick_ab:
            ref.append(plain_chain(2 * n, tmp / f"plain{i}.jsonl"))
    for _ in range(0 if args.quick_ab else args.always_repeat):
        timed("always", managers["always"])
        timed("bare", bare)
    # the honest chain wrote the trail's bytes: it verifies as a trail (with its key)
    honest_report = verify(tmp / "honest0.jsonl", key=key, require_head=False)
    assert honest_report.ok and honest_report.records == 2 * n, str(honest_report)

    def med(name: str) -> tuple[float, float]:
        return statistics.median(times[name]), statistics.median(cpu[name])

    def extra(name: str) -> str:
        sw = statistics.median(switches[name]) / n
        fl = statistics.median(flusher[name]) / n * 1e6
        return f"{sw:.2f} | " + (f"{fl:.1f}" if fl else "-")

    base = med("bare")
    rows = [("bare core (entry_points=False)", *base, None, extra("bare"))]
    if not args.quick_ab:
        rows += [
            ("audit installed, not configured", *med("inert"), base, extra("inert")),
            ("no-op before/after_task hooks (dispatch only)", *med("hooks"), base, extra("hooks")),
            ("audit fsync=never", *med("never"), base, extra("never")),
        ]
    rows.append(("audit fsync=batch (default)", *med("batch"), base, extra("batch")))
    if times["always"]:
        rows.append(("audit fsync=always", *med("always"), base, extra("always")))
    print(f"{n:,} no-op tasks, random layered DAG, max_workers=2; median of {args.repeat} runs")
    print(f"(fsync=always: {args.always_repeat} run(s)); 2 audit records per task + 2 per run")
    print(
        f"load average {os.getloadavg()[0]:.1f}; CPU: process CPU time, every thread; "
        "context switches: getrusage, every thread; flusher: its thread CPU\n"
    )
    print(
        "| variant | run time (s) | µs/task | µs/task added | ratio to bare "
        "| CPU µs/task | CPU µs/task added | context switches/task | flusher CPU µs/task |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, t, c, b, ex in rows:
        added = "-" if b is None else f"{(t - b[0]) / n * 1e6:.1f}"
        ratio = "1.00" if b is None else f"{t / b[0]:.2f}"
        cadded = "-" if b is None else f"{(c - b[1]) / n * 1e6:.1f}"
        print(
            f"| {label} | {t:.3f} | {t / n * 1e6:.1f} | {added} | {ratio} "
            f"| {c / n * 1e6:.1f} | {cadded} | {ex} |"
        )
    h = statistics.median(honest)
    hc = statistics.median(honest_cpu)
    print(
        f"| reference: honest chain, the trail's {2 * n:,} records, HMAC, lseek + write each "
        f"(no scheduler) | {h:.3f} | {h / n * 1e6:.1f} | - | - | {hc / n * 1e6:.1f} | - | - | - |"
    )
    if ref:
        r = statistics.median(ref)
        print(
            f"| reference: session 4's plain-Python chain, {2 * n:,} records (no scheduler) | "
            f"{r:.3f} | {r / n * 1e6:.1f} | - | - | - | - | - | - |"
        )
    added = (med("batch")[0] - base[0]) / n * 1e6
    cadded = (med("batch")[1] - base[1]) / n * 1e6
    print(
        f"\naudit fsync=batch added ÷ honest chain: {added / (h / n * 1e6):.2f} wall, "
        f"{cadded / (hc / n * 1e6):.2f} CPU"
    )
    for policy in ("never", "batch", "always"):
        path = tmp / f"{policy}.jsonl"
        managers[policy].close()
        report = verify(path)
        assert report.ok, str(report)
    print(f"\nAll trails verified intact ({report.records:,} records in the last one).")


if __name__ == "__main__":
    main()
