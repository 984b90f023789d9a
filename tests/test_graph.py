"""Graph validation happens before anything runs; renderings of the DAG."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from xlib_pipeline_core_strategies import build_pipeline, dags

from xlib_pipeline import (
    ArityError,
    CycleError,
    DefinitionError,
    DuplicateTaskError,
    EmptyPipelineError,
    GraphError,
    Pipeline,
    PipelineManager,
    UnknownDependencyError,
    plan,
)


def noop(*args):
    return None


class Calls:
    """Counts calls of task functions, to prove nothing ran."""

    def __init__(self) -> None:
        self.n = 0

    def fn(self, *args):
        self.n += 1


class TestCycles:
    def test_three_cycle_message_shows_the_path(self, manager):
        """A cycle a -> b -> c -> a is refused with its path in the message and in .path."""
        p = Pipeline("loop")
        calls = Calls()
        p.add_task("a", calls.fn, depends_on=["c"])
        p.add_task("b", calls.fn, depends_on=["a"])
        p.add_task("c", calls.fn, depends_on=["b"])
        p.add_task("free", calls.fn)
        with pytest.raises(CycleError) as info:
            manager.execute_pipeline(p)
        err = info.value
        assert err.path == ("a", "b", "c", "a")
        assert "a -> b -> c -> a" in str(err)
        assert "'loop'" in str(err)
        assert calls.n == 0

    def test_self_dependency_is_a_cycle(self):
        """A task depending on itself is a one-task cycle."""
        p = Pipeline("selfish")
        p.add_task("me", noop, depends_on=["me"])
        with pytest.raises(CycleError) as info:
            p.validate()
        assert info.value.path == ("me", "me")
        assert "me -> me" in str(info.value)

    def test_cycle_path_found_behind_acyclic_prefix(self):
        """The reported path is the cycle itself, not the tasks leading into it."""
        p = Pipeline("tail")
        p.add_task("root", noop)
        p.add_task("x", noop, depends_on=["root", "z"])
        p.add_task("y", noop, depends_on=["x"])
        p.add_task("z", noop, depends_on=["y"])
        p.add_task("after", noop, depends_on=["z"])
        with pytest.raises(CycleError) as info:
            p.validate()
        path = info.value.path
        assert path[0] == path[-1]
        assert set(path) == {"x", "y", "z"}
        assert "root" not in path and "after" not in path
        # consecutive entries are real edges in data-flow order
        for up, down in itertools.pairwise(path):
            assert up in p[down].depends_on

    @given(st.integers(2, 8), st.data())
    def test_any_ring_is_reported_exactly(self, n, data):
        """For any ring of n tasks the path lists the ring's n edges in order."""
        names = [f"r{i}" for i in range(n)]
        p = Pipeline("ring")
        order = data.draw(st.permutations(range(n)))
        for i in order:
            p.add_task(names[i], noop, depends_on=[names[i - 1]])
        with pytest.raises(CycleError) as info:
            p.validate()
        path = info.value.path
        assert len(path) == n + 1 and path[0] == path[-1]
        for up, down in itertools.pairwise(path):
            assert p[down].depends_on == (up,)

    def test_cycle_error_is_a_graph_error(self):
        """CycleError belongs to the GraphError family."""
        assert issubclass(CycleError, GraphError)


class TestUnknownDependency:
    def test_did_you_mean(self, manager):
        """A misspelled dependency names the task, the unknown name and the closest task."""
        p = Pipeline("typo")
        calls = Calls()
        p.add_task("load_data", calls.fn)
        p.add_task("train", calls.fn, depends_on=["load_dta"])
        with pytest.raises(UnknownDependencyError) as info:
            manager.execute_pipeline(p)
        err = info.value
        assert (err.task, err.dependency, err.suggestion) == ("train", "load_dta", "load_data")
        assert "'train'" in str(err) and "'load_dta'" in str(err)
        assert "did you mean 'load_data'?" in str(err)
        assert calls.n == 0

    def test_no_suggestion_when_nothing_is_close(self):
        """With no similar task the message has no did-you-mean."""
        p = Pipeline("far")
        p.add_task("alpha", noop)
        p.add_task("beta", noop, depends_on=["zzzzzz"])
        with pytest.raises(UnknownDependencyError) as info:
            p.validate()
        assert info.value.suggestion is None
        assert "did you mean" not in str(info.value)
        assert "'zzzzzz'" in str(info.value)


class TestDuplicates:
    def test_duplicate_task_name(self):
        """Adding a second task with the same name fails at once, naming it and the pipeline."""
        p = Pipeline("dups")

        @p.task("step")
        def first():
            return 1

        with pytest.raises(DuplicateTaskError) as info:

            @p.task("step")
            def second():
                return 2

        assert info.value.task == "step"
        assert "'step'" in str(info.value) and "'dups'" in str(info.value)
        assert len(p) == 1 and p["step"].fn is first.__wrapped__  # the undecorated function

    def test_duplicate_dependency_entry(self):
        """A depends_on list naming a task twice is a definition error naming the task."""
        p = Pipeline("twice")
        p.add_task("a", noop)
        with pytest.raises(DefinitionError) as info:
            p.add_task("b", noop, depends_on=["a", "a"])
        assert info.value.task == "b"
        assert "'b'" in str(info.value)


class TestArity:
    def test_too_few_parameters(self, manager):
        """A function that cannot take one argument per upstream is refused before running."""
        p = Pipeline("arity")
        calls = Calls()
        p.add_task("a", calls.fn)
        p.add_task("b", calls.fn)

        def combine(only_one):
            return only_one

        p.add_task("combine", combine, depends_on=["a", "b"])
        with pytest.raises(ArityError) as info:
            manager.execute_pipeline(p)
        err = info.value
        assert err.task == "combine" and err.expected == 2
        assert err.upstreams == ("a", "b")
        assert "'combine'" in str(err) and "(only_one)" in str(err)
        assert "a, b" in str(err)
        assert calls.n == 0

    def test_required_parameter_beyond_upstreams_is_a_run_param(self, manager):
        """A root task whose function requires an argument needs that run param: the run
        is refused before anything runs, naming the parameter and both ways to fill it."""
        p = Pipeline("needs_arg")
        calls = Calls()
        p.add_task("first", calls.fn)

        def root(x):
            return x

        p.add_task("root", root)
        p.validate()  # the graph itself is fine: x may come from the run's params
        with pytest.raises(DefinitionError) as info:
            manager.execute_pipeline(p)
        assert info.value.task == "root"
        assert "'x'" in str(info.value) and "depends_on" in str(info.value)
        assert "--param x=" in str(info.value)
        assert calls.n == 0
        assert manager.execute_pipeline(p, params={"x": 7}).tasks["root"].output == 7

    def test_required_positional_only_parameter_is_refused(self):
        """A positional-only parameter no upstream fills can never be filled: arity error."""
        p = Pipeline("posonly")

        def root(x, /):
            return x

        p.add_task("root", root)
        with pytest.raises(ArityError) as info:
            p.validate()
        assert info.value.task == "root" and info.value.expected == 0
        assert "'root'" in str(info.value)

    def test_varargs_accept_any_number(self, manager):
        """A *args function takes any number of upstream results."""
        p = Pipeline("varargs")
        for n in ("a", "b", "c"):
            p.add_task(n, lambda n=n: n)
        p.add_task("all", lambda *args: args, depends_on=["c", "a", "b"])
        result = manager.execute_pipeline(p, parallel=False)
        assert result.final_result == ("c", "a", "b")

    def test_defaults_and_keyword_only_with_defaults_are_fine(self, manager):
        """Extra parameters with defaults do not break arity."""
        p = Pipeline("defaults")
        p.add_task("a", lambda: 1)

        def f(x, y=10, *, z=100):
            return x + y + z

        p.add_task("f", f, depends_on=["a"])
        assert manager.execute_pipeline(p).final_result == 111

    def test_required_keyword_only_parameter_is_a_run_param(self, manager):
        """A required keyword-only parameter is filled by the run param of its name."""
        p = Pipeline("kwonly")
        p.add_task("a", lambda: 1)

        def f(x, *, must):
            return x + must

        p.add_task("f", f, depends_on=["a"])
        with pytest.raises(DefinitionError) as info:
            manager.execute_pipeline(p)
        assert info.value.task == "f" and "'must'" in str(info.value)
        assert manager.execute_pipeline(p, params={"must": 2}).final_result == 3

    def test_bound_method_arity_excludes_self(self, manager):
        """Bound methods are checked without their ``self``."""

        class Steps:
            def one(self):
                return 1

            def two(self, x):
                return x + 1

        s = Steps()
        p = Pipeline("methods")
        p.add_task("one", s.one)
        p.add_task("two", s.two, depends_on=["one"])
        assert manager.execute_pipeline(p).final_result == 2


class TestEmptyAndDefinitions:
    def test_empty_pipeline(self, manager):
        """A pipeline without tasks is refused with a message naming it."""
        with pytest.raises(EmptyPipelineError) as info:
            manager.execute_pipeline(Pipeline("nothing"))
        assert info.value.pipeline == "nothing"
        assert "'nothing'" in str(info.value)

    def test_not_a_pipeline(self, manager):
        """execute_pipeline refuses other objects, naming the type it got."""
        with pytest.raises(DefinitionError, match="dict"):
            manager.execute_pipeline({"not": "a pipeline"})

    def test_bad_merge_strategy(self):
        """An unknown merge strategy names the task and the accepted values."""
        p = Pipeline("merge")
        with pytest.raises(DefinitionError) as info:
            p.add_task("t", noop, merge_strategy="any")
        assert "'t'" in str(info.value) and "collect_available" in str(info.value)

    def test_non_callable_condition(self):
        """A condition that is not callable is refused, naming the task."""
        p = Pipeline("cond")
        with pytest.raises(DefinitionError, match="'t'"):
            p.add_task("t", noop, condition=True)

    def test_decorator_without_parentheses(self):
        """Using @pipeline.task without parentheses says how to use it."""
        p = Pipeline("paren")
        with pytest.raises(DefinitionError, match="parentheses"):

            @p.task
            def t():
                return 1

    def test_unknown_task_lookup_suggests(self):
        """pipeline[name] with a typo suggests the closest task."""
        p = Pipeline("lookup")
        p.add_task("extract", noop)
        with pytest.raises(KeyError, match="did you mean 'extract'"):
            p["extrct"]

    def test_validation_runs_before_any_task(self):
        """Nothing runs when one part of a large graph is invalid."""
        p = Pipeline("partly_bad")
        calls = Calls()
        for i in range(20):
            p.add_task(f"ok{i}", calls.fn)
        p.add_task("bad", calls.fn, depends_on=["missing"])
        with pytest.raises(UnknownDependencyError):
            PipelineManager(entry_points=False).execute_pipeline(p)
        assert calls.n == 0


class TestPlan:
    @given(dags(max_nodes=12))
    def test_topological_order_and_shape(self, spec):
        """The plan orders every task after its upstreams and finds roots and sinks."""
        p = build_pipeline(spec)
        compiled = plan(p)
        pos = {compiled.names[i]: k for k, i in enumerate(compiled.order)}
        assert sorted(pos) == sorted(n.name for n in spec.nodes)
        for node in spec.nodes:
            for dep in node.deps:
                assert pos[dep] < pos[node.name]
        roots = {compiled.names[i] for i in compiled.roots}
        assert roots == {n.name for n in spec.nodes if not n.deps}
        assert {compiled.names[i] for i in compiled.sinks} == set(spec.sinks)

    def test_plan_is_cached_until_the_pipeline_changes(self):
        """The compiled plan is reused, and rebuilt after a task is added."""
        p = Pipeline("cache")
        p.add_task("a", noop)
        first = plan(p)
        assert plan(p) is first
        p.add_task("b", noop, depends_on=["a"])
        second = plan(p)
        assert second is not first and second.names == ("a", "b")


def _chain() -> Pipeline:
    p = Pipeline("render me")
    p.add_task("extract", noop)
    p.add_task("check", noop, depends_on=["extract"], condition=lambda x: True)
    p.add_task('load "it"', noop, depends_on=["extract", "check"])
    return p


class TestRendering:
    def test_mermaid(self):
        """Mermaid output is a flowchart with one node per task and one arrow per edge."""
        text = _chain().to_mermaid()
        lines = text.strip().splitlines()
        assert lines[0] == "flowchart LR"
        nodes = {m.group(2): m.group(1) for m in re.finditer(r"(t_\w+)[\[{]\"([^\"]+)\"", text)}
        assert set(nodes) == {"extract", "check", "load #quot;it#quot;"}
        arrows = re.findall(r"(t_\w+) --> (t_\w+)", text)
        assert len(arrows) == 3
        assert (nodes["extract"], nodes["check"]) in arrows
        assert (nodes["check"], nodes["load #quot;it#quot;"]) in arrows
        # conditional tasks are drawn as a rhombus
        assert nodes["check"] + '{"check"}' in text

    def test_dot(self):
        """DOT output quotes names, draws conditions as diamonds and lists every edge."""
        text = _chain().to_dot()
        assert text.startswith('digraph "render me" {')
        assert '"extract" -> "check";' in text
        assert '"check" -> "load \\"it\\"";' in text
        assert '"check" [shape=diamond];' in text
        assert '"extract" [shape=box];' in text
        assert text.rstrip().endswith("}")

    @given(dags(max_nodes=8))
    def test_every_edge_rendered(self, spec):
        """Both renderings contain exactly the DAG's edges."""
        p = build_pipeline(spec)
        edges = sum(len(n.deps) for n in spec.nodes)
        assert p.to_mermaid().count(" --> ") == edges
        assert p.to_dot().count(" -> ") == edges


class TestDistributeMarker:
    def test_distribute_above_task_updates_the_task(self):
        """distribute_across_nodes stacked above @pipeline.task sets the task's option."""
        p = Pipeline("dist")

        @p.distribute_across_nodes(parallelism=4)
        @p.task("work")
        def work():
            return 1

        assert p["work"].options["distribute"] == {"parallelism": 4}

    def test_distribute_below_task_is_picked_up(self):
        """distribute_across_nodes below @pipeline.task travels through with_options."""
        p = Pipeline("dist2")

        @p.task("work")
        @p.distribute_across_nodes()
        def work():
            return 1

        assert p["work"].options["distribute"] == {"parallelism": "auto"}

    def test_bad_parallelism(self):
        """parallelism must be 'auto' or a positive int."""
        with pytest.raises(DefinitionError, match="parallelism"):
            Pipeline("x").distribute_across_nodes(parallelism=0)
