"""The per-task hooks (before_task, after_task, task_scope) and the payload providers
(encrypt, decrypt: firstresult) call their implementations directly; pluggy's dispatch must
be indistinguishable: same call order under
tryfirst/trylast, same argument subsets in the implementation's own order, same results,
the same first error attributed to the same plugin. Wrappers and hook-call monitoring fall
back to pluggy."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xlib_pipeline import Pipeline, PipelineManager, hookimpl
from xlib_pipeline._dispatch import DIRECT, PER_PAYLOAD, PER_TASK
from xlib_pipeline._hooks import Hooks
from xlib_pipeline._plugins import create_plugin_manager
from xlib_pipeline.exceptions import PipelineError, PluginError


class Refused(PipelineError):
    """A PipelineError a plugin raises on purpose (passes through with .plugin set)."""


_counter = itertools.count()


def _impl(hook: str, args: tuple[str, ...], mode: str, log: list[Any], tag: str) -> Any:
    """An implementation of ``hook`` taking ``args`` (in that order) that logs its call and
    then returns a value, returns None, or raises."""
    params = ", ".join(args)
    src = (
        f"def {hook}(self, {params}):\n"
        f"    log.append((tag, {hook!r}, ({params}{',' if len(args) == 1 else ''})))\n"
        "    if mode == 'value': return ('answer', tag)\n"
        "    if mode == 'error': raise ValueError('boom ' + tag)\n"
        "    if mode == 'refuse': raise Refused('no ' + tag)\n"
        "    return None\n"
    )
    env: dict[str, Any] = {"log": log, "tag": tag, "mode": mode, "Refused": Refused}
    exec(src, env)  # a real function with named parameters: pluggy reads its signature
    return env[hook]


_impl_spec = st.tuples(
    st.sampled_from(sorted(DIRECT)),
    st.sampled_from(["plain", "tryfirst", "trylast"]),
    st.sampled_from(["none", "none", "value", "error", "refuse"]),
    st.randoms(use_true_random=False),
)


def _plugins(spec: list[list[tuple[str, str, str, Any]]], log: list[Any]) -> list[object]:
    out = []
    for k, impls in enumerate(spec):
        attrs: dict[str, Any] = {"name": f"p{k}_{next(_counter)}"}
        for hook, order, mode, rnd in impls:
            if hook in attrs:
                continue
            names = list(DIRECT[hook])
            chosen = [a for a in names if rnd.random() < 0.7]
            rnd.shuffle(chosen)
            fn = _impl(hook, tuple(chosen), mode, log, attrs["name"])
            opts = {"tryfirst": {"tryfirst": True}, "trylast": {"trylast": True}}.get(order, {})
            attrs[hook] = hookimpl(**opts)(fn)
        out.append(type(f"Plugin{k}", (), attrs)())
    return out


def _outcome(hooks: Hooks, hook: str, args: tuple[Any, ...]) -> tuple[str, Any]:
    kwargs = dict(zip(DIRECT[hook], args))
    try:
        return ("ok", getattr(hooks, hook)(**kwargs))
    except PipelineError as exc:
        return (type(exc).__name__, (str(exc), getattr(exc, "plugin", None)))


@settings(max_examples=120, deadline=None)
@given(st.lists(st.lists(_impl_spec, min_size=1, max_size=3), min_size=1, max_size=5))
def test_direct_calls_are_pluggy_calls(spec: list[list[tuple[str, str, str, Any]]]) -> None:
    log: list[Any] = []
    pm, _ = create_plugin_manager(explicit=_plugins(spec, log), entry_points=False)
    direct, through = Hooks(pm), Hooks(pm, direct=False)
    for hook in DIRECT:
        assert (direct._direct[hook] is not None) == direct.has[hook]
        assert through._direct[hook] is None
        args = tuple(object() for _ in DIRECT[hook])
        if hook in PER_PAYLOAD:  # the core's pass-through answers last: give it bytes
            args = (b"payload " + str(next(_counter)).encode(), args[1])
        log.clear()
        a = _outcome(direct, hook, args)
        calls_a = list(log)
        log.clear()
        b = _outcome(through, hook, args)
        assert a == b
        assert calls_a == log


class _Wrapping:
    name = "wrapping"

    def __init__(self, seen: list[str]) -> None:
        self.seen = seen

    @hookimpl(hookwrapper=True)
    def before_task(self, task: Any, run: Any, inputs: Any) -> Any:
        self.seen.append("wrapper in")
        yield
        self.seen.append("wrapper out")

    @hookimpl
    def after_task(self, task: Any, run: Any, outcome: Any) -> None:
        self.seen.append(f"after {outcome.status}")


def test_a_wrapper_or_monitoring_sends_the_hook_through_pluggy() -> None:
    seen: list[str] = []
    pm, _ = create_plugin_manager(explicit=[_Wrapping(seen)], entry_points=False)
    hooks = Hooks(pm)
    assert hooks._direct["before_task"] is None  # a wrapper: pluggy dispatches
    assert hooks._direct["after_task"] is not None
    undo = pm.add_hookcall_monitoring(lambda *a: seen.append("traced"), lambda *a: None)
    try:
        assert Hooks(pm)._direct["after_task"] is None  # monitored: pluggy dispatches
    finally:
        undo()
    assert Hooks(pm)._direct["after_task"] is not None
    # end to end, in a run
    pm2 = PipelineManager(plugins=[_Wrapping(seen)], entry_points=False)
    p = Pipeline("wrapped")
    p.add_task("a", lambda: 1)
    assert pm2.execute_pipeline(p).success
    assert seen[-3:] == ["wrapper in", "wrapper out", "after succeeded"]


class _Failing:
    name = "failing"

    @hookimpl
    def after_task(self, task: Any, outcome: Any) -> None:
        raise KeyError(task.name)


def test_a_failing_direct_call_fails_the_task_naming_plugin_and_hook() -> None:
    pm = PipelineManager(plugins=[_Failing()], entry_points=False)
    assert pm.hooks._direct["after_task"] is not None
    p = Pipeline("fails")
    p.add_task("a", lambda: 1)
    result = pm.execute_pipeline(p)
    assert not result.success
    err = result.tasks["a"].error
    assert isinstance(err, PluginError)
    assert err.plugin == "failing" and err.hook == "after_task"
    assert "plugin 'failing' failed in hook 'after_task': KeyError" in str(err)


@pytest.mark.parametrize("hook", sorted(PER_TASK))
def test_every_per_task_hook_is_a_hookspec_with_those_arguments(hook: str) -> None:
    import inspect

    from xlib_pipeline import hookspecs

    params = tuple(inspect.signature(getattr(hookspecs.HookSpecs, hook)).parameters)[1:]
    assert params == PER_TASK[hook]
