"""Run params passed to tasks by name, and the :class:`TaskContext` a task may ask for."""

from __future__ import annotations

import enum
import pickle
from datetime import UTC, date, datetime

import cloudpickle
import pytest
from hypothesis import given
from hypothesis import strategies as st

from xlib_pipeline import (
    ConfigError,
    DefinitionError,
    Params,
    Pipeline,
    PipelineManager,
    TaskContext,
    plan,
)
from xlib_pipeline._context import call_spec, params_json


class _Flag(enum.IntEnum):
    ON = 1


class _Name(str):
    pass


class _Count(int):
    pass


def _reference_json(value):
    """params_json's value walk as it was (isinstance checks only): the model."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _reference_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_reference_json(v) for v in value]
    return repr(value)


def _leaves(value):
    if isinstance(value, dict):
        return [x for v in value.values() for x in _leaves(v)]
    if isinstance(value, list):
        return [x for v in value for x in _leaves(v)]
    return [value]


def etl() -> Pipeline:
    p = Pipeline("etl")

    @p.task("extract")
    def extract(day=None):
        return {"day": day}

    @p.task("load", depends_on=["extract"])
    def load(rows, *, limit=10, context: TaskContext):
        return {
            "rows": rows,
            "limit": limit,
            "task": context.task,
            "pipeline": context.pipeline,
            "run_id": context.run_id,
            "attempt": context.attempt,
            "params": dict(context.params),
            "logical_date": context.logical_date,
            "tenant": context.tenant,
        }

    return p


class TestParamsByName:
    @pytest.mark.parametrize("executor", ["inline", "threads", "processes"])
    def test_keyword_parameters_receive_params(self, manager, executor):
        """A keyword parameter after the upstream results gets the run param of its name,
        on every local executor (processes receive the context pickled)."""
        r = manager.execute_pipeline(
            etl(), executor=executor, params={"day": "2024-05-01", "limit": 3}
        )
        assert r.success, r.error
        out = r.final_result
        assert out["rows"] == {"day": "2024-05-01"}
        assert out["limit"] == 3
        assert out["task"] == "load" and out["pipeline"] == "etl"
        assert out["run_id"] == r.run_id and out["attempt"] == 1
        assert out["params"] == {"day": "2024-05-01", "limit": 3}

    def test_defaults_apply_without_the_param(self, manager):
        r = manager.execute_pipeline(etl(), params={"day": "d"})
        assert r.final_result["limit"] == 10

    def test_unknown_param_names_the_known_ones(self, manager):
        """A param no task takes is refused before anything runs, naming the known ones."""
        p = Pipeline("strict")
        ran = []

        @p.task("extract")
        def extract(day=None, region="eu"):
            ran.append(1)

        with pytest.raises(ConfigError) as info:
            manager.execute_pipeline(p, params={"dya": "2024-05-01"})
        text = str(info.value)
        assert "'strict'" in text and "'dya'" in text
        assert "did you mean 'day'" in text and "day, region" in text
        assert ran == []

    def test_reserved_params_are_always_known(self, manager):
        p = Pipeline("plain")
        p.add_task("a", lambda: 1)
        assert manager.execute_pipeline(p, params={"logical_date": "2024-05-01"}).success

    def test_param_names_must_be_identifiers(self, manager):
        p = Pipeline("ids")
        p.add_task("a", lambda context: context.params)
        with pytest.raises(ConfigError, match="identifiers"):
            manager.execute_pipeline(p, params={"not a name": 1})

    def test_a_task_gets_its_own_copy_of_mutable_params(self, manager):
        """A task mutating a param changes neither its siblings' copy nor the run's."""
        p = Pipeline("copies")

        @p.task("a")
        def a(items=None):
            items.append("a")
            return list(items)

        @p.task("b")
        def b(items=None):
            return list(items)

        params = {"items": [1]}
        r = manager.execute_pipeline(p, params=params)
        assert r.tasks["a"].output == [1, "a"] and r.tasks["b"].output == [1]
        assert params == {"items": [1]}

    def test_async_tasks_receive_params_and_context(self, manager):
        p = Pipeline("aio")

        @p.task("a")
        async def a(day=None, *, context: TaskContext):
            return day, context.task

        assert manager.execute_pipeline(p, params={"day": 1}).final_result == (1, "a")


class TestContext:
    def test_context_by_name_without_annotation(self, manager):
        p = Pipeline("named")
        p.add_task("a", lambda context: context.task)
        assert manager.execute_pipeline(p).final_result == "a"

    def test_a_task_reading_context_accepts_any_param(self, manager):
        """Without a declaration, a pipeline whose task reads the context takes any param."""
        p = Pipeline("open")
        p.add_task("a", lambda context: dict(context.params))
        assert manager.execute_pipeline(p, params={"x": 1}).final_result == {"x": 1}

    def test_declared_params_make_it_strict_and_give_defaults(self, manager):
        p = Pipeline("declared", params={"day": "2024-01-01", "region": None})
        p.add_task("a", lambda context: dict(context.params))
        assert manager.execute_pipeline(p).final_result == {"day": "2024-01-01", "region": None}
        r = manager.execute_pipeline(p, params={"day": "2024-02-02"})
        assert r.final_result["day"] == "2024-02-02"
        with pytest.raises(ConfigError, match=r"'dya'.*did you mean 'day'"):
            manager.execute_pipeline(p, params={"dya": 1})

    def test_declared_params_are_checked(self):
        with pytest.raises(DefinitionError, match="identifiers"):
            Pipeline("bad", params=["not ok"])
        with pytest.raises(DefinitionError, match="list of names"):
            Pipeline("bad", params=3)

    def test_attempt_counts_retries(self):
        """``attempt`` is the attempt number the body runs as."""
        from xlib_pipeline import RetryDecision, hookimpl

        class Retry:
            @hookimpl
            def on_task_error(self, task, run, outcome):
                return RetryDecision(delay=0) if outcome.attempt < 3 else None

        seen = []
        p = Pipeline("retry")

        @p.task("flaky")
        def flaky(context: TaskContext):
            seen.append(context.attempt)
            if context.attempt < 3:
                raise ConnectionError("again")
            return context.attempt

        with PipelineManager(entry_points=False, plugins=[Retry()]) as pm:
            assert pm.execute_pipeline(p).final_result == 3
        assert seen == [1, 2, 3]

    def test_read_only_and_picklable(self, manager):
        p = Pipeline("ro")

        @p.task("a")
        def a(context: TaskContext):
            with pytest.raises(AttributeError, match="read-only"):
                context.task = "x"  # type: ignore[misc]
            with pytest.raises(TypeError):
                context.params["x"] = 1  # type: ignore[index]
            context.log.info("inside", n=1)  # made lazily, never pickled
            return context

        ctx = manager.execute_pipeline(p, params={}).final_result
        for dumps, loads in ((pickle.dumps, pickle.loads), (cloudpickle.dumps, pickle.loads)):
            again = loads(dumps(ctx))
            assert again == ctx and again.log is not None
        assert "TaskContext(" in repr(ctx) and "'ro'" in repr(ctx)

    def test_no_manager_config_or_plan_inside(self, manager):
        p = Pipeline("small")
        p.add_task("a", lambda context: context)
        ctx = manager.execute_pipeline(p).final_result
        assert not any(hasattr(ctx, n) for n in ("manager", "config", "plan", "stash"))
        assert len(pickle.dumps(ctx)) < 1000

    def test_tenant_is_the_tasks(self, manager):
        p = Pipeline("tenants")
        p.add_task("a", lambda context: context.tenant, tenant_id="acme")
        p.add_task("b", lambda context: context.tenant)
        r = manager.execute_pipeline(p, tenant_id="globex")
        assert r.tasks["a"].output == "acme" and r.tasks["b"].output == "globex"


class TestLogicalDate:
    @pytest.mark.parametrize(
        ("given", "expected"),
        [
            ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC)),
            ("2024-05-01T06:30:00+02:00", datetime(2024, 5, 1, 4, 30, tzinfo=UTC)),
            ("2024-05-01T06:30:00Z", datetime(2024, 5, 1, 6, 30, tzinfo=UTC)),
            (date(2024, 5, 1), datetime(2024, 5, 1, tzinfo=UTC)),
            (datetime(2024, 5, 1, 12), datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ],
    )
    def test_param_sets_the_logical_date(self, manager, given, expected):
        p = Pipeline("dated")
        p.add_task("a", lambda context: context.logical_date)
        assert manager.execute_pipeline(p, params={"logical_date": given}).final_result == expected

    def test_default_is_the_start_of_the_run(self, manager):
        p = Pipeline("now")
        p.add_task("a", lambda context: context.logical_date)
        r = manager.execute_pipeline(p)
        assert r.final_result.tzinfo is UTC
        assert abs(r.final_result.timestamp() - r.started) < 5

    def test_bad_logical_date_is_refused(self, manager):
        p = Pipeline("bad_date")
        p.add_task("a", lambda: 1)
        with pytest.raises(ConfigError, match="logical_date must be an ISO-8601"):
            manager.execute_pipeline(p, params={"logical_date": "yesterday"})


class TestStoreAndResume:
    def test_params_are_recorded_and_kept_on_resume(self, tmp_path):
        """The store records a run's params; a resume keeps them (and its logical date) and
        refuses different ones."""
        store = tmp_path / "runs.sqlite"
        p = Pipeline("resumable")
        state = {"fail": True}

        @p.task("first")
        def first(day=None, *, context: TaskContext):
            return day, context.logical_date

        @p.task("second", depends_on=["first"])
        def second(got, day=None):
            if state["fail"]:
                raise RuntimeError("boom")
            return got, day

        with PipelineManager({"store": {"path": str(store)}}, entry_points=False) as pm:
            r1 = pm.execute_pipeline(p, params={"day": "2024-05-01"})
            assert not r1.success
            assert pm.store.get_run(r1.run_id).params == {"day": "2024-05-01"}
            with pytest.raises(ConfigError, match="other params"):
                pm.execute_pipeline(p, resume=r1.run_id, params={"day": "2024-06-01"})
            state["fail"] = False
            r2 = pm.execute_pipeline(p, resume=r1.run_id)
            assert r2.success, r2.error
            (day, when), day2 = r2.final_result
            assert day == day2 == "2024-05-01"
            assert abs(when.timestamp() - r1.started) < 1  # the first run's start
            assert pm.store.get_run(r2.run_id).params == {"day": "2024-05-01"}

    def test_params_json_keeps_dates_readable(self):
        out = params_json({"d": date(2024, 5, 1), "t": (1, 2), "s": {2, 1}, "o": object()})
        assert out["d"] == "2024-05-01" and out["t"] == [1, 2] and out["s"] == [1, 2]
        assert out["o"].startswith("<object")

    @given(
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers()
            | st.floats(allow_nan=False)
            | st.text()
            | st.dates()
            | st.sampled_from([_Flag.ON, _Name("n"), _Count(3)]),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.lists(inner, max_size=3).map(tuple)
                | st.dictionaries(st.text(max_size=3) | st.integers(), inner, max_size=3)
            ),
            max_leaves=10,
        )
    )
    def test_params_json_answers_as_the_isinstance_walk(self, value):
        """The exact-type fast path gives what the isinstance walk gave (subclasses of
        str, int and bool, dates, tuples and nested values included)."""
        assert params_json({"v": value}) == {"v": _reference_json(value)}
        assert [type(x) for x in _leaves(params_json({"v": value}))] == [
            type(x) for x in _leaves({"v": _reference_json(value)})
        ]


class TestCompiledOnce:
    def test_tasks_without_params_or_context_have_no_call_spec(self):
        """The decision is taken at plan compile time: plain tasks carry ``None``."""
        p = Pipeline("plain")
        p.add_task("a", lambda: 1)
        p.add_task("b", lambda x: x, depends_on=["a"])
        p.add_task("c", lambda x, *rest: x, depends_on=["b"])
        compiled = plan(p)
        assert compiled.calls == (None, None, None) and not compiled.has_calls

    @given(st.integers(min_value=0, max_value=4), st.integers(min_value=0, max_value=3))
    def test_call_spec_model(self, upstreams, extra):
        """Positional parameters take the upstreams; every later one is a param slot."""
        names = [f"u{i}" for i in range(upstreams)] + [f"p{i}" for i in range(extra)]
        src = f"def f({', '.join(names)}): pass"
        ns: dict[str, object] = {}
        exec(src, ns)
        spec, ok = call_spec(ns["f"], upstreams)  # type: ignore[arg-type]
        assert ok
        if extra == 0:
            assert spec is None
        else:
            assert spec is not None
            assert spec.params == tuple(names[upstreams:]) == spec.required
            assert spec.context is None

    def test_params_mapping_is_read_only(self):
        ps = Params({"a": 1})
        assert ps == {"a": 1} and pickle.loads(pickle.dumps(ps)) == ps
        with pytest.raises(TypeError):
            ps["a"] = 2  # type: ignore[index]
