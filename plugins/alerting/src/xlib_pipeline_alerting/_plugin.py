"""The ``alerting`` plugin: rules over run, task and compliance events; alerts delivered in
the background to webhooks, Alertmanager and email; resolved notifications.

The plugin object itself only registers its config key and CLI command. ``configure``
registers the run-level hooks (:class:`RunAlerts`) when ``alerting`` is set, and the
per-task hooks (:class:`TaskWatcher`) only when a rule needs them (``task_failed``,
``retries_exhausted``, ``sla_missed`` on tasks): otherwise alerting adds nothing per task.
Likewise the stream hook (:class:`._streams.StreamAlerts`) for ``stream_failed`` and
``stream_lag`` rules only.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xlib_pipeline import (
    CliCommand,
    ComplianceEvent,
    ConfigKey,
    MetricSample,
    data_dir,
    hookimpl,
)

if TYPE_CHECKING:  # pragma: no cover
    from ._channels import Alert
    from ._sender import ChannelSender
    from ._settings import AlertingSettings, Rule
    from ._state import FiringState

# The entry point loads this module on every PipelineManager(): the settings (attrs
# classes) and channel modules are imported when ``alerting`` is configured or used.

_log = logging.getLogger("xlib_pipeline.alerting")
MAX_MESSAGE = 500


def _settings(value: Any) -> AlertingSettings | None:
    """The ``alerting`` converter (imports the settings module on first use)."""
    from ._settings import settings

    return settings(value)


def _alert(**fields: Any) -> Alert:
    from ._channels import Alert

    return Alert(**fields)


def _error_parts(err: BaseException | None) -> tuple[str | None, str]:
    if err is None:
        return None, ""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        err = cause
    return type(err).__name__, str(err)


class Timers:
    """Deadlines run from one thread (``sla_missed`` fires while the task still runs)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._cancelled: set[int] = set()
        self._cond = threading.Condition()
        self._ids = itertools.count()
        self._closed = False
        self._thread: threading.Thread | None = None

    def at(self, when: float, fn: Callable[[], None]) -> int:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="xlib-alert-sla", daemon=True
                )
                self._thread.start()
            tid = next(self._ids)
            heapq.heappush(self._heap, (when, tid, fn))
            self._cond.notify()
            return tid

    def cancel(self, tid: int) -> None:
        with self._cond:
            self._cancelled.add(tid)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._heap or self._heap[0][0] > time.monotonic()):
                    wait = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(wait)
                if self._closed:
                    return
                _, tid, fn = heapq.heappop(self._heap)
                if tid in self._cancelled:
                    self._cancelled.discard(tid)
                    continue
            try:
                fn()
            except Exception:
                _log.exception("alerting: an SLA check failed")

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)


class AlertingPlugin:
    """Alerts on failed runs, failed tasks, missed SLAs, compliance violations, exhausted
    retries, failed and lagging streams (``xlib-pipeline-alerting``). Inert unless config
    ``alerting`` is set.
    """

    name = "alerting"

    def __init__(self) -> None:
        self.settings: AlertingSettings | None = None
        self.senders: dict[str, ChannelSender] = {}
        self.timers = Timers()
        self.state: FiringState | None = None
        self._manager: Any = None
        self._run_sla: dict[str, list[int]] = {}

    # -- registration ---------------------------------------------------------------------

    @hookimpl
    def register_config_keys(self) -> Iterable[ConfigKey]:
        return (
            ConfigKey(
                name="alerting",
                convert=_settings,
                doc="Alerts: {channels: [webhook|alertmanager|email ...], rules: [...], "
                "queue_size, max_attempts, backoff_seconds, max_backoff_seconds, "
                "timeout_seconds, flush_timeout_seconds, hold_seconds, state_file, labels, "
                "resolve}.",
            ),
        )

    @hookimpl
    def register_cli_commands(self) -> Iterable[CliCommand]:
        return (
            CliCommand(
                name="alerts",
                help="alerting: send a test alert to every channel",
                add_arguments=_cli_arguments,
                run=_cli_run,
            ),
        )

    @hookimpl
    def configure(self, manager: Any, config: Any) -> None:
        s: AlertingSettings | None = config.get("alerting")
        if s is None:
            return
        self.settings = s
        self._manager = weakref.ref(manager)
        from ._sender import ChannelSender

        self.senders = {c.name: ChannelSender(c, s) for c in s.channels}
        path = Path(s.state_file).expanduser() if s.state_file else data_dir() / "alerting.json"
        from ._state import FiringState  # not at import: the plugin loads unconfigured

        self.state = FiringState(path)
        manager.register(RunAlerts(self), name="alerting.runs")
        if s.task_rules:
            manager.register(TaskWatcher(self, s.task_rules), name="alerting.tasks")
        if s.stream_rules:
            from ._streams import StreamAlerts

            manager.register(StreamAlerts(self, s.stream_rules), name="alerting.streams")

    @hookimpl
    def close(self, manager: Any) -> None:
        s = self.settings
        self.timers.close()
        for sender in self.senders.values():
            sender.close(s.flush_timeout_seconds if s else 0.0)

    def collect_metrics(self) -> list[MetricSample]:
        out: list[MetricSample] = []
        for name, snd in self.senders.items():
            labels = {"channel": name}
            out.append(
                MetricSample(
                    "xlib_pipeline_alerts_sent_total",
                    snd.sent,
                    doc="Alerts delivered, by channel.",
                    labels=labels,
                )
            )
            out.append(
                MetricSample(
                    "xlib_pipeline_alerts_undeliverable_total",
                    snd.failed,
                    doc="Alerts given up after every retry, by channel.",
                    labels=labels,
                )
            )
            out.append(
                MetricSample(
                    "xlib_pipeline_alerts_dropped_total",
                    snd.dropped,
                    doc="Alerts dropped because a channel's queue was full.",
                    labels=labels,
                )
            )
        return out

    # -- emitting -------------------------------------------------------------------------

    def redact(self, text: str, tenant: str | None = None) -> str:
        """``text`` fit to leave the run (PII removed by the manager's ``redact``), cut to
        :data:`MAX_MESSAGE` characters."""
        manager = self._manager() if self._manager is not None else None
        if manager is not None:
            text = str(manager.redact(text, tenant=tenant))
        if len(text) > MAX_MESSAGE:
            text = text[:MAX_MESSAGE] + "…"
        return text

    def emit(self, rule: Rule, **fields: Any) -> Alert:
        """Build, record as firing and queue an alert for every channel."""
        s = self.settings
        assert s is not None and self.state is not None
        fields["message"] = self.redact(fields.get("message") or "", fields.get("tenant"))
        alert = _alert(
            rule=rule.on, severity=rule.severity, time=time.time(), labels=dict(s.labels), **fields
        )
        if s.resolve:
            try:
                self.state.firing(alert)
            except OSError as exc:
                _log.error("alerting: cannot record firing alert in %s: %s", self.state.path, exc)
        self.dispatch(alert)
        return alert

    def dispatch(self, alert: Alert) -> None:
        for sender in self.senders.values():
            sender.submit(alert)

    def rules(self, on: str) -> list[Rule]:
        s = self.settings
        return [r for r in s.rules if r.on == on] if s is not None else []

    # -- run hooks (called through RunAlerts) ----------------------------------------------

    def before_pipeline(self, run: Any) -> None:
        name = run.pipeline.name
        ids = []
        for rule in self.rules("sla_missed"):
            if rule.tasks is None and rule.matches(name, None) and rule.seconds is not None:
                ids.append(
                    self.timers.at(time.monotonic() + rule.seconds, self._run_sla_missed(rule, run))
                )
        if ids:
            self._run_sla[run.run_id] = ids

    def _run_sla_missed(self, rule: Rule, run: Any) -> Callable[[], None]:
        def fire() -> None:
            self.emit(
                rule,
                pipeline=run.pipeline.name,
                run_id=run.run_id,
                tenant=run.tenant_id,
                error_class="SLAMissed",
                message=f"run still going after {rule.seconds:g}s",
            )

        return fire

    def after_pipeline(self, run: Any, result: Any) -> None:
        for tid in self._run_sla.pop(run.run_id, ()):
            self.timers.cancel(tid)
        name = result.pipeline
        if result.status in ("failed", "refused"):
            for rule in self.rules("run_failed"):
                if rule.matches(name, None):
                    cls, msg = _error_parts(result.error)
                    self.emit(
                        rule,
                        pipeline=name,
                        run_id=result.run_id,
                        task=getattr(result, "failed_task", None),
                        tenant=run.tenant_id,
                        error_class=cls,
                        message=msg,
                    )
        elif result.success and self.settings is not None and self.settings.resolve:
            self.resolve(name, result.run_id)

    def resolve(
        self,
        pipeline: str,
        run_id: str | None,
        *,
        stream: str | None = None,
        batch: int | None = None,
        messages: dict[str, str] | None = None,
    ) -> None:
        """Send the resolved notification of every alert firing for ``pipeline``'s runs, or,
        given ``stream``, of that stream's alerts whose dedup keys ``messages`` maps to the
        notification's message (committed batch ``batch``)."""
        assert self.state is not None
        try:
            firing = self.state.take(pipeline, stream=stream, keys=messages)
        except OSError as exc:
            _log.error("alerting: cannot read firing alerts from %s: %s", self.state.path, exc)
            return
        for a in firing:
            extra: dict[str, Any] = {}
            if stream is not None:
                extra = {"stream": stream, "batch": batch, "threshold": a.get("threshold")}
                extra["message"] = (messages or {}).get(a["dedup_key"], "")
            self.dispatch(
                _alert(
                    rule=a["rule"],
                    pipeline=pipeline,
                    status="resolved",
                    run_id=run_id,
                    task=a.get("task"),
                    tenant=a.get("tenant"),
                    severity=a["severity"],
                    time=time.time(),
                    labels=a.get("labels") or {},
                    **extra,
                )
            )

    def on_compliance_event(self, event: ComplianceEvent) -> None:
        import fnmatch

        pipeline = event.pipeline or "-"
        for rule in self.rules("compliance_violation"):
            if rule.kinds is not None and not any(
                fnmatch.fnmatchcase(event.kind, k) for k in rule.kinds
            ):
                continue
            if rule.matches(pipeline, event.task) or (
                rule.tasks is None and rule.matches(pipeline, None)
            ):
                self.emit(
                    rule,
                    pipeline=pipeline,
                    run_id=event.run_id,
                    task=event.task,
                    tenant=event.tenant,
                    error_class=event.kind,
                    message=event.detail,
                )


class RunAlerts:
    """Run-level hooks, registered by ``configure`` when ``alerting`` is set."""

    def __init__(self, plugin: AlertingPlugin) -> None:
        self.p = plugin

    @hookimpl
    def before_pipeline(self, run: Any) -> None:
        self.p.before_pipeline(run)

    # tryfirst: seen before other plugins' after_pipeline (all are called even if one raises).
    @hookimpl(tryfirst=True)
    def after_pipeline(self, run: Any, result: Any) -> None:
        self.p.after_pipeline(run, result)

    @hookimpl
    def on_compliance_event(self, event: ComplianceEvent) -> None:
        self.p.on_compliance_event(event)

    @hookimpl
    def collect_metrics(self) -> list[MetricSample]:
        return self.p.collect_metrics()


class TaskWatcher:
    """Per-task hooks, registered only when a rule needs them."""

    def __init__(self, plugin: AlertingPlugin, rules: tuple[Rule, ...]) -> None:
        self.plugin = plugin
        self.rules = rules
        self._match: dict[tuple[str, str], tuple[Rule, ...]] = {}
        self._timers: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def _rules_for(self, pipeline: str, task: str) -> tuple[Rule, ...]:
        key = (pipeline, task)
        hit = self._match.get(key)
        if hit is None:
            hit = tuple(r for r in self.rules if r.matches(pipeline, task))
            self._match[key] = hit
        return hit

    @hookimpl
    def before_task(self, task: Any, run: Any, inputs: tuple[Any, ...]) -> None:
        rules = self._rules_for(run.pipeline.name, task.name)
        if not rules:
            return
        key = (run.run_id, task.name)
        for rule in rules:
            if rule.on == "sla_missed" and rule.seconds is not None:
                with self._lock:
                    if key in self._timers:
                        continue  # a retry: the deadline counts from the first attempt
                    self._timers[key] = self.plugin.timers.at(
                        time.monotonic() + rule.seconds, self._sla_missed(rule, task, run)
                    )

    def _sla_missed(self, rule: Rule, task: Any, run: Any) -> Callable[[], None]:
        def fire() -> None:
            with self._lock:
                self._timers.pop((run.run_id, task.name), None)
            self.plugin.emit(
                rule,
                pipeline=run.pipeline.name,
                run_id=run.run_id,
                task=task.name,
                tenant=run.tenant_of(task),
                error_class="SLAMissed",
                message=f"task still running after {rule.seconds:g}s",
            )

        return fire

    @hookimpl
    def after_task(self, task: Any, run: Any, outcome: Any) -> None:
        if not outcome.final:
            return
        rules = self._rules_for(run.pipeline.name, task.name)
        if not rules:
            return
        with self._lock:
            tid = self._timers.pop((run.run_id, task.name), None)
        if tid is not None:
            self.plugin.timers.cancel(tid)
        if outcome.status.value != "failed":
            return
        cls, msg = _error_parts(outcome.error)
        for rule in rules:
            if rule.on == "task_failed" or (rule.on == "retries_exhausted" and outcome.attempt > 1):
                self.plugin.emit(
                    rule,
                    pipeline=run.pipeline.name,
                    run_id=run.run_id,
                    task=task.name,
                    tenant=run.tenant_of(task),
                    error_class=cls,
                    message=msg,
                )


def _cli_arguments(parser: Any) -> None:
    """The command's arguments (its module is imported when the command is chosen)."""
    from ._cli import _add_arguments

    _add_arguments(parser)


def _cli_run(args: Any) -> int:
    from ._cli import _run

    return int(_run(args))
