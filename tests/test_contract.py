"""The plugin contract: the typed hook facade, registration checks, the frozen run context,
typed stash keys, decision hooks and the configure/prepare_run idiom."""

from __future__ import annotations

import threading
from typing import Any

import attrs
import pluggy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xlib_pipeline import (
    CLASSIFICATION,
    Classification,
    OutputLevel,
    Pipeline,
    PipelineManager,
    PluginError,
    SecurityError,
    Stash,
    StashKey,
    TaskOption,
    hookimpl,
)
from xlib_pipeline._hooks import Hooks
from xlib_pipeline.hookspecs import PROJECT, HookSpecs


def one_task(name: str = "p", **options: Any) -> Pipeline:
    p = Pipeline(name)
    p.add_task("a", lambda: 1, **options)
    return p


class TestRegistration:
    def test_misspelled_hook_is_refused_with_did_you_mean(self) -> None:
        """`def befor_task` marked @hookimpl: refused at registration, closest hook named."""

        class Typo:
            name = "typo"

            @hookimpl
            def befor_task(self, task: Any) -> None: ...

        with pytest.raises(PluginError) as info:
            PipelineManager(entry_points=False, plugins=[Typo()])
        msg = str(info.value)
        assert "Typo.befor_task" in msg and "did you mean 'before_task'?" in msg
        assert info.value.plugin == "typo"

    def test_misspelled_runtime_object_is_refused_and_left_out(self) -> None:
        """manager.register checks the same way and leaves nothing half-registered."""

        class Runtime:
            @hookimpl
            def after_taks(self, outcome: Any) -> None: ...

        pm = PipelineManager(entry_points=False)
        with pytest.raises(PluginError, match="did you mean 'after_task'"):
            pm.register(Runtime(), name="x.runtime")
        assert not pm.has_plugin("x.runtime")
        assert pm.execute_pipeline(one_task()).success

    def test_unknown_argument_is_refused(self) -> None:
        """An implementation naming an argument the hook does not have is refused."""

        class Bad:
            name = "bad"

            @hookimpl
            def after_task(self, task: Any, result: Any) -> None: ...

        with pytest.raises(PluginError, match="plugin 'bad' is invalid"):
            PipelineManager(entry_points=False, plugins=[Bad()])

    def test_register_is_idempotent_by_name(self) -> None:
        """Registering a name twice keeps the first object (plugins may call it per run)."""
        seen: list[str] = []

        class Runtime:
            def __init__(self, tag: str) -> None:
                self.tag = tag

            @hookimpl
            def before_pipeline(self, run: Any) -> None:
                seen.append(self.tag)

        pm = PipelineManager(entry_points=False)
        pm.register(Runtime("first"), name="r")
        pm.register(Runtime("second"), name="r")
        pm.execute_pipeline(one_task())
        assert seen == ["first"]
        with pytest.raises(PluginError, match="that name is taken by a Runtime"):
            pm.register(object(), name="r")


# --- the facade equals pluggy, errors attributed --------------------------------------------

ARGS = ("task", "run", "inputs")
KINDS = ("plain", "tryfirst", "trylast", "wrapper", "hookwrapper")


def _impl_class(i: int, kind: str, args: tuple[str, ...], raises: bool, log: list[Any]) -> Any:
    """A plugin class whose ``before_task`` takes ``args`` and logs (or raises)."""
    params = ", ".join(("self", *args))
    ns: dict[str, Any] = {"log": log, "i": i}
    if kind == "wrapper":
        src = (
            f"def before_task({params}):\n"
            "    log.append(('pre', i))\n"
            "    try:\n"
            "        return (yield)\n"
            "    finally:\n"
            "        log.append(('post', i))\n"
        )
    elif kind == "hookwrapper":
        src = (
            f"def before_task({params}):\n"
            "    log.append(('pre', i))\n"
            "    yield\n"
            "    log.append(('post', i))\n"
        )
    else:
        got = ", ".join(f"{a}={a}" for a in args)
        body = f"    raise ValueError('p{i}')\n" if raises else ""
        src = f"def before_task({params}):\n    log.append(('call', i, dict({got})))\n{body}"
    exec(compile(src, f"<plugin p{i}>", "exec"), ns)
    marker = pluggy.HookimplMarker(PROJECT)
    opts: dict[str, bool] = {}
    if kind in ("tryfirst", "trylast", "wrapper", "hookwrapper"):
        opts[kind] = True
    return type(f"P{i}", (), {"before_task": marker(**opts)(ns["before_task"])})


impls = st.lists(
    st.tuples(
        st.sampled_from(KINDS),
        st.lists(st.sampled_from(ARGS), unique=True).map(
            lambda xs: tuple(a for a in ARGS if a in xs)
        ),
        st.booleans(),
    ),
    max_size=6,
)


def _call(call: Any) -> tuple[str, str | None]:
    try:
        call()
    except PluginError as exc:
        return type(exc.__cause__).__name__, exc.plugin
    except ValueError as exc:
        return "ValueError", str(exc)
    return "ok", None


class TestFacadeEqualsPluggy:
    @settings(max_examples=150, deadline=None)
    @given(impls)
    def test_same_calls_same_order_same_error(
        self, specs: list[tuple[str, tuple[str, ...], bool]]
    ) -> None:
        """Random tryfirst/trylast, argument subsets, wrappers and raising implementations:
        the facade makes exactly pluggy's calls, in its order, stops where pluggy stops and
        names the plugin that raised (found from the traceback)."""
        ours: list[Any] = []
        ref: list[Any] = []
        pms = []
        for log in (ours, ref):
            pm = pluggy.PluginManager(PROJECT)
            pm.add_hookspecs(HookSpecs)
            for i, (kind, args, raises) in enumerate(specs):
                pm.register(_impl_class(i, kind, args, raises, log)(), name=f"p{i}")
            pms.append(pm)
        hooks = Hooks(pms[0])
        kw = {"task": "T", "run": "R", "inputs": ("I",)}
        got = _call(lambda: hooks.before_task(**kw))  # type: ignore[arg-type]
        want = _call(lambda: pms[1].hook.before_task(**kw))
        assert ours == ref
        if want[0] == "ok":
            assert got == want
        else:
            assert got == ("ValueError", want[1])


# --- the run context ----------------------------------------------------------------------------


class TestRunContext:
    def test_frozen(self) -> None:
        """Plugins cannot change the run's executor or principal by assignment."""
        errors: list[BaseException] = []

        class Mutator:
            name = "mutator"

            @hookimpl
            def before_pipeline(self, run: Any) -> None:
                try:
                    run.executor = "processes"
                except attrs.exceptions.FrozenInstanceError as exc:
                    errors.append(exc)

        pm = PipelineManager(entry_points=False, plugins=[Mutator()])
        assert pm.execute_pipeline(one_task()).success
        assert len(errors) == 1

    def test_tasks_in_topological_order_no_plan(self) -> None:
        """run.tasks lists upstreams first; the compiled plan is not on the context."""
        seen: dict[str, Any] = {}

        class Peek:
            name = "peek"

            @hookimpl
            def before_pipeline(self, run: Any) -> None:
                seen["names"] = run.task_names
                seen["plan"] = hasattr(run, "plan")

        p = Pipeline("order")
        p.add_task("c", lambda b: b, depends_on=["b"])
        p.add_task("b", lambda a: a, depends_on=["a"])
        p.add_task("a", lambda: 1)
        PipelineManager(entry_points=False, plugins=[Peek()]).execute_pipeline(p)
        assert seen == {"names": ("a", "b", "c"), "plan": False}

    def test_select_executor_and_resolve_principal(self) -> None:
        """Decisions come from provider hooks; the stash carries over the rebuilt context."""
        NOTE: StashKey[str] = StashKey("note")
        seen: dict[str, Any] = {}

        class Decider:
            name = "decider"

            @hookimpl
            def resolve_principal(self, principal: str | None, config: Any) -> str | None:
                return principal or "svc-batch"

            @hookimpl
            def select_executor(self, run: Any) -> str | None:
                run.stash[NOTE] = f"was {run.executor}"
                return "inline"

            @hookimpl
            def before_pipeline(self, run: Any) -> None:
                seen.update(executor=run.executor, principal=run.principal, note=run.stash[NOTE])
                seen["thread"] = threading.current_thread().name

        pm = PipelineManager(entry_points=False, plugins=[Decider()])
        assert pm.execute_pipeline(one_task()).success
        assert seen["executor"] == "inline" and seen["principal"] == "svc-batch"
        assert seen["note"] == "was threads"
        pm.execute_pipeline(one_task(), principal="alice")
        assert seen["principal"] == "alice"

    def test_select_executor_error_refuses_the_run(self) -> None:
        """A failing decision refuses the run with the plugin named; nothing runs."""
        ran: list[str] = []

        class Broken:
            name = "broken"

            @hookimpl
            def select_executor(self, run: Any) -> str | None:
                raise RuntimeError("no cluster")

        p = Pipeline("refused")
        p.add_task("a", lambda: ran.append("a"))
        with pytest.raises(PluginError, match="plugin 'broken' failed in hook 'select_executor'"):
            PipelineManager(entry_points=False, plugins=[Broken()]).execute_pipeline(p)
        assert ran == []


class TestStash:
    def test_typed_keys_by_identity(self) -> None:
        a: StashKey[int] = StashKey("same")
        b: StashKey[int] = StashKey("same")
        s = Stash()
        s[a] = 1
        assert a in s and b not in s and s.get(b, None) is None
        assert s.setdefault(b, 2) == 2 and len(s) == 2
        assert s.pop(a, None) == 1 and a not in s
        with pytest.raises(KeyError, match="StashKey\\('same'\\)"):
            s[a]

    def test_string_keys_refused(self) -> None:
        with pytest.raises(TypeError, match="StashKey"):
            Stash()["audit"] = 1  # type: ignore[index]

    def test_core_classification_key(self) -> None:
        c = Classification(levels=("public", "internal"))
        c.outputs["a"] = OutputLevel(level="internal", declared="internal")
        assert c.level_of("a") == "internal" and c.level_of("b") is None
        assert repr(CLASSIFICATION) == "StashKey('classification')"


# --- configure / prepare_run: one idiom for optional activity ----------------------------------


class Counting:
    """Registers its per-task runtime only when configured or when a task asks for it."""

    name = "counting"

    def __init__(self) -> None:
        self.calls = 0
        self.manager: Any = None

    @hookimpl
    def register_task_options(self) -> Any:
        return (TaskOption(name="counted", convert=bool),)

    @hookimpl
    def configure(self, manager: Any, config: Any) -> None:
        self.manager = manager
        if config.raw.get("count_everything"):
            manager.register(CountingRuntime(self), name="counting.runtime")

    @hookimpl
    def prepare_run(self, manager: Any, pipeline: Any, tasks: Any, options: Any) -> None:
        if any(t.options.get("counted") for t in tasks):
            manager.register(CountingRuntime(self), name="counting.runtime")


class CountingRuntime:
    def __init__(self, plugin: Counting) -> None:
        self.p = plugin

    @hookimpl
    def after_task(self, task: Any, run: Any, outcome: Any) -> None:
        self.p.calls += 1


class TestOptionalActivity:
    def test_unused_plugin_has_no_task_hooks(self) -> None:
        plugin = Counting()
        pm = PipelineManager(entry_points=False, plugins=[plugin])
        assert pm.execute_pipeline(one_task()).success
        assert not pm.hooks.has["after_task"] and plugin.calls == 0

    def test_task_option_registers_the_runtime_before_the_run(self) -> None:
        plugin = Counting()
        pm = PipelineManager(entry_points=False, plugins=[plugin])
        assert pm.execute_pipeline(one_task(counted=True)).success
        assert plugin.calls == 1 and pm.has_plugin("counting.runtime")

    def test_installed_first_party_plugins_cost_nothing_unconfigured(self) -> None:
        """With every installed plugin and no config, no per-task hook has an implementation
        (the scheduler then never calls one)."""
        pm = PipelineManager({})
        for hook in ("before_task", "after_task", "on_task_error", "isolate"):
            owners = [i.plugin_name for i in getattr(pm.hooks.pluggy.hook, hook).get_hookimpls()]
            owners = [o for o in owners if o != "retries"]  # retries decides only on failure
            if hook != "on_task_error":
                assert not pm.hooks.has[hook], (hook, owners)
            else:
                assert owners == [], owners


class TestCheckAccess:
    def test_wraps_the_hook_with_the_resolved_principal(self) -> None:
        seen: list[tuple[Any, ...]] = []

        class Guard:
            name = "guard"

            @hookimpl
            def resolve_principal(self, principal: str | None, config: Any) -> str | None:
                return principal or "os-user"

            @hookimpl
            def check_access(
                self, principal: str | None, permission: str, tenant: str | None, action: str
            ) -> None:
                seen.append((principal, permission, tenant))
                if tenant == "acme" and principal != "alice":
                    raise SecurityError(f"{principal} may not {action}")

        pm = PipelineManager(entry_points=False, plugins=[Guard()])
        who = pm.check_access(permission="read_data", tenant=None, action="read")
        assert who == "os-user"
        with pytest.raises(SecurityError, match="os-user may not read acme") as info:
            pm.check_access(permission="read_data", tenant="acme", action="read acme")
        assert info.value.plugin == "guard"  # type: ignore[attr-defined]
        pm.check_access(permission="manage_keys", tenant="acme", action="x", principal="alice")
        assert seen[-1] == ("alice", "manage_keys", "acme")
