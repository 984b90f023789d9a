"""Configuration: validation, helpful errors and the documented effect of each core key."""

from __future__ import annotations

import threading

import pytest

from xlib_pipeline import (
    Config,
    ConfigError,
    ConfigKey,
    MissingPluginError,
    Pipeline,
    PipelineManager,
    hookimpl,
)


def core(config=None, **kw) -> PipelineManager:
    """A manager with installed plugins ignored."""
    return PipelineManager(config, entry_points=False, **kw)


class TestUnknownKeys:
    def test_typo_names_key_and_closest(self):
        """An unknown key names itself and the closest valid key."""
        with pytest.raises(ConfigError) as info:
            core({"max_wokers": 4})
        err = info.value
        assert err.key == "max_wokers" and err.suggestion == "max_workers"
        assert "'max_wokers'" in str(err) and "did you mean 'max_workers'?" in str(err)

    def test_strategy_typo(self):
        """A misspelled scheduling hint is suggested too."""
        with pytest.raises(ConfigError, match="did you mean 'execution_strategy'"):
            core({"execution_strategie": "intelligent"})

    def test_nothing_close(self):
        """A key far from any valid one is named without a suggestion."""
        with pytest.raises(ConfigError) as info:
            core({"zzzz_qqqq": 1})
        assert info.value.key == "zzzz_qqqq" and info.value.suggestion is None
        assert "did you mean" not in str(info.value)

    def test_nested_unknown_key_gets_dotted_path(self):
        """Inside a namespace the error names the dotted path and a dotted suggestion."""
        with pytest.raises(ConfigError) as info:
            core({"security": {"acces_control": "rbac"}})
        assert info.value.key == "security.acces_control"
        assert info.value.suggestion == "security.access_control"
        assert "'security.acces_control'" in str(info.value)

    def test_config_must_be_a_mapping(self):
        """A config that is not a dict is refused."""
        with pytest.raises(ConfigError, match="list"):
            core([("max_workers", 2)])

    def test_non_string_key(self):
        """Config keys must be strings."""
        with pytest.raises(ConfigError, match="strings"):
            core({1: 2})


class TestPluginOwnedKeys:
    @pytest.mark.parametrize(
        ("config", "package"),
        [
            ({"audit_logging": True}, "xlib-pipeline-audit"),
            ({"compliance_mode": True}, "xlib-pipeline-audit"),
            ({"data_lineage": True}, "xlib-pipeline-lineage"),
            ({"security_scanning": True}, "xlib-pipeline-classification"),
            ({"multi_tenant": True}, "xlib-pipeline-tenancy"),
            ({"security": {"encryption_at_rest": True}}, "xlib-pipeline-encryption"),
            ({"security": {"access_control": "rbac"}}, "xlib-pipeline-tenancy"),
            ({"distributed_mode": True}, "xlib-pipeline-dask"),
            ({"auto_scaling": True}, "xlib-pipeline-kubernetes"),
        ],
    )
    def test_missing_plugin_names_the_package(self, config, package):
        """A key owned by a plugin that is not installed names the package to install."""
        with pytest.raises(MissingPluginError) as info:
            core(config)
        assert info.value.package == package
        assert f"pip install {package}" in str(info.value)
        key = next(iter(config))
        assert key in str(info.value)

    def test_plugin_registered_key_is_accepted_and_converted(self):
        """A key registered by an explicit plugin is validated, converted and defaulted."""

        class Keys:
            name = "keys"

            def __init__(self):
                self.seen: Config | None = None

            @hookimpl
            def register_config_keys(self):
                return [
                    ConfigKey(name="sla.threshold", convert=float, default=5.0),
                    ConfigKey(name="sla.label", convert=str, default="slow"),
                ]

            @hookimpl
            def configure(self, manager, config):
                self.seen = config

        plugin = Keys()
        pm = core({"sla": {"threshold": "2.5"}}, plugins=[plugin])
        assert pm.config.get("sla.threshold") == 2.5
        assert pm.config.get("sla.label") == "slow"
        assert pm.config.given("sla.threshold") and not pm.config.given("sla.label")
        assert plugin.seen is pm.config
        with pytest.raises(ConfigError) as info:
            core({"sla": {"threshold": "soon"}}, plugins=[Keys()])
        assert info.value.key == "sla.threshold"
        assert "'sla.threshold'" in str(info.value)


class TestBadValues:
    @pytest.mark.parametrize(
        ("key", "value", "expected"),
        [
            ("max_workers", 0, "positive integer"),
            ("max_workers", "4", "positive integer"),
            ("max_workers", True, "positive integer"),
            ("execution_strategy", "smart", "intelligent"),
            ("dependency_optimization", "yes", "true or false"),
            ("parallel_execution", 1, "true or false"),
            ("on_failure", "halt", "continue"),
            ("plugins", {"disable": "audit"}, "list of names"),
            ("plugins", {"disabled": ["audit"]}, "disable"),
            ("plugins", ["audit"], "mapping"),
        ],
    )
    def test_bad_value_names_key_and_expectation(self, key, value, expected):
        """A bad value names the key and what was expected."""
        with pytest.raises(ConfigError) as info:
            core({key: value})
        assert info.value.key == key
        assert repr(key) in str(info.value) and expected in str(info.value)

    def test_on_failure_suggests(self):
        """A near miss of an allowed value gets a did-you-mean."""
        with pytest.raises(ConfigError, match="did you mean 'stop'"):
            core({"on_failure": "stopp"})


class TestDefaults:
    def test_core_defaults(self):
        """Without config the documented defaults apply."""
        c = core().config.core
        assert c.executor == "threads"
        assert c.execution_strategy == "intelligent"
        assert c.dependency_optimization is True
        assert c.parallel_execution is True
        assert c.on_failure == "continue"
        assert c.max_workers >= 5

    def test_given_values(self):
        """Given values land in CoreConfig."""
        c = core(
            {
                "max_workers": 3,
                "execution_strategy": "fifo",
                "dependency_optimization": False,
                "parallel_execution": False,
                "on_failure": "stop",
                "actor": "etl-bot",
            }
        ).config.core
        assert (c.max_workers, c.execution_strategy, c.on_failure, c.actor) == (
            3,
            "fifo",
            "stop",
            "etl-bot",
        )
        assert c.dependency_optimization is False and c.parallel_execution is False


def _threads_pipeline(n: int = 3) -> Pipeline:
    p = Pipeline("where")
    for i in range(n):
        p.add_task(f"t{i}", lambda: threading.get_ident())
    return p


class TestSchedulingHints:
    def test_user_guide_hints_are_accepted(self):
        """execution_strategy, dependency_optimization and parallel_execution are accepted."""
        pm = core(
            {
                "execution_strategy": "intelligent",
                "dependency_optimization": True,
                "parallel_execution": True,
            }
        )
        result = pm.execute_pipeline(_threads_pipeline(), parallel=True)
        assert result.success

    def test_parallel_execution_false_runs_in_driver_thread(self):
        """parallel_execution=False makes tasks run in the driver thread by default."""
        pm = core({"parallel_execution": False})
        result = pm.execute_pipeline(_threads_pipeline())
        assert set(result.final_result.values()) == {threading.get_ident()}

    def test_parallel_argument_overrides_config(self):
        """execute_pipeline(parallel=True) overrides parallel_execution=False."""
        pm = core({"parallel_execution": False, "max_workers": 3})
        result = pm.execute_pipeline(_threads_pipeline(), parallel=True)
        assert threading.get_ident() not in set(result.final_result.values())

    def test_parallel_execution_true_uses_worker_threads(self):
        """parallel_execution=True (default) runs tasks off the driver thread."""
        result = core({"max_workers": 3}).execute_pipeline(_threads_pipeline())
        assert threading.get_ident() not in set(result.final_result.values())

    def _order(self, strategy: str) -> list[str]:
        order: list[str] = []
        p = Pipeline("strategy")
        p.add_task("short", lambda: order.append("short"))
        p.add_task("long1", lambda: order.append("long1"))
        p.add_task("long2", lambda x: order.append("long2"), depends_on=["long1"])
        p.add_task("long3", lambda x: order.append("long3"), depends_on=["long2"])
        core({"execution_strategy": strategy}).execute_pipeline(p, parallel=False)
        return order

    def test_intelligent_starts_the_longest_path_first(self):
        """execution_strategy="intelligent" runs the ready task with the longest path first."""
        assert self._order("intelligent") == ["long1", "long2", "long3", "short"]

    def test_fifo_keeps_definition_order(self):
        """execution_strategy="fifo" runs ready tasks in definition order."""
        assert self._order("fifo")[0] == "short"

    def test_dependency_optimization_keeps_a_chain_on_one_lane(self):
        """With dependency_optimization a chain's successor runs on the lane that freed it."""
        p = Pipeline("chain")
        p.add_task("a", lambda: [threading.current_thread().name])
        p.add_task("b", lambda x: [*x, threading.current_thread().name], depends_on=["a"])
        p.add_task("c", lambda x: [*x, threading.current_thread().name], depends_on=["b"])
        p.add_task("d", lambda: threading.current_thread().name)
        pm = core({"dependency_optimization": True, "max_workers": 4})
        for _ in range(5):
            names = pm.execute_pipeline(p).final_result["c"]
            assert len(set(names)) == 1 and names[0].startswith("xlib-lane-")

    def test_dependency_optimization_off_still_correct(self):
        """Without dependency_optimization results are the same."""
        p = Pipeline("chain_off")
        p.add_task("a", lambda: 1)
        p.add_task("b", lambda x: x + 1, depends_on=["a"])
        p.add_task("c", lambda x: x * 10, depends_on=["b"])
        pm = core({"dependency_optimization": False, "max_workers": 2})
        assert pm.execute_pipeline(p).final_result == 20

    def test_max_workers_caps_concurrency(self):
        """No more than max_workers tasks run at once."""
        lock = threading.Lock()
        state = {"now": 0, "peak": 0}
        gate = threading.Event()

        def work():
            with lock:
                state["now"] += 1
                state["peak"] = max(state["peak"], state["now"])
            gate.wait(0.05)
            with lock:
                state["now"] -= 1

        p = Pipeline("cap")
        for i in range(8):
            p.add_task(f"t{i}", work)
        core({"max_workers": 2}).execute_pipeline(p)
        assert 1 <= state["peak"] <= 2

    def test_run_max_workers_must_be_positive(self, manager):
        """execute_pipeline(max_workers=0) is refused."""
        with pytest.raises(ConfigError, match="max_workers"):
            manager.execute_pipeline(_threads_pipeline(), max_workers=0)


class TestRunOptions:
    def test_unknown_run_option_suggests(self, manager):
        """An unknown execute_pipeline option is a TypeError with a suggestion."""
        with pytest.raises(TypeError, match=r"'paralel'.*did you mean 'parallel'"):
            manager.execute_pipeline(_threads_pipeline(), paralel=True)

    @pytest.mark.parametrize(
        ("option", "package"),
        [("isolation_mode", "xlib-pipeline-tenancy"), ("distributed", "xlib-pipeline-dask")],
    )
    def test_plugin_run_option_names_package(self, manager, option, package):
        """A run option owned by a missing plugin names the package."""
        with pytest.raises(MissingPluginError) as info:
            manager.execute_pipeline(_threads_pipeline(), **{option: "x"})
        assert info.value.package == package and option in str(info.value)


class TestComplianceMode:
    def test_turns_on_the_whole_set_with_embedded_defaults(self, tmp_path, monkeypatch):
        """compliance_mode: store, audit, lineage, classification with PII detection and
        encryption at rest, each from its embedded default; keys the user set win."""
        import importlib.util

        plugins = ("audit", "lineage", "classification", "encryption")
        missing = [n for n in plugins if importlib.util.find_spec(f"xlib_pipeline_{n}") is None]
        if missing:
            pytest.skip(f"needs the plugins {missing} (installed by `nox -s tests`)")
        monkeypatch.setenv("XLIB_PIPELINE_KEYS_DIR", str(tmp_path / "keys"))
        with PipelineManager({"compliance_mode": True}) as pm:
            c = pm.config
            assert c.get("audit_logging") and c.get("data_lineage")
            assert c.get("security_scanning") and c.get("security.encryption_at_rest")
            assert pm.store is not None
            # each plugin registered its runtime hooks (configure's idiom)
            for runtime in ("audit.recorder", "lineage.recorder", "classification.runtime"):
                assert pm.has_plugin(runtime), runtime
            assert pm.get_plugin("encryption").at_rest
        with PipelineManager(
            {"compliance_mode": True, "store": {"path": str(tmp_path / "mine.sqlite")}}
        ) as pm:
            assert pm.store is not None and pm.store.path == tmp_path / "mine.sqlite"

    def test_is_a_real_boolean(self):
        with pytest.raises(ConfigError, match="compliance_mode"):
            PipelineManager({"compliance_mode": "yes"}, entry_points=False)
