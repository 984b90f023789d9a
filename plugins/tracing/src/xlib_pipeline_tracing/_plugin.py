"""The ``tracing`` plugin: OpenTelemetry spans for runs and task attempts.

One span per run (``pipeline <name>``), one child span per task attempt (``task <name>``),
made from the run hooks in the driver: with ``propagate`` (the default) a task span starts
in ``task_scope``, right before the body, and ends in ``after_task``; without it, or for an
attempt no scope started (``async def`` bodies), the whole span is recorded in
``after_task`` with the attempt's own start and end times, so one per-task hook is all
tracing adds. The spans go wherever the
application's OpenTelemetry SDK sends them (its tracer provider and exporters); without an
SDK the API's no-op tracer makes them free. The task span's context reaches the body
through the core's ``task_scope`` hook: attached in the lane for local executors, carried
as W3C trace context (the global propagator) into worker processes and Dask workers, so
spans user code opens nest under the task span.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable
from typing import Any

from xlib_pipeline import ConfigKey, check_keys, hookimpl

_OTEL: Any = None


def _otel() -> Any:
    """The OpenTelemetry API, imported on first use (an installed, unconfigured plugin must
    not pay for it on every PipelineManager()); later calls are one global read."""
    global _OTEL
    if _OTEL is None:
        import opentelemetry.context
        import opentelemetry.propagate
        import opentelemetry.trace

        _OTEL = opentelemetry
    return _OTEL


SECTION_KEYS = ("record_errors", "propagate", "tracer")
EXAMPLE = "true or {'record_errors': True, 'propagate': True}"
MAX_MESSAGE = 500


def settings(value: Any) -> dict[str, Any] | None:
    """Convert config ``tracing``: ``true``/``false`` or a mapping of :data:`SECTION_KEYS`."""
    if value is None or value is False:
        return None
    if value is True:
        value = {}
    out = check_keys(value, SECTION_KEYS, example=EXAMPLE)
    for key in ("record_errors", "propagate"):
        if key in out and not isinstance(out[key], bool):
            raise ValueError(f"'tracing.{key}' must be true or false, got {out[key]!r}")
    tracer = out.get("tracer", "xlib_pipeline")
    if not isinstance(tracer, str) or not tracer:
        raise ValueError(f"'tracing.tracer' must be a non-empty string, got {tracer!r}")
    return {
        "record_errors": out.get("record_errors", True),
        "propagate": out.get("propagate", True),
        "tracer": tracer,
    }


class _Current:
    """Attach an OpenTelemetry context for the body's duration (cheaper than use_span)."""

    __slots__ = ("ctx", "token")

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    def __enter__(self) -> None:
        self.token = _OTEL.context.attach(self.ctx)

    def __exit__(self, *exc: object) -> None:
        _OTEL.context.detach(self.token)


def _recording() -> bool:
    """Whether the global tracer provider records spans (an SDK is configured)."""
    provider = _otel().trace.get_tracer_provider()
    return not isinstance(
        provider, _otel().trace.ProxyTracerProvider | _otel().trace.NoOpTracerProvider
    )


class SpanScope:
    """The task span as a task scope: used directly in the driver; pickled (into a worker
    process or a Dask worker) as its W3C trace context, attached there."""

    __slots__ = ("carrier", "span")

    def __init__(self, span: Any) -> None:
        self.span = span
        self.carrier: dict[str, str] | None = None

    def __call__(self) -> contextlib.AbstractContextManager[Any]:
        otel = _otel()
        if self.span is not None:
            # Only makes the span current: the plugin records errors itself (class and
            # redacted message, no stack trace).
            return _Current(otel.trace.set_span_in_context(self.span))
        return _Current(otel.propagate.extract(self.carrier or {}))

    def __reduce__(self) -> tuple[Any, ...]:
        if self.span is None:  # already a carrier (pickled again on its way)
            return (_from_carrier, (dict(self.carrier or {}),))
        carrier: dict[str, str] = {}
        _otel().propagate.inject(carrier, context=_otel().trace.set_span_in_context(self.span))
        return (_from_carrier, (carrier,))


def _from_carrier(carrier: dict[str, str]) -> SpanScope:
    scope = SpanScope(None)
    scope.carrier = carrier
    return scope


class TracingPlugin:
    """OpenTelemetry traces (``xlib-pipeline-tracing``); inert unless config ``tracing``."""

    name = "tracing"

    def __init__(self) -> None:
        self.settings: dict[str, Any] | None = None
        self.tracer: Any = None
        self._manager: Any = None
        self._runs: dict[str, Any] = {}
        self._parents: dict[str, Any] = {}
        self._tasks: dict[tuple[str, str], Any] = {}
        self._attempts: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._registered = False

    @hookimpl
    def register_config_keys(self) -> Iterable[ConfigKey]:
        return (
            ConfigKey(
                name="tracing",
                convert=settings,
                doc="OpenTelemetry spans: true, or {record_errors, propagate, tracer}.",
            ),
        )

    @hookimpl
    def configure(self, manager: Any, config: Any) -> None:
        s = config.get("tracing")
        if s is None:
            return
        self.settings = s
        self._manager = manager
        from . import __version__

        self.tracer = _otel().trace.get_tracer(s["tracer"], __version__)
        self._registered = False
        manager.register(_RunSpans(self), name="tracing.runs")
        if _recording():
            self._register()

    def _register(self) -> None:
        """Add the per-task hooks, once an SDK records spans: without one, tracing has no
        per-task hook at all. Called by ``configure`` and, for an SDK set up later, by
        ``prepare_run`` (before the run's hooks are fixed)."""
        with self._lock:
            if self._registered:
                return
            self._registered = True
        assert self.settings is not None
        self._manager.register(_TaskSpans(self), name="tracing.tasks")
        if self.settings["propagate"]:
            self._manager.register(_Propagation(self), name="tracing.propagation")

    # -- spans ----------------------------------------------------------------------------

    def _error(self, span: Any, err: BaseException | None, tenant: str | None = None) -> None:
        if err is None:
            span.set_status(_otel().trace.Status(_otel().trace.StatusCode.ERROR))
            return
        cause = getattr(err, "cause", None)
        if isinstance(cause, BaseException):
            err = cause
        cls = type(err).__name__
        span.set_attribute("error.type", cls)
        if not (self.settings and self.settings["record_errors"]):
            span.set_status(_otel().trace.Status(_otel().trace.StatusCode.ERROR, cls))
            return
        message = str(err)
        if len(message) > MAX_MESSAGE:
            message = message[:MAX_MESSAGE] + "…"
        message = str(self._manager.redact(message, tenant=tenant))  # no PII in spans
        span.set_status(_otel().trace.Status(_otel().trace.StatusCode.ERROR, f"{cls}: {message}"))
        # The exception event of the semantic conventions, without the stack trace (it may
        # quote data): only the class and the (redacted) message are kept.
        span.add_event("exception", {"exception.type": cls, "exception.message": message})

    def before_pipeline(self, run: Any) -> None:
        if not _recording():
            return  # no SDK configured: spans would be dropped; nothing per task
        attrs = {"xlib.pipeline": run.pipeline.name, "xlib.run_id": run.run_id}
        if run.tenant_id:
            attrs["xlib.tenant"] = run.tenant_id
        span = self.tracer.start_span(
            f"pipeline {run.pipeline.name}", kind=_otel().trace.SpanKind.INTERNAL, attributes=attrs
        )
        self._runs[run.run_id] = span
        self._parents[run.run_id] = _otel().trace.set_span_in_context(span)

    def after_pipeline(self, run: Any, result: Any) -> None:
        span = self._runs.pop(run.run_id, None)
        self._parents.pop(run.run_id, None)
        if span is None and not _recording():
            return
        if span is None:  # refused before it started: a span says so
            span = self.tracer.start_span(
                f"pipeline {result.pipeline}",
                attributes={"xlib.pipeline": result.pipeline, "xlib.run_id": result.run_id},
            )
        span.set_attribute("xlib.status", result.status)
        if not result.success:
            self._error(span, result.error, run.tenant_id)
        span.end()

    def task_started(self, task: Any, run: Any) -> Any:
        """Start the span of a task attempt (from ``task_scope``, in the lane, just before
        the body); ``None`` when the run has no span."""
        ctx = self._parents.get(run.run_id)
        if ctx is None:
            return None
        key = (run.run_id, task.name)
        # No lock: only the lane running this task touches its key, one attempt at a time.
        attempt = self._attempts.get(key, 0) + 1
        self._attempts[key] = attempt
        attrs = {
            "xlib.pipeline": run.pipeline.name,
            "xlib.task": task.name,
            "xlib.attempt": attempt,
        }
        tenant = run.tenant_of(task)
        if tenant:
            attrs["xlib.tenant"] = tenant
        span = self.tracer.start_span(f"task {task.name}", context=ctx, attributes=attrs)
        self._tasks[key] = span
        return span

    def task_ended(self, task: Any, run: Any, outcome: Any) -> None:
        key = (run.run_id, task.name)
        span = self._tasks.pop(key, None)
        status = outcome.status.value
        if span is None:
            self._span_after(task, run, outcome, key, status)
            return
        if outcome.final:
            self._attempts.pop(key, None)
        span.set_attribute("xlib.status", status if outcome.final else "retrying")
        if status == "failed":
            self._error(span, outcome.error, run.tenant_of(task))
        span.end()

    def _span_after(self, task: Any, run: Any, outcome: Any, key: Any, status: str) -> None:
        """Record a whole attempt span when it ends, with the attempt's own start and end
        times: every attempt without ``propagate`` (no per-task hook but ``after_task``), and
        with it the attempts no ``task_scope`` started (``async def`` bodies, attempts
        another plugin refused in ``before_task``). Tasks that never started (skipped,
        upstream failed, cancelled, reused, cached: attempt 0 or no start time) get none."""
        attempt = outcome.attempt
        if attempt < 1 or outcome.started is None:
            return
        done = self._attempts.pop(key, 0) if outcome.final else self._attempts.get(key, 0)
        if attempt <= done:
            return  # that attempt has its span (a refusal reports the attempt before it)
        if not outcome.final:
            self._attempts[key] = attempt
        ctx = self._parents.get(run.run_id)
        if ctx is None:
            return
        attrs = {
            "xlib.pipeline": run.pipeline.name,
            "xlib.task": task.name,
            "xlib.attempt": attempt,
            "xlib.status": status if outcome.final else "retrying",
        }
        tenant = run.tenant_of(task)
        if tenant:
            attrs["xlib.tenant"] = tenant
        span = self.tracer.start_span(
            f"task {task.name}",
            context=ctx,
            attributes=attrs,
            start_time=int(outcome.started * 1e9),
        )
        if status == "failed":
            self._error(span, outcome.error, tenant)
        span.end(end_time=int((outcome.finished or time.time()) * 1e9))

    def span_of(self, run_id: str, task: str) -> Any:
        """The open span of a task attempt (``None`` when none is open)."""
        return self._tasks.get((run_id, task))


class _RunSpans:
    """The run hooks, registered by ``configure`` when ``tracing`` is set."""

    def __init__(self, plugin: TracingPlugin) -> None:
        self.plugin = plugin

    @hookimpl
    def prepare_run(self, manager: Any, pipeline: Any, tasks: Any, options: Any) -> None:
        if not self.plugin._registered and _recording():
            self.plugin._register()  # an SDK was set up after the manager was built

    @hookimpl
    def before_pipeline(self, run: Any) -> None:
        self.plugin.before_pipeline(run)

    # tryfirst: ends the run span before other plugins' after_pipeline (all are called).
    @hookimpl(tryfirst=True)
    def after_pipeline(self, run: Any, result: Any) -> None:
        self.plugin.after_pipeline(run, result)


class _TaskSpans:
    """``after_task``, registered once spans are recorded: ends the attempt's span, or
    records it whole (see :meth:`TracingPlugin._span_after`)."""

    def __init__(self, plugin: TracingPlugin) -> None:
        self.plugin = plugin

    @hookimpl
    def after_task(self, task: Any, run: Any, outcome: Any) -> None:
        self.plugin.task_ended(task, run, outcome)


class _Propagation:
    """The ``task_scope`` hook, registered only with ``propagate`` on: starts the attempt's
    span right before its body and makes it current there (one per-task hook does both)."""

    def __init__(self, plugin: TracingPlugin) -> None:
        self.plugin = plugin

    @hookimpl
    def task_scope(self, task: Any, run: Any) -> SpanScope | None:
        span = self.plugin.task_started(task, run)
        return SpanScope(span) if span is not None else None
