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

import threading
import time
from collections.abc import Iterable
from typing import Any

from xlib_pipeline import ConfigKey, check_keys, hookimpl

_OTEL: Any = None
# The three calls a task scope makes, bound once the API is imported (see _otel).
_attach: Any = None
_detach: Any = None
_in_context: Any = None


def _otel() -> Any:
    """The OpenTelemetry API, imported on first use (an installed, unconfigured plugin must
    not pay for it on every PipelineManager()); later calls are one global read."""
    global _OTEL, _attach, _detach, _in_context
    if _OTEL is None:
        import opentelemetry.context
        import opentelemetry.propagate
        import opentelemetry.trace

        _attach = opentelemetry.context.attach
        _detach = opentelemetry.context.detach
        _in_context = opentelemetry.trace.set_span_in_context
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


def _recording() -> bool:
    """Whether the global tracer provider records spans (an SDK is configured)."""
    provider = _otel().trace.get_tracer_provider()
    return not isinstance(
        provider, _otel().trace.ProxyTracerProvider | _otel().trace.NoOpTracerProvider
    )


class SpanScope:
    """The task span as a task scope, and its own context manager (one object per attempt):
    in the driver it makes the span current around the body (``context.attach`` of
    ``trace.set_span_in_context(span)``, detached on the way out: cheaper than
    ``use_span``, and the plugin records errors itself, class and redacted message, no stack
    trace); pickled (into a worker process or a Dask worker) it travels as its W3C trace
    context, attached there."""

    __slots__ = ("carrier", "span", "token")

    def __init__(self, span: Any) -> None:
        self.span = span
        self.carrier: dict[str, str] | None = None

    def __call__(self) -> SpanScope:
        return self

    def __enter__(self) -> None:
        span = self.span
        if span is not None:
            self.token = _attach(_in_context(span))
        else:
            self.token = _attach(_OTEL.propagate.extract(self.carrier or {}))

    def __exit__(self, *exc: object) -> None:
        _detach(self.token)

    def __reduce__(self) -> tuple[Any, ...]:
        if self.span is None:  # already a carrier (pickled again on its way)
            return (_from_carrier, (dict(self.carrier or {}),))
        carrier: dict[str, str] = {}
        _otel().propagate.inject(carrier, context=_otel().trace.set_span_in_context(self.span))
        return (_from_carrier, (carrier,))


def _from_carrier(carrier: dict[str, str]) -> SpanScope:
    _otel()  # a worker process imports the API here, before the scope is entered
    scope = SpanScope(None)
    scope.carrier = carrier
    return scope


class _RunTrace:
    """One run's tracing state, found by run id once per hook call: the run span, its
    context (the parent of every task span), the open task spans and the attempts that had
    a span, by task name. Only the lane running a task touches its entries, one attempt at
    a time, so no lock."""

    __slots__ = ("ctx", "open", "per_task_tenant", "pipeline", "span", "spanned", "tenant")

    def __init__(self, span: Any, ctx: Any, run: Any) -> None:
        self.span = span
        self.ctx = ctx
        self.pipeline: str = run.pipeline.name
        self.tenant: str | None = run.tenant_id
        #: Whether a task sets its own ``tenant_id`` (else every task runs for the run's).
        self.per_task_tenant = any("tenant_id" in t.options for t in run.tasks)
        self.open: dict[str, Any] = {}
        #: task name -> the last attempt that has a span, kept from a retried attempt's end
        #: to the task's final outcome (a first attempt that is also the last: no entry).
        self.spanned: dict[str, int] = {}

    def attrs(self, task: Any, run: Any, attempt: int) -> dict[str, Any]:
        tenant = run.tenant_of(task) if self.per_task_tenant else self.tenant
        attrs = {"xlib.pipeline": self.pipeline, "xlib.task": task.name, "xlib.attempt": attempt}
        if tenant:
            attrs["xlib.tenant"] = tenant
        return attrs


class TracingPlugin:
    """OpenTelemetry traces (``xlib-pipeline-tracing``); inert unless config ``tracing``."""

    name = "tracing"

    def __init__(self) -> None:
        self.settings: dict[str, Any] | None = None
        self.tracer: Any = None
        self._manager: Any = None
        self._runs: dict[str, _RunTrace] = {}
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
        self._runs[run.run_id] = _RunTrace(span, _otel().trace.set_span_in_context(span), run)

    def after_pipeline(self, run: Any, result: Any) -> None:
        st = self._runs.pop(run.run_id, None)
        span = st.span if st is not None else None
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

    def _span_after(self, task: Any, run: Any, outcome: Any, st: _RunTrace) -> None:
        """Record a whole attempt span when it ends, with the attempt's own start and end
        times: every attempt without ``propagate`` (no per-task hook but ``after_task``), and
        with it the attempts no ``task_scope`` started (``async def`` bodies, attempts
        another plugin refused in ``before_task``). Tasks that never started (skipped,
        upstream failed, cancelled, reused, cached: attempt 0 or no start time) get none."""
        attempt = outcome.attempt
        if attempt < 1 or outcome.started is None:
            return
        name = task.name
        spanned = st.spanned
        done = spanned.pop(name, 0) if outcome.final else spanned.get(name, 0)
        if attempt <= done:
            return  # that attempt has its span (a refusal reports the attempt before it)
        if not outcome.final:
            spanned[name] = attempt
        status = outcome.status._value_
        attrs = st.attrs(task, run, attempt)
        attrs["xlib.status"] = status if outcome.final else "retrying"
        span = self.tracer.start_span(
            "task " + name,
            context=st.ctx,
            attributes=attrs,
            start_time=int(outcome.started * 1e9),
        )
        if status == "failed":
            self._error(span, outcome.error, run.tenant_of(task))
        span.end(end_time=int((outcome.finished or time.time()) * 1e9))

    def span_of(self, run_id: str, task: str) -> Any:
        """The open span of a task attempt (``None`` when none is open)."""
        st = self._runs.get(run_id)
        return st.open.get(task) if st is not None else None


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
        self.runs = plugin._runs

    @hookimpl
    def after_task(self, task: Any, run: Any, outcome: Any) -> None:
        st = self.runs.get(run.run_id)
        if st is None:
            return
        name = task.name
        span = st.open.pop(name, None)
        if span is None:
            self.plugin._span_after(task, run, outcome, st)
            return
        status = outcome.status._value_
        if outcome.final:
            if st.spanned:
                st.spanned.pop(name, None)
            span.set_attribute("xlib.status", status)
        else:
            st.spanned[name] = outcome.attempt  # the next attempt's number follows it
            span.set_attribute("xlib.status", "retrying")
        if status == "failed":
            self.plugin._error(span, outcome.error, run.tenant_of(task))
        span.end()


class _Propagation:
    """The ``task_scope`` hook, registered only with ``propagate`` on: starts the attempt's
    span right before its body and makes it current there (one per-task hook does both)."""

    def __init__(self, plugin: TracingPlugin) -> None:
        self.plugin = plugin
        self.runs = plugin._runs

    @hookimpl
    def task_scope(self, task: Any, run: Any) -> SpanScope | None:
        st = self.runs.get(run.run_id)
        if st is None:
            return None  # the run has no span (no SDK when it started)
        name = task.name
        attempt = st.spanned.get(name, 0) + 1
        tenant = run.tenant_of(task) if st.per_task_tenant else st.tenant
        attrs = {"xlib.pipeline": st.pipeline, "xlib.task": name, "xlib.attempt": attempt}
        if tenant:
            attrs["xlib.tenant"] = tenant
        span = self.plugin.tracer.start_span("task " + name, context=st.ctx, attributes=attrs)
        st.open[name] = span
        return SpanScope(span)
