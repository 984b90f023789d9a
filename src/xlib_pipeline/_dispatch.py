"""Which hook implementations the facade (:class:`~._hooks.Hooks`) may call directly,
without pluggy's per-call machinery, and in what order: the per-task hooks and the payload
providers, the calls a run makes once per task, and the per-run hooks (once per run: once
per micro-batch of a stream)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

from .exceptions import PipelineError, PluginError

#: The hooks called once per task attempt, and their arguments in spec order: called
#: directly (see :func:`direct_calls`) when pluggy's dispatch adds nothing.
PER_TASK = {
    "before_task": ("task", "run", "inputs"),
    "after_task": ("task", "run", "outcome"),
    "task_scope": ("task", "run"),
}

#: The payload providers called once per stored output (``firstresult``: the first non-None
#: answer wins, the core's pass-through answers last): called directly too.
PER_PAYLOAD = {
    "encrypt": ("data", "ref"),
    "decrypt": ("data", "ref"),
}

#: The hooks called once per run (a stream calls them once per micro-batch, plus
#: ``stream_event``), and their arguments in spec order: pluggy's dispatch of these seven
#: cost 100-140 µs per stream batch with every compliance plugin (a third of the plugins'
#: own work in them), so they are called directly too. ``select_executor`` and
#: ``resolve_principal`` are ``firstresult``.
PER_RUN = {
    "prepare_run": ("manager", "pipeline", "tasks", "options"),
    "resolve_principal": ("principal", "config"),
    "select_executor": ("run",),
    "validate_pipeline": ("pipeline", "run"),
    "before_pipeline": ("run",),
    "after_pipeline": ("run", "result"),
    "lane_idle": ("run",),
    "stream_event": ("stream", "event", "info"),
}

#: Every hook called directly when it can be, and its arguments in spec order.
DIRECT = {**PER_TASK, **PER_PAYLOAD, **PER_RUN}

#: One implementation called directly: its function, the positions of the arguments it
#: takes among the hook's (``None``: all, in order) and its plugin's name.
Direct = tuple[Callable[..., Any], tuple[int, ...] | None, str]


def direct_calls(pm: pluggy.PluginManager, hook: str) -> tuple[Direct, ...] | None:
    """The implementations of a per-task, payload or per-run hook (see :data:`DIRECT`) in pluggy's
    call order, to be called without pluggy's per-call machinery (argument dict, checks,
    ``_multicall``'s bookkeeping: about 7 µs per hook per task, measured); ``None`` when
    pluggy must dispatch: a wrapper, an implementation taking optional keywords, or
    hook-call tracing/monitoring installed.
    Equivalence with pluggy (order under tryfirst/trylast, argument subsets, results,
    errors) is property-tested in tests/test_hooks_direct.py."""
    own = getattr(pm, "own_hookexec", None)
    if own is None or pm.__dict__.get("_inner_hookexec") is not own:
        return None  # not the core's manager, or tracing/monitoring installed since
    impls = getattr(pm.hook, hook).get_hookimpls()
    spec = DIRECT[hook]
    out: list[Direct] = []
    for impl in reversed(impls):  # pluggy calls the last registered (and tryfirst) first
        if impl.hookwrapper or impl.wrapper or getattr(impl, "kwargnames", ()):
            return None
        names = tuple(impl.argnames)
        if any(a not in spec for a in names):
            return None  # pluggy refused it at registration; let it say so
        pick = None if names == spec else tuple(spec.index(a) for a in names)
        out.append((impl.function, pick, impl.plugin_name))
    return tuple(out)


def _blame(exc: Exception, hook: str, plugin: str | None) -> PipelineError:
    """The error a hook failure surfaces as: the one place plugin errors are attributed.

    A :class:`~xlib_pipeline.exceptions.PipelineError` a plugin raised on purpose
    (``SecurityError``, ``ComplianceError`` ...) passes through with ``.plugin`` set; anything
    else becomes a :class:`PluginError` naming the plugin and the hook.
    """
    if isinstance(exc, PipelineError):
        if getattr(exc, "plugin", None) is None:
            exc.plugin = plugin  # type: ignore[attr-defined]
        return exc
    owner = plugin or "unknown"
    err = PluginError(
        f"plugin {owner!r} failed in hook {hook!r}: {type(exc).__name__}: {exc}",
        plugin=owner,
        hook=hook,
    )
    err.__cause__ = exc
    return err
