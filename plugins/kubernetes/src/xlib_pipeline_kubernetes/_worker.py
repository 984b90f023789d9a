"""``xlib-pipeline worker``: what the rendered Deployment runs.

It serves ``/health`` (200 when it can take work, 503 while starting or draining) and
``/metrics`` (Prometheus text format, its own registry), and runs a ``distributed.Worker``
joined to the scheduler (``--scheduler`` or ``$XLIB_PIPELINE_DASK_ADDRESS``); a worker
plugin counts the tasks it runs. TLS settings come from dask's own config
(``DASK_DISTRIBUTED__COMM__TLS__*`` variables, which the rendered manifests set from the
mounted certificate).

Runs are started by the rendered driver ``Job``/``CronJob`` (``xlib-pipeline run``), whose
tasks run on these workers. The former "queue mode" (a loop over job files in a volume) is
gone: nothing could submit to it and its runs never reached the run store.

SIGTERM (or SIGINT) drains: readiness turns 503, the Dask worker retires gracefully (its
tasks and data move to other workers), and the process exits 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from ._manifests import HEALTH_PATH, METRICS_PATH

if TYPE_CHECKING:  # pragma: no cover
    from http.server import ThreadingHTTPServer

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class WorkerMetrics:
    """The worker's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.started = Counter(
            "xlib_pipeline_worker_tasks_started",
            "Task attempts started on this worker.",
            registry=self.registry,
        )
        self.succeeded = Counter(
            "xlib_pipeline_worker_tasks_succeeded",
            "Task attempts that succeeded on this worker.",
            registry=self.registry,
        )
        self.failed = Counter(
            "xlib_pipeline_worker_tasks_failed",
            "Task attempts that failed on this worker.",
            registry=self.registry,
        )
        self.duration = Histogram(
            "xlib_pipeline_worker_task_duration_seconds",
            "Wall-clock seconds of task attempts on this worker.",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "xlib_pipeline_worker_queue_depth",
            "Dask tasks ready or waiting for resources on this worker.",
            registry=self.registry,
        )
        self.ready = Gauge(
            "xlib_pipeline_worker_ready",
            "1 when the worker takes work, 0 while starting or draining.",
            registry=self.registry,
        )

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def task_finished(self, ok: bool, seconds: float | None) -> None:
        """Count one finished attempt."""
        (self.succeeded if ok else self.failed).inc()
        if seconds is not None and seconds >= 0:
            self.duration.observe(seconds)


class WorkerState:
    """Readiness: ``starting`` -> ``ready`` -> ``draining`` -> ``stopped`` (thread-safe)."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self._lock = threading.Lock()
        self.status = "starting"
        self.metrics = metrics
        self.stop = threading.Event()
        self.check: Any = None  # extra readiness check (the Dask worker is running)

    def set(self, status: str) -> None:
        """Move to ``status``."""
        with self._lock:
            if self.status in ("draining", "stopped") and status == "ready":
                return
            self.status = status
        self.metrics.ready.set(1 if status == "ready" else 0)

    def is_ready(self) -> bool:
        """Whether the worker can take work now."""
        if self.status != "ready":
            return False
        check = self.check
        try:
            return bool(check()) if check is not None else True
        except Exception:
            return False

    def drain(self, *_: Any) -> None:
        """Signal handler: stop taking work."""
        self.set("draining")
        self.stop.set()


def make_server(host: str, port: int, state: WorkerState) -> ThreadingHTTPServer:
    """The HTTP server answering /health and /metrics (not started)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        server_version = "xlib-pipeline-worker"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == HEALTH_PATH:
                ready = state.is_ready()
                status = state.status
                if status == "ready" and not ready:
                    status = "unavailable"  # e.g. the Dask worker lost its scheduler
                body = json.dumps({"status": status}).encode()
                self._send(200 if ready else 503, body, "application/json")
            elif path == METRICS_PATH:
                body, ctype = state.metrics.render()
                self._send(200, body, ctype)
            else:
                self._send(404, b'{"error": "not found"}', "application/json")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # probes every few seconds would flood the log

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


# --- dask mode ----------------------------------------------------------------------------------


def _dask_plugin(metrics: WorkerMetrics) -> Any:
    from distributed.diagnostics.plugin import WorkerPlugin

    class TaskCounter(WorkerPlugin):
        """Counts tasks this Dask worker executes (transitions on the worker's loop)."""

        name = "xlib-pipeline-metrics"

        def __init__(self) -> None:
            self.worker: Any = None
            self.begun: dict[Any, float] = {}

        def setup(self, worker: Any) -> None:
            self.worker = worker

        def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
            if finish == "executing":
                metrics.started.inc()
                self.begun[key] = time.monotonic()
            elif start == "executing":
                t0 = self.begun.pop(key, None)
                took = None if t0 is None else time.monotonic() - t0
                if finish == "memory":
                    metrics.task_finished(True, took)
                elif finish == "error":
                    metrics.task_finished(False, took)
            w = self.worker
            if w is not None:
                try:
                    metrics.queue_depth.set(len(w.state.ready) + len(w.state.constrained))
                except Exception:  # pragma: no cover - internals moved
                    pass

    return TaskCounter()


def run_dask(state: WorkerState, args: argparse.Namespace, scheduler: str) -> int:
    """Run a Dask worker joined to ``scheduler`` until SIGTERM; then retire gracefully."""
    import asyncio

    from distributed import Worker
    from distributed.core import Status as DaskStatus

    async def main() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        contact = None
        pod_ip = os.environ.get("POD_IP")
        if pod_ip and args.dask_port:
            scheme = scheduler.split("://", 1)[0] if "://" in scheduler else "tcp"
            contact = f"{scheme}://{pod_ip}:{args.dask_port}"
        worker = Worker(
            scheduler,
            nthreads=args.nthreads,
            host=args.host if args.host != "0.0.0.0" or contact else None,
            port=args.dask_port or 0,
            contact_address=contact,
            name=args.name,
            plugins=(_dask_plugin(state.metrics),),
            death_timeout=args.startup_timeout,
        )
        await worker
        state.check = lambda: worker.status == DaskStatus.running
        state.set("ready")
        print(
            f"xlib-pipeline worker: dask worker {worker.address} joined {scheduler}",
            file=sys.stderr,
        )
        done = asyncio.ensure_future(worker.finished())
        waiter = asyncio.ensure_future(stop.wait())
        await asyncio.wait([done, waiter], return_when=asyncio.FIRST_COMPLETED)
        state.set("draining")
        if not done.done():
            try:
                await asyncio.wait_for(
                    worker.close_gracefully(reason="xlib-pipeline worker drain"),
                    timeout=args.drain_timeout,
                )
            except Exception:
                await worker.close(reason="xlib-pipeline worker drain timed out")
            code = 0
        else:
            code = 0 if stop.is_set() else 1
        waiter.cancel()
        return code

    return asyncio.run(main())


# --- command ------------------------------------------------------------------------------------


def _port(text: str) -> int:
    """argparse type: a TCP port, 0-65535 (0: any free port)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {value}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 1024:
        raise argparse.ArgumentTypeError(f"expected an integer 1-1024, got {text!r}")
    return value


def _seconds(text: str) -> float:
    """argparse type: a finite, non-negative number of seconds (at most a day)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 86400:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"expected seconds between 0 and 86400, got {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``xlib-pipeline worker``."""
    env = os.environ.get
    p.add_argument(
        "--host",
        default=env("XLIB_PIPELINE_WORKER_HOST", "0.0.0.0"),
        help="address /health and /metrics listen on (default $XLIB_PIPELINE_WORKER_HOST)",
    )
    # A string default goes through ``type`` when used, so a bad $XLIB_PIPELINE_WORKER_PORT
    # is an argparse error of this command, not a crash of every command at start-up.
    p.add_argument(
        "--port",
        type=_port,
        default=env("XLIB_PIPELINE_WORKER_PORT", "8080"),
        help="port of /health and /metrics (default $XLIB_PIPELINE_WORKER_PORT or 8080)",
    )
    p.add_argument(
        "--scheduler",
        default=env("XLIB_PIPELINE_DASK_ADDRESS"),
        help="Dask scheduler address to join (default $XLIB_PIPELINE_DASK_ADDRESS; required)",
    )
    p.add_argument("--nthreads", type=_positive_int, default=1, help="Dask worker threads")
    p.add_argument("--dask-port", type=_port, default=0, help="Dask worker listening port")
    p.add_argument("--name", default=env("POD_NAME"), help="worker name (default $POD_NAME)")
    p.add_argument(
        "--drain-timeout",
        type=_seconds,
        default=30.0,
        help="seconds a draining worker may take to hand its tasks and data over",
    )
    p.add_argument(
        "--startup-timeout",
        type=_seconds,
        default=60.0,
        help="seconds to reach the scheduler before giving up",
    )


def run(args: argparse.Namespace) -> int:
    """Serve /health and /metrics and do work until SIGTERM; exit 0 after a clean drain."""
    if not args.scheduler:
        print(
            "xlib-pipeline worker: no Dask scheduler to join: give --scheduler ADDRESS or set "
            "$XLIB_PIPELINE_DASK_ADDRESS (runs are started by the driver Job that "
            "`xlib-pipeline render kubernetes` renders; the worker only runs their tasks)",
            file=sys.stderr,
        )
        return 2
    metrics = WorkerMetrics()
    state = WorkerState(metrics)
    try:
        server = make_server(args.host, args.port, state)
    except OSError as exc:  # unknown host, port in use, no permission
        print(
            f"xlib-pipeline worker: cannot serve on {args.host}:{args.port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 2
    thread = threading.Thread(target=server.serve_forever, name="xlib-worker-http", daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    shown = host.decode() if isinstance(host, bytes) else host
    print(f"xlib-pipeline worker: serving http://{shown}:{port}{HEALTH_PATH}", file=sys.stderr)
    try:
        code = run_dask(state, args, args.scheduler)
    finally:
        state.set("stopped")
        server.shutdown()
        server.server_close()
    print(f"xlib-pipeline worker: stopped (exit {code})", file=sys.stderr)
    return code
