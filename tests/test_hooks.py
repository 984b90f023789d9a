"""Hooks: what plugins receive, how their errors are attributed, and the plugin contract."""

from __future__ import annotations

import inspect
import re
import threading
from pathlib import Path

import pytest

from xlib_pipeline import (
    ConfigKey,
    DefinitionError,
    Isolation,
    ManagerDecorator,
    MissingPluginError,
    Pipeline,
    PipelineManager,
    PluginError,
    RetryDecision,
    RunContext,
    Status,
    TaskOption,
    TaskOutcome,
    UnknownTaskOptionError,
    hookimpl,
    with_options,
)
from xlib_pipeline.hookspecs import HookSpecs

DOCS = Path(__file__).resolve().parents[1] / "docs" / "hooks.md"


class Recorder:
    """Test plugin recording every observer hook call (thread-safe)."""

    name = "recorder"

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, dict]] = []

    def _add(self, hook: str, **data) -> None:
        with self.lock:
            self.calls.append((hook, data))

    def of(self, hook: str) -> list[dict]:
        return [d for h, d in self.calls if h == hook]

    @hookimpl
    def configure(self, manager, config):
        self._add("configure", manager=manager, config=config)

    @hookimpl
    def validate_pipeline(self, pipeline, run):
        self._add("validate_pipeline", pipeline=pipeline, run=run)

    @hookimpl
    def before_pipeline(self, run):
        self._add("before_pipeline", run=run)

    @hookimpl
    def after_pipeline(self, run, result):
        self._add("after_pipeline", run=run, result=result)

    @hookimpl
    def before_task(self, task, run, inputs):
        self._add("before_task", task=task, run=run, inputs=inputs)

    @hookimpl
    def after_task(self, task, run, outcome):
        self._add("after_task", task=task, run=run, outcome=outcome)

    @hookimpl
    def on_task_error(self, task, run, outcome):
        self._add("on_task_error", task=task, run=run, outcome=outcome)

    @hookimpl
    def close(self, manager):
        self._add("close", manager=manager)


def abc_pipeline() -> Pipeline:
    p = Pipeline("abc")
    p.add_task("a", lambda: 1)
    p.add_task("b", lambda x: x + 1, depends_on=["a"])
    p.add_task("skipped", lambda x: x, depends_on=["a"], condition=lambda x: False)
    p.add_task("c", lambda x, y: (x, y), depends_on=["b", "a"])
    return p


def pm_with(*plugins, config=None) -> PipelineManager:
    return PipelineManager(config, plugins=list(plugins), entry_points=False)


class TestObserverHooks:
    def test_pipeline_and_task_hooks_receive_documented_data(self):
        """before/after task and pipeline hooks get run, task, inputs, outcome and result."""
        rec = Recorder()
        pm = pm_with(rec)
        assert rec.of("configure")[0]["manager"] is pm
        assert rec.of("configure")[0]["config"] is pm.config
        result = pm.execute_pipeline(abc_pipeline(), tenant_id="acme", principal="alice")
        assert result.success
        names = [h for h, _ in rec.calls]
        assert names.index("validate_pipeline") < names.index("before_pipeline")
        assert names.index("before_pipeline") < names.index("before_task")
        assert names[-1] == "after_pipeline"

        run = rec.of("before_pipeline")[0]["run"]
        assert isinstance(run, RunContext)
        assert run.run_id == result.run_id and run.pipeline_name == "abc"
        assert run.tenant_id == "acme" and run.principal == "alice"
        assert run.manager is pm and run.config is pm.config
        assert rec.of("after_pipeline")[0]["result"] is result

        before = {d["task"].name: d for d in rec.of("before_task")}
        assert set(before) == {"a", "b", "c"}  # the skipped task never starts
        assert before["a"]["inputs"] == ()
        assert before["b"]["inputs"] == (1,)
        assert before["c"]["inputs"] == (2, 1)  # depends_on order
        assert all(d["run"] is run for d in rec.of("before_task"))

        after = {d["task"].name: d["outcome"] for d in rec.of("after_task")}
        assert set(after) == {"a", "b", "c", "skipped"}
        out = after["c"]
        assert isinstance(out, TaskOutcome)
        assert out.status is Status.SUCCEEDED and out.output == (2, 1)
        assert out.attempt == 1 and out.final and out.error is None
        assert out.started <= out.finished
        assert out.duration == pytest.approx(out.finished - out.started)
        skipped = after["skipped"]
        assert skipped.status is Status.SKIPPED and skipped.attempt == 0
        assert skipped.started is None
        assert rec.of("on_task_error") == []

    def test_failure_outcome_and_error_hook(self):
        """A failing task reaches on_task_error and after_task with its error and traceback."""
        rec = Recorder()
        p = Pipeline("fail")

        def boom():
            raise RuntimeError("disk full")

        p.add_task("boom", boom)
        p.add_task("next", lambda x: x, depends_on=["boom"])
        result = pm_with(rec).execute_pipeline(p)
        err_calls = rec.of("on_task_error")
        assert len(err_calls) == 1
        outcome = err_calls[0]["outcome"]
        assert outcome.status is Status.FAILED and outcome.attempt == 1
        assert isinstance(outcome.error, RuntimeError) and "disk full" in outcome.traceback
        after = {d["task"].name: d["outcome"] for d in rec.of("after_task")}
        assert after["boom"].status is Status.FAILED and after["boom"].final
        assert after["next"].status is Status.UPSTREAM_FAILED
        assert rec.of("after_pipeline")[0]["result"] is result

    def test_close_hook(self):
        """close(manager) reaches plugins when the manager is closed."""
        rec = Recorder()
        with pm_with(rec) as pm:
            pass
        assert rec.of("close")[0]["manager"] is pm


class IdleWatcher:
    """Records ``lane_idle`` calls; a task body waits until one has come."""

    name = "idle-watcher"

    def __init__(self) -> None:
        self.runs: list[RunContext] = []
        self.threads: set[str] = set()
        self.seen = threading.Event()

    @hookimpl
    def lane_idle(self, run):
        self.runs.append(run)
        self.threads.add(threading.current_thread().name)
        self.seen.set()


class TestLaneIdle:
    def test_a_lane_without_work_says_so_before_it_waits(self):
        """Two lanes, two independent tasks: 'slow' cannot finish until the lane that ran
        'quick' found the queue empty and called lane_idle (from its own thread)."""
        watcher = IdleWatcher()
        saw: list[bool] = []
        p = Pipeline("idle")
        p.add_task("slow", lambda: saw.append(watcher.seen.wait(30)))
        p.add_task("quick", lambda: 1)
        result = pm_with(watcher).execute_pipeline(p, max_workers=2)
        assert result.success
        assert saw == [True]
        assert watcher.runs and all(r.run_id == result.run_id for r in watcher.runs)
        assert all(name.startswith("xlib-lane-") for name in watcher.threads)

    def test_coroutine_driver_says_so_while_a_coroutine_runs(self):
        """An inline run with a coroutine task: the driver waits for its completion only
        after lane_idle."""
        import asyncio

        watcher = IdleWatcher()

        async def slow() -> bool:
            for _ in range(3000):
                if watcher.seen.is_set():
                    return True
                await asyncio.sleep(0.01)
            return False

        p = Pipeline("idle_async")
        p.add_task("slow", slow)
        result = pm_with(watcher).execute_pipeline(p, max_workers=1)
        assert result.success and result.final_result is True

    def test_an_error_in_lane_idle_ends_the_run_failed(self):
        """A lane_idle that raises (the audit trail cannot write what it held) ends the run
        failed with the plugin's error, as any hook bug on a lane: never a dead lane."""
        called = threading.Event()

        class Failing:
            name = "idle-failing"

            @hookimpl
            def lane_idle(self, run):
                called.set()
                raise RuntimeError("disk full")

        p = Pipeline("idle_fail")
        p.add_task("slow", lambda: called.wait(30))
        p.add_task("quick", lambda: 1)
        result = pm_with(Failing()).execute_pipeline(p, max_workers=2)
        assert called.is_set()
        assert not result.success
        err = result.error
        assert isinstance(err, PluginError) and err.plugin == "idle-failing"
        assert "disk full" in str(err.__cause__)

    def test_an_inline_run_never_idles(self):
        watcher = IdleWatcher()
        assert pm_with(watcher).execute_pipeline(abc_pipeline(), max_workers=1).success
        assert watcher.runs == []


class Retrier:
    """Test plugin: retry a task up to ``times`` times, recording the delays it asked for."""

    name = "retrier"

    def __init__(self, times: int, delay: float = 0.0) -> None:
        self.times = times
        self.delay = delay
        self.slept: list[float] = []

    @hookimpl
    def configure(self, manager, config):
        manager.sleep = self.slept.append  # no real sleeping in tests

    @hookimpl
    def on_task_error(self, task, run, outcome):
        if outcome.attempt <= self.times:
            return RetryDecision(delay=self.delay * outcome.attempt)
        return None


class Veto:
    """Test plugin: never retry."""

    name = "veto"

    @hookimpl
    def on_task_error(self, task, run, outcome):
        return RetryDecision(retry=False, reason="not idempotent")


def flaky_pipeline(fail_times: int) -> tuple[Pipeline, list[int]]:
    calls: list[int] = []
    p = Pipeline("flaky")

    def flaky():
        calls.append(1)
        if len(calls) <= fail_times:
            raise ConnectionError(f"attempt {len(calls)}")
        return "ok"

    p.add_task("flaky", flaky)
    return p, calls


class TestRetryDecisions:
    def test_retry_until_success(self):
        """A RetryDecision retries the task; every attempt is observed by after_task."""
        rec = Recorder()
        retrier = Retrier(times=3, delay=0.5)
        p, calls = flaky_pipeline(2)
        result = pm_with(rec, retrier).execute_pipeline(p)
        assert result.success and len(calls) == 3
        assert result.tasks["flaky"].attempts == 3
        assert retrier.slept == [0.5, 1.0]
        outcomes = [d["outcome"] for d in rec.of("after_task")]
        assert [(o.status, o.attempt, o.final) for o in outcomes] == [
            (Status.FAILED, 1, False),
            (Status.FAILED, 2, False),
            (Status.SUCCEEDED, 3, True),
        ]

    def test_retries_exhausted(self):
        """When no plugin asks for a retry any more the task fails with its last error."""
        p, calls = flaky_pipeline(10)
        result = pm_with(Retrier(times=2)).execute_pipeline(p)
        assert len(calls) == 3 and result.tasks["flaky"].attempts == 3
        assert "attempt 3" in str(result.tasks["flaky"].error)

    def test_veto_wins(self):
        """Any RetryDecision(retry=False) vetoes the retries other plugins ask for."""
        p, calls = flaky_pipeline(1)
        result = pm_with(Retrier(times=5), Veto()).execute_pipeline(p)
        assert len(calls) == 1 and not result.success


class Exploding:
    """Test plugin raising a plain exception from one chosen hook."""

    name = "exploding"

    def __init__(self, where: str, task: str | None = None) -> None:
        self.where = where
        self.task = task

    def _maybe(self, hook: str, task=None) -> None:
        if hook == self.where and (self.task is None or task is None or task.name == self.task):
            raise RuntimeError(f"bug in {hook}")

    @hookimpl
    def before_pipeline(self, run):
        self._maybe("before_pipeline")

    @hookimpl
    def after_pipeline(self, run, result):
        self._maybe("after_pipeline")

    @hookimpl
    def before_task(self, task, run, inputs):
        self._maybe("before_task", task)

    @hookimpl
    def after_task(self, task, run, outcome):
        self._maybe("after_task", task)

    @hookimpl
    def isolate(self, task, run):
        self._maybe("isolate", task)


def two_branches() -> tuple[Pipeline, list[str]]:
    ran: list[str] = []
    p = Pipeline("branches")
    p.add_task("victim", lambda: ran.append("victim"))
    p.add_task("victim_child", lambda x: ran.append("victim_child"), depends_on=["victim"])
    p.add_task("bystander", lambda: ran.append("bystander") or "fine")
    return p, ran


class TestHookErrors:
    @pytest.mark.parametrize("hook", ["before_task", "after_task", "isolate"])
    def test_task_hook_error_fails_that_task_naming_the_plugin(self, hook):
        """A task hook raising fails that task with a PluginError naming plugin and hook."""
        p, ran = two_branches()
        result = pm_with(Exploding(hook, task="victim")).execute_pipeline(p)
        err = result.tasks["victim"].error
        assert isinstance(err, PluginError)
        assert err.plugin == "exploding" and err.hook == hook
        assert "'exploding'" in str(err) and f"bug in {hook}" in str(err)
        assert isinstance(err.__cause__, RuntimeError)
        assert result.tasks["victim"].status is Status.FAILED
        assert result.tasks["victim_child"].status is Status.UPSTREAM_FAILED
        assert result.tasks["bystander"].output == "fine"
        assert result.error.task == "victim"
        if hook != "after_task":  # before_task and isolate refuse before the body runs
            assert "victim" not in ran

    def test_before_pipeline_error_refuses_the_run(self):
        """A before_pipeline error raises from execute_pipeline, naming the plugin; nothing runs."""
        p, ran = two_branches()
        with pytest.raises(PluginError) as info:
            pm_with(Exploding("before_pipeline")).execute_pipeline(p)
        assert info.value.plugin == "exploding" and info.value.hook == "before_pipeline"
        assert ran == []

    def test_after_pipeline_error_fails_the_result(self):
        """An after_pipeline error turns the result into a failure naming the plugin."""
        p, ran = two_branches()
        result = pm_with(Exploding("after_pipeline")).execute_pipeline(p)
        assert not result.success and result.status == "failed"
        assert isinstance(result.error, PluginError) and result.error.plugin == "exploding"
        assert sorted(ran) == ["bystander", "victim", "victim_child"]  # nothing lost

    def test_manager_stays_usable_after_a_hook_error(self):
        """After a run with a broken hook the same manager runs the next pipeline normally."""
        plugin = Exploding("before_task", task="victim")
        pm = pm_with(plugin)
        pm.execute_pipeline(two_branches()[0])
        plugin.where = "nowhere"
        result = pm.execute_pipeline(two_branches()[0])
        assert result.success

    def test_deliberate_pipeline_error_passes_through_with_plugin(self):
        """A PipelineError a plugin raises on purpose keeps its type and gets .plugin set."""
        from xlib_pipeline import ComplianceError

        class Refuse:
            name = "refuser"

            @hookimpl
            def validate_pipeline(self, pipeline, run):
                raise ComplianceError(f"pipeline {pipeline.name!r} is not approved")

        with pytest.raises(ComplianceError) as info:
            pm_with(Refuse()).execute_pipeline(abc_pipeline())
        assert info.value.plugin == "refuser" and "'abc'" in str(info.value)


class TestPluginRegistration:
    def test_disabled_by_name(self):
        """A plugin disabled in config {"plugins": {"disable": [...]}} receives nothing."""
        rec = Recorder()
        pm = pm_with(rec, config={"plugins": {"disable": ["recorder"]}})
        assert not pm.has_plugin("recorder")
        assert "recorder" not in [i.name for i in pm.plugins]
        pm.execute_pipeline(abc_pipeline())
        assert rec.calls == []

    def test_plugin_listing(self):
        """pm.plugins lists builtins and explicit plugins with their hooks."""
        pm = pm_with(Recorder())
        infos = {i.name: i for i in pm.plugins}
        assert infos["core"].builtin
        assert "register_executors" in infos["core"].hooks
        assert {"before_task", "after_task", "after_pipeline"} <= set(infos["recorder"].hooks)
        assert pm.get_plugin("recorder") is not None

    def test_misspelled_hook_is_rejected(self):
        """A hookimpl whose name is not a hookspec is refused, naming the plugin and hook."""

        class Typo:
            name = "typo"

            @hookimpl
            def before_tsk(self, task, run, inputs):
                pass

        with pytest.raises(PluginError) as info:
            pm_with(Typo())
        assert "'typo'" in str(info.value) and "before_tsk" in str(info.value)

    def test_wrong_hook_argument_is_rejected(self):
        """A hookimpl asking for an argument the spec does not have is refused."""

        class BadArg:
            name = "badarg"

            @hookimpl
            def after_task(self, task, run, result):
                pass

        with pytest.raises(PluginError, match="badarg"):
            pm_with(BadArg())

    def test_collector_duplicates_name_both_plugins(self):
        """Two plugins registering the same config key are refused, naming both."""

        def make(name):
            class Owner:
                @hookimpl
                def register_config_keys(self):
                    return [ConfigKey(name="shared.key")]

            Owner.name = name
            return Owner()

        with pytest.raises(PluginError) as info:
            pm_with(make("first"), make("second"))
        msg = str(info.value)
        assert "'shared.key'" in msg and "'first'" in msg and "'second'" in msg

    def test_duplicate_core_option_names_core(self):
        """A plugin re-registering a core task option is refused, naming core and the plugin."""

        class Clash:
            name = "clash"

            @hookimpl
            def register_task_options(self):
                return [TaskOption(name="timeout")]

        with pytest.raises(PluginError, match=r"'core'.*'clash'|'clash'.*'core'"):
            pm_with(Clash())

    def test_failing_collector_names_plugin(self):
        """A collector hook raising is a PluginError naming the plugin."""

        class Broken:
            name = "broken"

            @hookimpl
            def register_task_options(self):
                raise RuntimeError("oops")

        with pytest.raises(PluginError) as info:
            pm_with(Broken())
        assert info.value.plugin == "broken" and info.value.hook == "register_task_options"


class SlaOptions:
    """Test plugin owning a task option and a manager decorator."""

    name = "sla"

    @hookimpl
    def register_task_options(self):
        def seconds(v):
            if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
                raise ValueError(f"expected positive seconds, got {v!r}")
            return float(v)

        return [TaskOption(name="sla_seconds", convert=seconds)]

    @hookimpl
    def register_manager_decorators(self):
        def factory(manager, seconds):
            return lambda fn: with_options(fn, {"sla_seconds": seconds})

        return [ManagerDecorator(name="sla", factory=factory, doc="Give a task an SLA.")]

    @hookimpl
    def isolate(self, task, run):
        return None


class TestTaskOptionsAndDecorators:
    def test_plugin_option_accepted(self):
        """A task option owned by a registered plugin is accepted and visible on the task."""
        p = Pipeline("opt")
        p.add_task("t", lambda: 1, sla_seconds=2)
        assert pm_with(SlaOptions()).execute_pipeline(p).success
        assert p["t"].option("sla_seconds") == 2

    def test_plugin_option_bad_value(self):
        """A bad value for a plugin option names the task, option and expectation."""
        p = Pipeline("opt_bad")
        p.add_task("t", lambda: 1, sla_seconds="soon")
        with pytest.raises(DefinitionError) as info:
            pm_with(SlaOptions()).execute_pipeline(p)
        assert "'t'" in str(info.value) and "sla_seconds" in str(info.value)
        assert "positive seconds" in str(info.value)

    def test_unknown_option_names_task_and_option(self):
        """An option no plugin owns is an UnknownTaskOptionError naming task and option."""
        ran = []
        p = Pipeline("opt_unknown")
        p.add_task("t", lambda: ran.append(1), sla_secs=2)
        with pytest.raises(UnknownTaskOptionError) as info:
            pm_with(SlaOptions()).execute_pipeline(p)
        err = info.value
        assert err.task == "t" and err.option == "sla_secs" and err.suggestion == "sla_seconds"
        assert "'t'" in str(err) and "'sla_secs'" in str(err)
        assert ran == []

    def test_option_of_missing_first_party_plugin_names_package(self, manager):
        """An option owned by a first-party plugin that is absent names its package."""
        p = Pipeline("opt_pkg")
        p.add_task("t", lambda: 1, retries=3)
        with pytest.raises(UnknownTaskOptionError) as info:
            manager.execute_pipeline(p)
        assert info.value.package == "xlib-pipeline-retries"
        assert "pip install xlib-pipeline-retries" in str(info.value)

    def test_manager_decorator(self):
        """pm.<decorator> from a plugin stacks task options for @pipeline.task above it."""
        pm = pm_with(SlaOptions())
        p = Pipeline("deco")

        @p.task("t")
        @pm.sla(seconds=3)
        def t():
            return "done"

        assert p["t"].options["sla_seconds"] == 3
        assert t() == "done"  # still callable directly
        assert pm.execute_pipeline(p).final_result == "done"
        assert pm.sla.__doc__ == "Give a task an SLA."

    @pytest.mark.parametrize(
        ("decorator", "package"),
        [
            ("audit_log", "xlib-pipeline-audit"),
            ("isolate_resources", "xlib-pipeline-tenancy"),
            ("encrypt_data", "xlib-pipeline-encryption"),
        ],
    )
    def test_missing_decorator_plugin_names_package(self, manager, decorator, package):
        """pm.<decorator> whose plugin is not installed names the package to install."""
        with pytest.raises(MissingPluginError) as info:
            getattr(manager, decorator)(tenant_id="t")
        assert info.value.package == package
        assert f"pm.{decorator}" in str(info.value) and f"pip install {package}" in str(info.value)

    def test_unknown_manager_attribute(self, manager):
        """A misspelled manager attribute is an AttributeError with a suggestion."""
        with pytest.raises(AttributeError, match="did you mean 'execute_pipeline'"):
            _ = manager.execute_pipelin

    def test_isolate_none_means_default_executor(self):
        """An isolate hook answering None leaves the task on the default executor."""
        p = Pipeline("iso")
        p.add_task("t", lambda: threading.get_ident())
        assert pm_with(SlaOptions()).execute_pipeline(p, parallel=False).final_result == (
            threading.get_ident()
        )

    def test_isolation_to_unknown_executor_fails_task(self):
        """An isolate answer naming an unknown executor fails that task clearly."""

        class Elsewhere:
            name = "elsewhere"

            @hookimpl
            def isolate(self, task, run):
                return Isolation(executor="nowhere")

        p = Pipeline("iso_bad")
        p.add_task("t", lambda: 1)
        with pytest.raises(Exception, match="nowhere"):
            result = pm_with(Elsewhere()).execute_pipeline(p)
            result.raise_for_status()


def documented_hooks(text: str) -> dict[str, str]:
    """Map each hook documented as a ``### `name` `` heading to its section text."""
    parts = re.split(r"^### `([a-z_]+)`.*$", text, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


class TestHookDocs:
    def test_every_hookspec_is_documented(self):
        """docs/hooks.md has a section for every hookspec, naming each of its arguments."""
        specs = {
            name: fn
            for name, fn in inspect.getmembers(HookSpecs, inspect.isfunction)
            if not name.startswith("_")
        }
        assert DOCS.is_file(), "docs/hooks.md is missing"
        sections = documented_hooks(DOCS.read_text())
        missing = sorted(set(specs) - set(sections))
        assert not missing, f"hooks missing from docs/hooks.md: {missing}"
        extra = sorted(set(sections) - set(specs))
        assert not extra, f"docs/hooks.md documents hooks that do not exist: {extra}"
        for name, fn in specs.items():
            args = [a for a in inspect.signature(fn).parameters if a != "self"]
            for arg in args:
                assert f"`{arg}`" in sections[name], f"{name}: argument {arg!r} undocumented"
            opts = getattr(fn, "xlib_pipeline_spec", None) or {}
            if opts.get("firstresult"):
                assert "first non-None" in sections[name], name
