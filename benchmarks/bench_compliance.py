"""Every compliance plugin on at once, against the plain-Python reference loop.

``python benchmarks/bench_compliance.py [--quick] [--repeat N]``

The 10,000-task random layered DAG of no-op tasks, 2 worker threads, measured in the same
process and run for: the plain graphlib + ThreadPoolExecutor(2) reference loop; the bare
core; the core with its run store; and the core with the run store plus audit (fsync batch),
lineage (file transport), classification (PII scanning) and encryption at rest, and all of
that plus the evidence plugin's signed run attestation. Medians of ``--repeat`` runs,
contenders interleaved; the goal is at most 4x the reference with everything on. Wall time
and process CPU (every thread's, the plugins' background threads included) are reported
side by side: on a loaded machine the wall ratio swings with the reference loop's wall.

Each manager has its own store file, trail and lineage file (one shared file grew with
every contender's runs and made "core + store" pay for the others' rows). The evidence
plugin signs a run's attestation on a background thread after the run returns: the
benchmark waits for it outside the timed run (else it ran during the next contenders,
the reference loop and "core + store" among them) and reports that wait on its own row.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _dags import layered, reference_threads, to_pipeline

from xlib_pipeline import PipelineManager


def every_plugin(home: Path, tag: str, workers: int = 2) -> dict[str, Any]:
    """The configuration with every compliance plugin on (files named by ``tag`` in
    ``home``): run store, audit (fsync batch), lineage (file), PII classification,
    encryption at rest."""
    return {
        "max_workers": workers,
        "store": {"path": str(home / f"{tag}.sqlite")},
        "audit": {"path": str(home / f"{tag}.audit.jsonl"), "fsync": "batch"},
        "lineage": {"transport": {"type": "file", "path": str(home / f"{tag}.lineage.jsonl")}},
        "classification": {"detect_pii": True},
        "security": {"encryption_at_rest": True},
    }


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def timed_cpu(fn) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(wall, process CPU) of one call: the CPU of every thread, the plugins' included."""
    c0 = time.process_time()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    n = 2_000 if args.quick else 10_000
    repeat = 3 if args.quick else args.repeat
    dag = layered(n)
    pipeline = to_pipeline(dag)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        os.environ["XLIB_PIPELINE_HOME"] = str(home)
        os.environ["XLIB_PIPELINE_KEYS_DIR"] = str(Path(tmp) / "keys")
        base = {"max_workers": 2}

        def store(tag: str) -> dict[str, Any]:
            return {"store": {"path": str(home / f"{tag}.sqlite")}}

        def everything(tag: str) -> dict[str, Any]:
            return every_plugin(home, tag)

        from xlib_pipeline_evidence import generate

        key, _, _ = generate(Path(tmp) / "keys" / "evidence.pem")
        managers = {
            "core": PipelineManager(base),
            "core + store": PipelineManager({**base, **store("store")}),
            "all compliance plugins": PipelineManager(everything("all")),
            "all + signed evidence": PipelineManager(
                {**everything("evidence"), "evidence": {"signing_key_file": str(key)}}
            ),
        }
        signer = managers["all + signed evidence"].get_plugin("evidence")
        contenders = {"reference loop": lambda: reference_threads(dag, 2)}
        for label, pm in managers.items():

            def run(pm: PipelineManager = pm) -> None:
                result = pm.execute_pipeline(pipeline)
                assert result.success, result.error

            contenders[label] = run
        for fn in contenders.values():  # warm up: plans, pools, files
            fn()
        signer.wait()
        samples: dict[str, list[float]] = {k: [] for k in contenders}
        cpu: dict[str, list[float]] = {k: [] for k in contenders}
        signing: list[float] = []
        for _ in range(repeat):
            for label, fn in contenders.items():
                wall, used = timed_cpu(fn)
                samples[label].append(wall)
                cpu[label].append(used)
                if label == "all + signed evidence":
                    signing.append(timed(signer.wait))
        for pm in managers.values():
            pm.close()
    ref = statistics.median(samples["reference loop"])
    print(f"10,000-task layered DAG ({n} tasks), 2 threads, median of {repeat}\n")
    ref_cpu = statistics.median(cpu["reference loop"])
    print("| contender | µs/task | × reference | process CPU µs/task | CPU × reference |")
    print("|---|---:|---:|---:|---:|")
    for label, xs in samples.items():
        m = statistics.median(xs)
        c = statistics.median(cpu[label])
        print(
            f"| {label} | {m / n * 1e6:.1f} | {m / ref:.2f}× | {c / n * 1e6:.1f} | "
            f"{c / ref_cpu:.2f}× |"
        )
    m = statistics.median(signing)
    print(
        f"| then waiting for the run's signed attestation (background thread) | "
        f"{m / n * 1e6:.1f} | {m / ref:.2f}× | | |"
    )
    print(f"\nload average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
