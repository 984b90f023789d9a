"""What durability guarantees (a) and (b) of issue 10 cost, measured against the same runs relaxed.

``python benchmarks/bench_guarantees.py [--repeat 5] [--tasks 10000] [--pin] [--quick]``

Issue 10's guarantee (a): before a task's body starts, its ``task.started`` audit record has
reached the operating system (``write(2)`` returned). That is one ``write(2)`` per task on the
lane that is about to run the body, under the trail's lock (the chain's order is the file's
order). Guarantee (b): before any successor of a task starts, the task's outcome and output
are committed to the run store. This script measures, in one process, contenders
interleaved, medians of ``--repeat`` runs of the 10,000-task random layered DAG of no-op
tasks on 2 threads:

* the plain reference loop (graphlib + ThreadPoolExecutor(2), as in ``bench_compliance``);
* the same loop doing guarantee (a) by hand: in the worker, under one lock, chain a 400-byte
  record (HMAC-SHA256 from precomputed pads, as the trail does) and ``os.write`` it, then
  call the body: the least any implementation of (a) can do in Python;
* the same loop chaining the same records but writing them 256 at a time (no guarantee);
* the bare core; the core with its run store, as shipped and with (b) relaxed; the core
  with the audit plugin (fsync batch), as shipped and with (a) relaxed; every compliance
  plugin (``bench_compliance``'s set), as shipped and with (a) relaxed.

"(a) relaxed" and "(b) relaxed" are experiments of this script only, not settings. (a):
the recorder's per-run ``append`` is swapped for its ``hold`` (the record joins the
group-commit inbox and is written with the next write: at the lane's idle time, by the
flusher, at the run's end). (b): a finished task's successors are released at once instead
of after the commit of its outcome (the commit is still queued, and the run's end still
waits for it: guarantee (c) holds). Every trail is verified at the end.

``--pin`` runs the whole process on one CPU (``sched_setaffinity``): the lanes then hand the
GIL over on one core. Unpinned, on a 2-core machine, each hand-over moves the running thread
to the other core: see RESULTS.md "What guarantee (a) costs".
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _dags import _prepared, layered, reference_threads, to_pipeline
from bench_compliance import every_plugin

from xlib_pipeline import PipelineManager

RECORD = (
    b'{"action":"task.started","actor":"root","attempt":1,"error_class":null,'
    b'"outcome":"started","pipeline":"bench_10000","prev":"%s",'
    b'"run_id":"01a23af1-452d-7201-8b54-85f9a06a9e02","seq":%d,"task":"t111",'
    b'"tenant":null,"ts":"2026-12-03T08:07:00.320766+00:00","v":2}'
)


class HandChain:
    """A hash chain in plain Python: HMAC-SHA256 from precomputed pads, one lock."""

    def __init__(self, path: Path, batch: int) -> None:
        key = b"bench-key-" * 4
        block = key.ljust(64, b"\0")
        self.inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self.outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.lock = threading.Lock()
        self.seq = 0
        self.prev = b"0" * 64
        self.batch = batch
        self.waiting: list[bytes] = []

    def record(self) -> None:
        """Chain one record; write it now (batch 1) or with ``batch`` - 1 others."""
        with self.lock:
            self.seq += 1
            data = RECORD % (self.prev, self.seq)
            inner = self.inner.copy()
            inner.update(data)
            outer = self.outer.copy()
            outer.update(inner.digest())
            self.prev = outer.hexdigest().encode()
            line = data[:-1] + b',"hash":"' + self.prev + b'"}\n'
            if self.batch == 1:
                os.write(self.fd, line)
                return
            self.waiting.append(line)
            if len(self.waiting) >= self.batch:
                os.write(self.fd, b"".join(self.waiting))
                self.waiting.clear()

    def flush(self) -> None:
        with self.lock:
            if self.waiting:
                os.write(self.fd, b"".join(self.waiting))
                self.waiting.clear()


def by_hand(dag: Any, chain: HandChain) -> Callable[[], None]:
    """The reference loop, every body preceded by one chained record."""
    deps, fns = _prepared(dag)
    record = chain.record

    def before(fn: Callable[..., Any]) -> Callable[..., Any]:
        def body(*args: Any) -> Any:
            record()
            return fn(*args)

        return body

    wrapped = {name: before(fn) for name, fn in fns.items()}

    def run() -> None:
        reference_threads(dag, 2, (deps, wrapped))
        chain.flush()

    return run


def relax_started_records() -> Callable[[bool], None]:
    """Experiment only: make the audit recorder hold ``task.started`` records instead of
    writing them before the body. Returns a switch (True: relaxed) read at each run's start."""
    from xlib_pipeline_audit import _recorder

    relaxed = [False]
    original = _recorder.AuditRun.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if relaxed[0]:
            hold = self.hold

            def append(rec: Any, wait: bool = False) -> None:
                hold(rec)

            self.append = append

    _recorder.AuditRun.__init__ = init  # type: ignore[method-assign]

    def switch(on: bool) -> None:
        relaxed[0] = on

    return switch


def relax_commit_before_successors() -> Callable[[bool], None]:
    """Experiment only: a finished task's successors are released at once, the commit of
    its outcome queued behind them (guarantee (b) relaxed). Returns a switch read at each
    run's start."""
    from xlib_pipeline import _scheduler

    relaxed = [False]
    original = _scheduler.Run.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        commit = self.commit
        if relaxed[0] and commit is not None:

            def released_first(then: Any = None) -> None:
                commit(None)
                if then is not None:
                    then(None)

            self.commit = released_first

    _scheduler.Run.__init__ = init  # type: ignore[method-assign]

    def switch(on: bool) -> None:
        relaxed[0] = on

    return switch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--pin", action="store_true", help="run the process on one CPU")
    ap.add_argument("--quick", action="store_true", help="2,000 tasks, 3 runs (nox -s bench quick)")
    args = ap.parse_args()
    if args.quick:
        args.tasks, args.repeat = 2_000, 3
    if args.pin:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    n = args.tasks
    dag = layered(n)
    pipeline = to_pipeline(dag)
    relax_a = relax_started_records()
    relax_b = relax_commit_before_successors()
    from xlib_pipeline_audit import verify

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        os.environ["XLIB_PIPELINE_HOME"] = str(home)
        os.environ["XLIB_PIPELINE_KEYS_DIR"] = str(Path(tmp) / "keys")

        def audit(tag: str) -> PipelineManager:
            path = str(home / f"{tag}.audit.jsonl")
            return PipelineManager({"max_workers": 2, "audit": {"path": path, "fsync": "batch"}})

        def store(tag: str) -> PipelineManager:
            return PipelineManager({"max_workers": 2, "store": {"path": str(home / tag)}})

        # label: (manager, (a) relaxed, (b) relaxed)
        managers: dict[str, tuple[PipelineManager, bool, bool]] = {
            "bare core": (PipelineManager({"max_workers": 2}), False, False),
            "core + store": (store("store.sqlite"), False, False),
            "core + store, (b) relaxed": (store("store-relaxed.sqlite"), False, True),
            "audit": (audit("audit"), False, False),
            "audit, (a) relaxed": (audit("audit-relaxed"), True, False),
            "every plugin": (PipelineManager(every_plugin(home, "all")), False, False),
            "every plugin, (a) relaxed": (
                PipelineManager(every_plugin(home, "relaxed")),
                True,
                False,
            ),
        }
        contenders: dict[str, Callable[[], None]] = {
            "reference loop": lambda: reference_threads(dag, 2),
            "reference + (a) by hand (one write per task)": by_hand(
                dag, HandChain(home / "hand.jsonl", 1)
            ),
            "reference + the same records, 256 per write": by_hand(
                dag, HandChain(home / "hand-batched.jsonl", 256)
            ),
        }
        for label, (pm, a, b) in managers.items():

            def run(pm: PipelineManager = pm, a: bool = a, b: bool = b) -> None:
                relax_a(a)
                relax_b(b)
                result = pm.execute_pipeline(pipeline)
                assert result.success, result.error

            contenders[label] = run
        for fn in contenders.values():  # warm up: plans, pools, files
            fn()
        wall: dict[str, list[float]] = {k: [] for k in contenders}
        cpu: dict[str, list[float]] = {k: [] for k in contenders}
        for _ in range(args.repeat):
            for label, fn in contenders.items():
                c0, t0 = time.process_time(), time.perf_counter()
                fn()
                wall[label].append((time.perf_counter() - t0) / n * 1e6)
                cpu[label].append((time.process_time() - c0) / n * 1e6)
        for pm, _, _ in managers.values():
            pm.close()
        for tag in ("audit", "audit-relaxed", "all", "relaxed"):
            report = verify(home / f"{tag}.audit.jsonl")
            assert report.ok, (tag, report)

    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    ref, ref_cpu = med["reference loop"], med_cpu["reference loop"]
    bare, bare_cpu = med["bare core"], med_cpu["bare core"]
    where = "pinned to one CPU" if args.pin else f"{os.cpu_count()} CPUs, unpinned"
    print(f"{n:,}-task layered DAG, 2 threads, {where}, median of {args.repeat}\n")
    print("| contender | µs/task | × reference | added over its base | CPU µs/task | CPU × ref |")
    print("|---|---:|---:|---:|---:|---:|")
    for label in contenders:
        base = ref if label.startswith("reference") else bare
        added = "" if label in ("reference loop", "bare core") else f"+{med[label] - base:.1f}"
        print(
            f"| {label} | {med[label]:.1f} | {med[label] / ref:.2f}× | {added} | "
            f"{med_cpu[label]:.1f} | {med_cpu[label] / ref_cpu:.2f}× |"
        )
    print(
        f"\nbase: the reference loop for its variants, the bare core ({bare:.1f} µs, CPU "
        f"{bare_cpu:.1f}) for ours. Load average at the end: "
        + " ".join(f"{x:.1f}" for x in os.getloadavg())
    )


if __name__ == "__main__":
    main()
