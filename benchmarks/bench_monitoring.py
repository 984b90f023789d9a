"""Monitoring overhead: metrics and tracing together, and alerting, against the bare core.

``python benchmarks/bench_monitoring.py [--quick] [--repeat N]``

The 10,000-task random layered DAG of no-op tasks, 2 worker threads, all contenders in the
same process: the plain graphlib + ThreadPoolExecutor(2) reference loop; the bare core; the
core with metrics (Prometheus registry, nothing exposed) and tracing on the OpenTelemetry
API's default no-op provider; the same with the OpenTelemetry SDK installed as the global
provider (spans recorded, a BatchSpanProcessor handing them to an exporter that drops them);
and the core with alerting configured with run-level rules only (``run_failed``,
``compliance_violation``: no ``task_*`` rule). Medians of ``--repeat`` rounds; reports µs per
task and the overhead over the bare core measured in the same round. Targets: metrics +
tracing add at most 15 µs per task; alerting with no task rule adds nothing per task.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _dags import layered, reference_threads, to_pipeline

from xlib_pipeline import PipelineManager


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    n = 2_000 if args.quick else 10_000
    repeat = 3 if args.quick else args.repeat
    dag = layered(n)
    pipeline = to_pipeline(dag)
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans):  # type: ignore[no-untyped-def]
            return SpanExportResult.SUCCESS

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["XLIB_PIPELINE_HOME"] = str(Path(tmp) / "home")
        base = {"max_workers": 2}
        watched = {**base, "metrics": True, "tracing": True}
        alerting = {
            **base,
            "alerting": {
                "channels": [{"type": "webhook", "url": "http://127.0.0.1:9/never"}],
                "rules": [{"on": "run_failed"}, {"on": "compliance_violation"}],
                "state_file": str(Path(tmp) / "alerting.json"),
            },
        }
        plain = PipelineManager(base)
        noop_tracer = PipelineManager(watched)
        managers = {"core": plain, "core + metrics + tracing (API no-op)": noop_tracer}
        contenders = {"reference loop": lambda: reference_threads(dag, 2)}

        def runner(pm: PipelineManager):  # type: ignore[no-untyped-def]
            def run() -> None:
                result = pm.execute_pipeline(pipeline)
                assert result.success, result.error

            return run

        for label, pm in managers.items():
            contenders[label] = runner(pm)
        for fn in contenders.values():
            fn()
        samples: dict[str, list[float]] = {k: [] for k in contenders}
        for _ in range(repeat):
            for label, fn in contenders.items():
                samples[label].append(timed(fn))
        # The SDK provider is global and set once: these contenders come second.
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Drop(), max_queue_size=65536))
        trace.set_tracer_provider(provider)
        sdk = PipelineManager(watched)
        alerts = PipelineManager(alerting)
        second = {
            "core (2nd round)": runner(plain),
            "core + metrics + tracing (SDK)": runner(sdk),
            "core + alerting (no task rule)": runner(alerts),
        }
        for fn in second.values():
            fn()
        for k in second:
            samples[k] = []
        for _ in range(repeat):
            for label, fn in second.items():
                samples[label].append(timed(fn))
        provider.shutdown()
        for pm in (plain, noop_tracer, sdk, alerts):
            pm.close()
    ref = statistics.median(samples["reference loop"])
    print(f"layered DAG of {n} no-op tasks, 2 threads, median of {repeat}\n")
    print("| contender | µs/task | × reference | overhead vs core, same round |")
    print("|---|---:|---:|---:|")
    for label, xs in samples.items():
        m = statistics.median(xs)
        base_label = "core (2nd round)" if label in second else "core"
        extra = ""
        if label not in ("reference loop", "core", "core (2nd round)"):
            extra = f"{(m - statistics.median(samples[base_label])) / n * 1e6:+.1f} µs/task"
        print(f"| {label} | {m / n * 1e6:.1f} | {m / ref:.2f}× | {extra} |")


if __name__ == "__main__":
    main()
