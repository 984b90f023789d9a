"""Monitoring overhead: metrics and tracing together, and alerting, against the bare core.

``python benchmarks/bench_monitoring.py [--quick] [--repeat N]``

The 10,000-task random layered DAG of no-op tasks, 2 worker threads, all contenders in the
same process: the plain graphlib + ThreadPoolExecutor(2) reference loop; the bare core; the
core with metrics (Prometheus registry, nothing exposed) and tracing on the OpenTelemetry
API's default no-op provider; the same with the OpenTelemetry SDK installed as the global
provider (spans recorded, a BatchSpanProcessor handing them to an exporter that drops them);
the SDK making the same spans alone (one run span, one child per task with the plugin's
attributes and parent context) from the task bodies of the reference loop on its 2 threads,
as the pipeline's tasks do, less the plain reference loop of the same round; and the core
with alerting configured with run-level rules only (``run_failed``,
``compliance_violation``: no ``task_*`` rule). Medians of ``--repeat`` rounds; reports µs per
task and the overhead over the bare core measured in the same round. Targets: metrics +
tracing add at most 15 µs per task; alerting with no task rule adds nothing per task.

The live monitor's rows (``--monitor-only`` runs just those): the core with a no-op
``on_event`` callback (the progress events alone), with ``monitor=True`` writing its plain
lines to ``/dev/null``, and with the rich live view drawn to a terminal-like ``/dev/null``.
Its per-task cost must not grow: ``--monitor-against OTHER/src`` also loads another
checkout's ``_progress.py`` and ``_monitor.py`` beside this one's and feeds both monitors the
same 10,000 tasks' events (started, finished) in one process, interleaved: the cost of making
the events and of rendering them, this checkout's over the other's.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
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
from xlib_pipeline._monitor import Monitor


class _TerminalSink:
    """``/dev/null`` that says it is a terminal, so the monitor draws its rich live view."""

    def __init__(self) -> None:
        self._f = open(os.devnull, "w")  # noqa: SIM115 - closed by the process end

    def write(self, text: str) -> int:
        return self._f.write(text)

    def flush(self) -> None:
        self._f.flush()

    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._f.fileno()


SDK_ALONE = "reference: the same spans with the SDK alone (no pipeline)"


CPU: dict[str, list[float]] = {}


def timed(fn, label: str = "") -> float:  # type: ignore[no-untyped-def]
    """Wall seconds of ``fn()``; its process CPU seconds go to ``CPU[label]``."""
    c0 = time.process_time()
    t0 = time.perf_counter()
    fn()
    took = time.perf_counter() - t0
    CPU.setdefault(label, []).append(time.process_time() - c0)
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--monitor-only", action="store_true", help="only the monitor's rows")
    ap.add_argument("--monitor-against", metavar="SRC", help="another checkout's src folder")
    args = ap.parse_args()
    if args.monitor_against:
        monitor_against(Path(args.monitor_against), 2_000 if args.quick else 10_000, args.repeat)
        return
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
        devnull = open(os.devnull, "w")  # noqa: SIM115
        plan = plain.validate_pipeline(pipeline)
        terminal = _TerminalSink()

        def on_event_noop() -> None:
            assert plain.execute_pipeline(pipeline, on_event=lambda e: None).success

        def monitor_plain() -> None:
            with contextlib.redirect_stderr(devnull):  # monitor=True writes to stderr
                assert plain.execute_pipeline(pipeline, monitor=True).success

        def monitor_rich() -> None:
            mon = Monitor(plan, terminal)  # type: ignore[arg-type]
            assert plain.execute_pipeline(pipeline, on_event=mon).success

        contenders["core + on_event (no-op callback)"] = on_event_noop
        contenders["core + monitor (plain lines)"] = monitor_plain
        contenders["core + monitor (rich live view)"] = monitor_rich
        if args.monitor_only:
            keep = ("reference loop", "core")
            for label in list(contenders):
                if label not in keep and "monitor" not in label and "on_event" not in label:
                    del contenders[label]
        for fn in contenders.values():
            fn()
        samples: dict[str, list[float]] = {k: [] for k in contenders}
        for _ in range(repeat):
            for label, fn in contenders.items():
                samples[label].append(timed(fn, label))
        second: dict[str, Any] = {}
        if not args.monitor_only:
            # The SDK provider is global and set once: these contenders come second.
            provider = TracerProvider()
            provider.add_span_processor(BatchSpanProcessor(Drop(), max_queue_size=65536))
            trace.set_tracer_provider(provider)
            sdk = PipelineManager(watched)
            alerts = PipelineManager(alerting)
            tracer = provider.get_tracer("bench")
            deps = dict(zip(dag.names, dag.deps))

            def sdk_spans_alone() -> None:
                """The SDK's own cost for the same spans, made as the pipeline makes them:
                one run span, and one child per task with the plugin's attributes and the
                run span's context as parent, started and ended by each task body on the
                reference loop's 2 threads. Less the reference loop (same round), that is
                what the spans cost by themselves on 2 threads."""
                root = tracer.start_span(f"pipeline {pipeline.name}")
                ctx = trace.set_span_in_context(root)

                def body(name: str) -> Any:
                    def fn(*args: Any) -> None:
                        span = tracer.start_span(
                            f"task {name}",
                            context=ctx,
                            attributes={
                                "xlib.pipeline": pipeline.name,
                                "xlib.task": name,
                                "xlib.attempt": 1,
                            },
                        )
                        span.set_attribute("xlib.status", "succeeded")
                        span.end()

                    return fn

                reference_threads(dag, 2, prepared=(deps, {t: body(t) for t in dag.names}))
                root.end()

            second = {
                "reference loop (2nd round)": lambda: reference_threads(dag, 2),
                "core (2nd round)": runner(plain),
                "core + metrics + tracing (SDK)": runner(sdk),
                SDK_ALONE: sdk_spans_alone,
                "core + alerting (no task rule)": runner(alerts),
            }
            for fn in second.values():
                fn()
            for k in second:
                samples[k] = []
            for _ in range(repeat):
                for label, fn in second.items():
                    samples[label].append(timed(fn, label))
            provider.shutdown()
            sdk.close()
            alerts.close()
        for pm in (plain, noop_tracer):
            pm.close()
        devnull.close()
    ref = statistics.median(samples["reference loop"])
    print(f"layered DAG of {n} no-op tasks, 2 threads, median of {repeat}\n")
    print("| contender | µs/task | × reference | × core | overhead vs core, same round |")
    print("|---|---:|---:|---:|---:|")
    for label, xs in samples.items():
        m = statistics.median(xs)
        base = statistics.median(samples["core (2nd round)" if label in second else "core"])
        extra = ""
        if label not in ("reference loop", "core", "core (2nd round)", SDK_ALONE) and not (
            label.startswith("reference loop")
        ):
            extra = f"{(m - base) / n * 1e6:+.1f} µs/task"
        print(f"| {label} | {m / n * 1e6:.1f} | {m / ref:.2f}× | {m / base:.2f}× | {extra} |")
    if SDK_ALONE in samples:
        with_sdk = statistics.median(samples["core + metrics + tracing (SDK)"])
        core2 = statistics.median(samples["core (2nd round)"])
        ref2 = statistics.median(samples["reference loop (2nd round)"])
        alone = statistics.median(samples[SDK_ALONE]) - ref2
        print(
            f"\nmetrics + tracing with an SDK recording every span, less the SDK's own cost "
            f"for those spans: {(with_sdk - core2 - alone) / n * 1e6:+.1f} µs/task "
            f"(the spans alone on 2 threads: {alone / n * 1e6:.1f} µs/task over the "
            "reference loop)"
        )
        # The same in process CPU (every thread: lanes, the SDK's export thread), steadier
        # than wall time on a shared machine.
        c = {k: statistics.median(v) for k, v in CPU.items()}
        beyond = (
            c["core + metrics + tracing (SDK)"]
            - c["core (2nd round)"]
            - (c[SDK_ALONE] - c["reference loop (2nd round)"])
        )
        print(
            f"the same in process CPU: {beyond / n * 1e6:+.1f} µs/task (the spans alone "
            f"{(c[SDK_ALONE] - c['reference loop (2nd round)']) / n * 1e6:.1f} µs/task CPU "
            "over the reference loop)"
        )
    print(f"\nload average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(f"xlib_pipeline.{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def monitor_against(src: Path, n: int, repeat: int) -> None:
    """Per-task cost of the progress events and of the monitor rendering them: this
    checkout's against ``src``'s, in one process, interleaved rounds, medians."""
    import xlib_pipeline._monitor as this_monitor
    import xlib_pipeline._progress as this_progress
    from xlib_pipeline import Pipeline

    other_progress = _load("_progress_other", src / "xlib_pipeline" / "_progress.py")
    other_monitor = _load("_monitor_other", src / "xlib_pipeline" / "_monitor.py")
    p = Pipeline("bench")
    for i in range(n):
        p.add_task(f"t{i}", lambda: 1)
    with PipelineManager(entry_points=False) as pm:
        plan = pm.validate_pipeline(p)
    names = [f"t{i}" for i in range(n)]

    def make(event: Any) -> float:
        """Seconds to build the two events of each task, as the observer does."""
        now = time.time()
        t0 = time.perf_counter()
        for name in names:
            event(
                kind="task_started", pipeline="bench", run_id="r", time=now, task=name,
                attempt=1, started=now, total=n,
            )  # fmt: skip
            event(
                kind="task_finished", pipeline="bench", run_id="r", time=now, task=name,
                attempt=1, status="succeeded", started=now, finished=now, total=n,
            )  # fmt: skip
        return time.perf_counter() - t0

    def render(module: Any, event: Any, tty: bool) -> float:
        """Seconds for a monitor to take each task's two events."""
        now = time.time()
        events = []
        for name in names:
            events.append(
                event(
                    kind="task_started", pipeline="bench", run_id="r", time=now, task=name,
                    attempt=1, started=now, total=n,
                )
            )  # fmt: skip
            events.append(
                event(
                    kind="task_finished", pipeline="bench", run_id="r", time=now, task=name,
                    attempt=1, status="succeeded", started=now, finished=now, total=n,
                )
            )  # fmt: skip
        sink: Any = _TerminalSink() if tty else open(os.devnull, "w")  # noqa: SIM115
        mon = module.Monitor(plan, sink)
        mon(event(kind="run_started", pipeline="bench", run_id="r", time=now, total=n))
        t0 = time.perf_counter()
        for e in events:
            mon(e)
        took = time.perf_counter() - t0
        if mon._progress is not None:
            mon._progress.stop()
        return took

    this_event, other_event = this_progress.ProgressEvent, other_progress.ProgressEvent
    rows: dict[str, Any] = {
        "making the events": (lambda: make(this_event), lambda: make(other_event)),
        "plain monitor": (
            lambda: render(this_monitor, this_event, False),
            lambda: render(other_monitor, other_event, False),
        ),
        "rich monitor": (
            lambda: render(this_monitor, this_event, True),
            lambda: render(other_monitor, other_event, True),
        ),
    }
    got: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in rows}
    for _ in range(repeat):
        for label, (mine, theirs) in rows.items():
            got[label][0].append(mine())
            got[label][1].append(theirs())
    print(f"progress events and monitor, {n} tasks, median of {repeat}, against {src}\n")
    print("| part | this checkout µs/task | other µs/task | this / other |")
    print("|---|---:|---:|---:|")
    for label, (mine_s, theirs_s) in got.items():
        a, b = statistics.median(mine_s) / n * 1e6, statistics.median(theirs_s) / n * 1e6
        print(f"| {label} | {a:.2f} | {b:.2f} | {a / b:.2f}× |")
    for which in ("plain monitor", "rich monitor"):
        a = statistics.median(got[which][0]) + statistics.median(got["making the events"][0])
        b = statistics.median(got[which][1]) + statistics.median(got["making the events"][1])
        print(f"| events + {which} | {a / n * 1e6:.2f} | {b / n * 1e6:.2f} | {a / b:.2f}× |")
    print(f"\nload average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
