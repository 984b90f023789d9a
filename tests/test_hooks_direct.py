"""The per-task hooks (before_task, after_task, task_scope), the payload providers
(encrypt, decrypt: firstresult) and the per-run hooks (prepare_run, resolve_principal,
select_executor, validate_pipeline, before_pipeline, after_pipeline, lane_idle,
stream_event) call their implementations directly; pluggy's dispatch must
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
from xlib_pipeline._dispatch import DIRECT, PER_PAYLOAD
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


@pytest.mark.parametrize("hook", sorted(DIRECT))
def test_every_direct_hook_is_a_hookspec_with_those_arguments(hook: str) -> None:
    import inspect

    from xlib_pipeline import hookspecs

    spec = getattr(hookspecs.HookSpecs, hook)
    params = tuple(inspect.signature(spec).parameters)[1:]
    assert params == DIRECT[hook]
    # firstresult hooks are called with first=True by their facade method
    first = spec.xlib_pipeline_spec.get("firstresult", False)
    assert first == (hook in {"encrypt", "decrypt", "select_executor", "resolve_principal"})


def test_after_pipeline_calls_every_implementation_when_one_fails() -> None:
    """Direct or through pluggy, every after_pipeline implementation sees the run end even
    after one raised; the first error is raised afterwards, naming its plugin."""
    seen: list[str] = []

    class Broken:
        name = "broken"

        @hookimpl(tryfirst=True)
        def after_pipeline(self, run: Any) -> None:
            seen.append("broken")
            raise KeyError("x")

    class Watcher:
        name = "watcher"

        @hookimpl
        def after_pipeline(self, run: Any, result: Any) -> None:
            seen.append(f"watcher {result.status}")

    pm = PipelineManager(plugins=[Broken(), Watcher()], entry_points=False)
    assert pm.hooks._direct["after_pipeline"] is not None
    p = Pipeline("ends")
    p.add_task("a", lambda: 1)
    result = pm.execute_pipeline(p)
    assert seen == ["broken", "watcher succeeded"]
    assert not result.success and isinstance(result.error, PluginError)
    assert result.error.plugin == "broken" and result.error.hook == "after_pipeline"
