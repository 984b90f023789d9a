"""The ``metrics`` plugin: Prometheus metrics from the driver, for every run.

Nothing is added per task: a run's task counts, attempts and durations are folded in from
its :class:`~xlib_pipeline.PipelineResult` when it ends (``after_pipeline``), and runs still
under way are read at scrape time through :meth:`PipelineManager.live_runs` (their
finished tasks, attempts in flight). Counters never go backwards: a run is folded in under
the same lock a scrape reads under, and skipped from the live view from then on. Label
values are pipeline and task names and bounded status words, never run ids. Each manager
has its own :class:`prometheus_client.CollectorRegistry`.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from xlib_pipeline import ComplianceEvent, ConfigError, ConfigKey, MetricSample, Status, hookimpl

if TYPE_CHECKING:  # pragma: no cover
    from prometheus_client.core import Metric

    from ._settings import MetricsSettings
    from ._streams import StreamStats


def _settings(value: Any) -> MetricsSettings | None:
    """The ``metrics`` converter: the settings module (attrs classes) is imported when the
    key is given, not on every PipelineManager()."""
    from ._settings import settings

    return settings(value)


def _prom() -> Any:
    """prometheus_client, imported on first use (an installed, unconfigured plugin must not
    pay for it on every PipelineManager())."""
    import prometheus_client
    import prometheus_client.core
    import prometheus_client.utils

    return prometheus_client


_log = logging.getLogger("xlib_pipeline.metrics")
_SUCCEEDED = Status.SUCCEEDED
_PENDING = Status.PENDING

#: Compliance event kind -> the counter it increments.
COMPLIANCE_COUNTERS = {
    "run_refused": (
        "xlib_pipeline_runs_refused_total",
        "Runs refused before any task started (validation, access control, compliance).",
    ),
    "clearance_violation": (
        "xlib_pipeline_clearance_violations_total",
        "Data flows found above a task's clearance (classification).",
    ),
    "pii_detected": (
        "xlib_pipeline_pii_detections_total",
        "Task outputs in which a PII detector fired (classification).",
    ),
    "tamper_detected": (
        "xlib_pipeline_audit_tamper_findings_total",
        "Audit trails found edited, truncated or out of step with their head anchor.",
    ),
}


class _PluginSamples:
    """A custom collector: the samples other plugins report through ``collect_metrics``."""

    def __init__(self, plugin: MetricsPlugin) -> None:
        self._plugin = weakref.ref(plugin)

    def describe(self) -> list[Metric]:
        return []  # read at every collect: the families depend on the plugins installed

    def collect(self) -> Iterator[Metric]:
        plugin = self._plugin()
        manager = plugin.manager if plugin is not None else None
        if manager is None:
            return
        try:
            answers = manager.hooks.collect_metrics()
        except Exception:
            _log.warning(
                "a plugin's collect_metrics failed; its samples are left out", exc_info=True
            )
            return
        families: dict[str, Any] = {}
        for s in answers:
            if not isinstance(s, MetricSample):
                continue
            fam = families.get(s.name)
            labels = sorted(s.labels)
            if fam is None:
                core = _prom().core
                cls = core.CounterMetricFamily if s.kind == "counter" else core.GaugeMetricFamily
                fam = families[s.name] = cls(s.name, s.doc or s.name, labels=labels)
            fam.add_metric([str(s.labels[k]) for k in labels], float(s.value))
        yield from families.values()


class _Hist:
    """A histogram's counts (per bucket, not cumulative), sum and count."""

    __slots__ = ("count", "counts", "sum")

    def __init__(self, n: int) -> None:
        self.counts = [0] * (n + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, bounds: tuple[float, ...], value: float) -> None:
        self.counts[bisect.bisect_left(bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self, bounds: tuple[float, ...]) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        total = 0
        les = [_prom().utils.floatToGoString(x) for x in bounds]
        for b, c in zip((*les, "+Inf"), self.counts):
            total += c
            out.append((b, total))
        return out


class _TaskStats:
    __slots__ = ("attempts", "hist", "statuses")

    def __init__(self, n: int) -> None:
        self.attempts = [0, 0, 0]  # succeeded, failed (last attempt), retried
        self.statuses: dict[Status, int] = {}
        self.hist = _Hist(n)


class _PipelineStats:
    __slots__ = ("compliance", "last_success", "run_hist", "runs", "tasks")

    def __init__(self, n: int) -> None:
        self.runs: dict[str, int] = {}
        self.run_hist = _Hist(n)
        self.last_success: float | None = None
        self.compliance: dict[str, int] = {}
        self.tasks: dict[str, _TaskStats] = {}


class _Collector:
    """Renders the plugin's plain counters as Prometheus families at each collect."""

    def __init__(self, plugin: MetricsPlugin) -> None:
        self._plugin = weakref.ref(plugin)

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        plugin = self._plugin()
        if plugin is not None:
            yield from plugin._families()


class _Recorder:
    """The run hooks, registered by ``configure`` when ``metrics`` is set: nothing per task."""

    def __init__(self, plugin: MetricsPlugin) -> None:
        self.p = plugin

    # tryfirst: counted before any other after_pipeline (all are called even if one raises).
    @hookimpl(tryfirst=True)
    def after_pipeline(self, run: Any, result: Any) -> None:
        self.p.after_pipeline(run, result)

    @hookimpl
    def on_compliance_event(self, event: ComplianceEvent) -> None:
        self.p.on_compliance_event(event)

    @hookimpl
    def stream_event(self, stream: Any, event: str, info: Any) -> None:
        self.p.stream_event(stream, event, info)


class MetricsPlugin:
    """Prometheus metrics of every run (``xlib-pipeline-metrics``).

    Inert unless config ``metrics`` is set: ``configure`` then registers the run hooks
    (``metrics.recorder``). ``registry`` holds this manager's metrics; ``port`` is the port
    of the HTTP endpoint once serving. Nothing runs per task; the Prometheus families are
    built at scrape, push or textfile time.
    """

    name = "metrics"

    def __init__(self) -> None:
        self.settings: MetricsSettings | None = None
        self._registry: Any = None
        self._manager: Any = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._folded: set[str] = set()  # runs folded in, still listed as live
        self._stats: dict[str, _PipelineStats] = {}
        self._streams: dict[str, StreamStats] = {}
        self._export_errors: dict[str, int] = {}
        self._bounds: tuple[float, ...] = ()
        self._lock = threading.Lock()
        self._export_lock = threading.Lock()
        self.port: int | None = None

    @property
    def registry(self) -> Any:
        """This manager's :class:`prometheus_client.CollectorRegistry` (made on first use)."""
        if self._registry is None:
            self._registry = _prom().CollectorRegistry(auto_describe=True)
        return self._registry

    @property
    def manager(self) -> Any:
        return self._manager() if self._manager is not None else None

    # -- registration ---------------------------------------------------------------------

    @hookimpl
    def register_config_keys(self) -> Iterable[ConfigKey]:
        return (
            ConfigKey(
                name="metrics",
                convert=_settings,
                doc="Prometheus metrics: true, or {port, addr, pushgateway, job, grouping_key, "
                "push_timeout_seconds, textfile, buckets}.",
            ),
        )

    @hookimpl
    def configure(self, manager: Any, config: Any) -> None:
        s: MetricsSettings | None = config.get("metrics")
        if s is None:
            return
        self.settings = s
        self._bounds = tuple(b for b in s.buckets if b != float("inf"))
        self._manager = weakref.ref(manager)
        self.registry.register(_Collector(self))
        self.registry.register(_PluginSamples(self))
        if s.port is not None:
            try:
                self._server, self._thread = _prom().start_http_server(
                    s.port, addr=s.addr, registry=self.registry
                )
            except OSError as exc:
                from ._settings import EXAMPLE

                raise ConfigError(
                    f"config key 'metrics.port': cannot serve metrics on {s.addr}:{s.port}: "
                    f"{exc.strerror or exc}; choose a free port (0 picks one), e.g. {EXAMPLE}",
                    key="metrics.port",
                ) from exc
            self.port = int(self._server.server_port)
        manager.register(_Recorder(self), name="metrics.recorder")

    def _pipeline(self, name: str) -> _PipelineStats:
        st = self._stats.get(name)
        if st is None:
            with self._lock:
                st = self._stats.setdefault(name, _PipelineStats(len(self._bounds)))
        return st

    def text(self) -> str:
        """The metrics in the Prometheus text exposition format."""
        text: str = _prom().generate_latest(self.registry).decode("utf-8")
        return text

    def _families(self) -> list[Metric]:
        from ._merge import merged

        bounds = self._bounds
        core = _prom().core
        runs = core.CounterMetricFamily(
            "xlib_pipeline_runs", "Runs that ended, by status.", labels=["pipeline", "status"]
        )
        tasks = core.CounterMetricFamily(
            "xlib_pipeline_tasks",
            "Tasks that reached a terminal status.",
            labels=["pipeline", "task", "status"],
        )
        attempts = core.CounterMetricFamily(
            "xlib_pipeline_task_attempts",
            "Task attempts by outcome: succeeded, failed (last attempt), retried.",
            labels=["pipeline", "task", "outcome"],
        )
        task_seconds = core.HistogramMetricFamily(
            "xlib_pipeline_task_duration_seconds",
            "Wall time of a task's last attempt.",
            labels=["pipeline", "task"],
        )
        run_seconds = core.HistogramMetricFamily(
            "xlib_pipeline_run_duration_seconds", "Wall time of a run.", labels=["pipeline"]
        )
        in_flight = core.GaugeMetricFamily(
            "xlib_pipeline_tasks_in_flight", "Task attempts running now.", labels=["pipeline"]
        )
        last = core.GaugeMetricFamily(
            "xlib_pipeline_last_success_timestamp_seconds",
            "When the pipeline last ended successfully (Unix time); alert on its age.",
            labels=["pipeline"],
        )
        compliance = {
            kind: core.CounterMetricFamily(name.removesuffix("_total"), doc, labels=["pipeline"])
            for kind, (name, doc) in COMPLIANCE_COUNTERS.items()
        }
        other = core.CounterMetricFamily(
            "xlib_pipeline_compliance_events",
            "Other compliance events reported by plugins, by kind.",
            labels=["pipeline", "kind"],
        )
        errors = core.CounterMetricFamily(
            "xlib_pipeline_metrics_export_errors",
            "Pushes to the Pushgateway or textfile writes that failed.",
            labels=["exporter"],
        )
        with self._lock:
            partial, flying = self._live()
            for name in sorted(set(self._stats) | set(partial)):
                st = self._stats.get(name) or _PipelineStats(len(bounds))
                for status, n in sorted(st.runs.items()):
                    runs.add_metric([name, status], n)
                if st.run_hist.count:
                    run_seconds.add_metric([name], st.run_hist.cumulative(bounds), st.run_hist.sum)
                in_flight.add_metric([name], flying.get(name, 0))
                if st.last_success is not None:
                    last.add_metric([name], st.last_success)
                for kind, fam in compliance.items():
                    fam.add_metric([name], st.compliance.get(kind, 0))
                for kind, n in sorted(st.compliance.items()):
                    if kind not in compliance:
                        other.add_metric([name, kind], n)
                for task, ts in merged(st, partial.get(name), len(bounds)):
                    for status, n in sorted((str(k.value), v) for k, v in ts.statuses.items()):
                        tasks.add_metric([name, task, status], n)
                    for outcome, n in zip(("succeeded", "failed", "retried"), ts.attempts):
                        if n:
                            attempts.add_metric([name, task, outcome], n)
                    if ts.hist.count:
                        task_seconds.add_metric(
                            [name, task], ts.hist.cumulative(bounds), ts.hist.sum
                        )
            for exporter, n in sorted(self._export_errors.items()):
                errors.add_metric([exporter], n)
            from ._streams import families  # not at import: the plugin loads unconfigured

            streams = list(families(core, self._streams))  # none without streams
        return [
            runs,
            tasks,
            attempts,
            task_seconds,
            run_seconds,
            in_flight,
            last,
            *compliance.values(),
            other,
            errors,
            *streams,
        ]

    def _fold(self, st: _PipelineStats, tasks: Any) -> None:
        """Add a run's task results (final or a live snapshot) to ``st``. Holds the lock."""
        bounds = self._bounds
        width = len(bounds)
        stats = st.tasks
        pending, succeeded = _PENDING, _SUCCEEDED
        bisect_left = bisect.bisect_left
        for name, status, n, started, finished in tasks.rows():
            if status is pending:
                continue
            ts = stats.get(name)
            if ts is None:
                ts = stats[name] = _TaskStats(width)
            statuses = ts.statuses
            statuses[status] = statuses.get(status, 0) + 1
            if n >= 1 and started is not None:
                att = ts.attempts
                att[0 if status is succeeded else 1] += 1
                if n > 1:
                    att[2] += n - 1
                if finished is not None:
                    d = finished - started
                    h = ts.hist
                    h.counts[bisect_left(bounds, d)] += 1
                    h.sum += d
                    h.count += 1

    def _live(self) -> tuple[dict[str, _PipelineStats], dict[str, int]]:
        """Partial stats of the runs under way (not yet folded in) and their attempts in
        flight, by pipeline. Holds the lock."""
        manager = self.manager
        partial: dict[str, _PipelineStats] = {}
        flying: dict[str, int] = {}
        if manager is None:
            return partial, flying
        live = manager.live_runs()
        ids = {lr.run.run_id for lr in live}
        self._folded &= ids  # a folded run no longer listed needs no guard
        for lr in live:
            name = lr.run.pipeline_name
            if lr.run.run_id in self._folded:
                continue
            snap = lr.snapshot()
            st = partial.get(name)
            if st is None:
                st = partial[name] = _PipelineStats(len(self._bounds))
            self._fold(st, snap)
            flying[name] = flying.get(name, 0) + sum(
                1 for row in snap.rows() if row[1] is _PENDING and row[3] is not None
            )
        return partial, flying

    def after_pipeline(self, run: Any, result: Any) -> None:
        st = self._pipeline(result.pipeline)
        with self._lock:
            st.runs[result.status] = st.runs.get(result.status, 0) + 1
            if result.status != "refused":
                st.run_hist.observe(self._bounds, result.duration)
                self._fold(st, result.tasks)
                self._folded.add(run.run_id)  # still listed as live until the hook ends
            if result.success:
                st.last_success = result.finished or time.time()
        self.export()

    def on_compliance_event(self, event: ComplianceEvent) -> None:
        st = self._pipeline(event.pipeline or "")
        with self._lock:
            st.compliance[event.kind] = st.compliance.get(event.kind, 0) + 1

    def stream_event(self, stream: Any, event: str, info: Any) -> None:
        """A stream's event: counted per stream name; its end is exported at once."""
        from ._streams import record

        with self._lock:
            record(self._streams, stream, event, info)
        if event not in ("started", "batch"):  # batches go out with the next run end
            self.export()

    def _export_failed(self, exporter: str) -> None:
        with self._lock:
            self._export_errors[exporter] = self._export_errors.get(exporter, 0) + 1

    # -- exporting ------------------------------------------------------------------------

    def export(self) -> None:
        """Push to the Pushgateway and write the textfile, as configured (at each run end).

        Failures are logged and counted in ``xlib_pipeline_metrics_export_errors_total``;
        they never fail the run.
        """
        s = self.settings
        if s is None:
            return
        with self._export_lock:
            if s.textfile is not None:
                try:
                    _prom().write_to_textfile(s.textfile, self.registry)
                except OSError as exc:
                    self._export_failed("textfile")
                    _log.warning(
                        "metrics: cannot write the textfile %s: %s", s.textfile, exc.strerror
                    )
            if s.pushgateway is not None:
                try:
                    _prom().push_to_gateway(
                        s.pushgateway,
                        job=s.job,
                        registry=self.registry,
                        grouping_key=dict(s.grouping_key),
                        timeout=s.push_timeout_seconds,
                    )
                except Exception as exc:
                    self._export_failed("pushgateway")
                    _log.warning(
                        "metrics: push to the Pushgateway %s failed: %s: %s",
                        s.pushgateway,
                        type(exc).__name__,
                        exc,
                    )

    @hookimpl
    def close(self, manager: Any) -> None:
        server = self._server
        self._server = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
