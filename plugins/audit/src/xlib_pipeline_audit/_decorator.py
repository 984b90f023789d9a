"""``pm.audit_log(...)``: label a task's audit records, or audit direct calls of a function."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from xlib_pipeline import task_options, with_options

from ._settings import AuditSettings, convert_task_option, error_class, now_iso

if TYPE_CHECKING:  # pragma: no cover
    from ._plugin import AuditPlugin


def audit_log(
    plugin: AuditPlugin,
    manager: Any,
    tenant_id: str | None = None,
    operation: str | None = None,
    digests: bool | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    opt: dict[str, Any] = {}
    if operation is not None:
        opt["operation"] = operation
    if digests is not None:
        opt["digests"] = digests
    convert_task_option(opt)
    if tenant_id is not None and (not isinstance(tenant_id, str) or not tenant_id):
        raise ValueError(f"audit_log: tenant_id must be a non-empty string, got {tenant_id!r}")
    if not plugin.enabled and not plugin.explicitly_off:
        # pm.audit_log asks for auditing: never ignore it silently. With no audit config
        # the trail opens with its embedded defaults (data_dir()/audit.jsonl).
        plugin.enable(manager, manager.config, AuditSettings())
    options: dict[str, Any] = {"audit": opt}
    if tenant_id is not None:
        options["tenant_id"] = tenant_id

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        function = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"

        def call_wrapper(inner: Callable[..., Any]) -> Callable[..., Any]:
            def audited(*args: Any, **kwargs: Any) -> Any:
                if not plugin.enabled:
                    return inner(*args, **kwargs)
                return audited_call(
                    plugin, inner, args, kwargs, function, tenant_id, operation, digests
                )

            audited.__xlib_audited__ = True  # type: ignore[attr-defined]
            return audited

        return with_options(fn, options, call_wrapper=call_wrapper)

    return decorator


def audited_call(
    plugin: AuditPlugin,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    function: str,
    tenant: str | None,
    operation: str | None,
    digests: bool | None,
) -> Any:
    state = call_started(plugin, function, tenant, operation, digests, args, kwargs)
    try:
        out = fn(*args, **kwargs)
    except BaseException as exc:
        call_finished(plugin, state, None, exc)
        raise
    call_finished(plugin, state, out, None)
    return out


def call_started(
    plugin: AuditPlugin,
    function: str,
    tenant: str | None,
    operation: str | None,
    digests: bool | None,
    args: tuple[Any, ...],
    kwargs: Any,
    *,
    pipeline: str | None = None,
    task: str | None = None,
) -> tuple[dict[str, Any], bool, float]:
    """Write (and flush) the ``call.started`` record of a direct call."""
    use_digests = plugin.settings.digests if digests is None else digests
    base = {
        "actor": plugin.actor,
        "tenant": tenant,
        "pipeline": pipeline,
        "run_id": None,
        "task": task,
        "function": function,
        "error_class": None,
    }
    if operation is not None:
        base["operation"] = operation
    start = {**base, "ts": now_iso(), "action": "call.started", "outcome": "started"}
    if use_digests:
        from ._canonical import digest

        start["input_digest"] = digest((args, kwargs), plugin.key)
    trail, borrowed = plugin.call_trail()
    try:
        trail.append(start, wait=True)  # in the file before the call runs, like a task
    finally:
        if borrowed:
            trail.release()
    return base, use_digests, time.perf_counter()


def call_finished(
    plugin: AuditPlugin,
    state: tuple[dict[str, Any], bool, float],
    out: Any,
    exc: BaseException | None,
) -> None:
    """Write (and sync) the ``call.finished`` record of a direct call."""
    base, use_digests, t0 = state
    end: dict[str, Any] = {
        **base,
        "ts": now_iso(),
        "action": "call.finished",
        "outcome": "failed" if exc is not None else "succeeded",
        "duration_ms": round((time.perf_counter() - t0) * 1000, 3),
    }
    if exc is not None:
        end["error_class"] = error_class(exc)
    elif use_digests:
        from ._canonical import digest

        end["output_digest"] = digest(out, plugin.key)
    trail, borrowed = plugin.call_trail()
    try:
        trail.append(end)
        trail.sync()  # and synced when it ends, as a run is
    finally:
        if borrowed:
            trail.release()


class DirectCalls:
    """``audit_everything``: audit direct calls of every ``@pipeline.task`` function."""

    def __init__(self, plugin: AuditPlugin) -> None:
        self.plugin = plugin

    def begin(
        self, pipeline: str, task: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Any
    ) -> Any:
        if not self.plugin.enabled or getattr(fn, "__xlib_audited__", False):
            return None  # off, or pm.audit_log already audits this function's calls
        options = task_options(fn)
        label = options.get("audit") or {}
        function = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"
        return call_started(
            self.plugin,
            function.removesuffix(".__wrapped__"),
            options.get("tenant_id"),
            label.get("operation"),
            label.get("digests"),
            args,
            kwargs,
            pipeline=pipeline,
            task=task,
        )

    def end(self, token: Any, result: Any, error: BaseException | None) -> None:
        if token is not None:
            call_finished(self.plugin, token, result, error)
