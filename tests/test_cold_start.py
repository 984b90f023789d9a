"""Cold start: an installed plugin costs nothing heavy until it is configured or used.

Every check runs in a fresh interpreter (``sys.modules`` of this test process is full of
whatever other tests imported). These are import checks, not timings: the timings are in
benchmarks/bench_core.py (``_cold.py``) and benchmarks/RESULTS.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xlib_pipeline import Pipeline
from xlib_pipeline._graph import _accepts, _has_extra, _plain_call, plan
from xlib_pipeline.exceptions import ArityError

#: Dependencies that cost tens to hundreds of milliseconds to import.
HEAVY = (
    "distributed",
    "dask",
    "openlineage",
    "psycopg",
    "prometheus_client",
    "opentelemetry",
    "cryptography",  # audit checkpoints, encryption streams, evidence signing
    "rfc8785",  # the audit chain
    "smtplib",  # alert e-mail
    "psutil",  # the dask plugin reads the machine only when it starts a local cluster
)


def _fresh(code: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _entry_point_names() -> set[str]:
    import importlib.metadata as md

    return {ep.name for ep in md.entry_points(group="xlib_pipeline")}


def test_manager_with_every_plugin_installed_imports_nothing_heavy() -> None:
    answer = _fresh(
        f"""
        import json, sys
        from xlib_pipeline import Pipeline, PipelineManager
        pm = PipelineManager({{}})
        p = Pipeline("cold")
        p.add_task("a", lambda: 1)
        p.add_task("b", lambda a: a + 1, depends_on="a")
        ok = pm.execute_pipeline(p).success
        heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))
        print(json.dumps({{"plugins": [i.name for i in pm.plugins], "heavy": heavy, "ok": ok}}))
        """
    )
    assert answer["ok"] is True
    # Not vacuous: every installed plugin was loaded and registered.
    assert _entry_point_names() <= set(answer["plugins"])  # type: ignore[arg-type]
    assert answer["heavy"] == [], f"PipelineManager({{}}) imported {answer['heavy']}"


def test_cli_help_imports_nothing_heavy() -> None:
    answer = _fresh(
        f"""
        import contextlib, io, json, sys
        from xlib_pipeline import cli
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            try:
                cli.main(["--help"])
            except SystemExit:
                pass
        heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))
        print(json.dumps({{"heavy": heavy, "help": buf.getvalue()}}))
        """
    )
    assert "run" in str(answer["help"])
    assert answer["heavy"] == [], f"xlib-pipeline --help imported {answer['heavy']}"


#: What ``import xlib_pipeline`` and a plain run must not import: structlog pulls in rich
#: and pygments (its dev console), asyncio is for ``async def`` tasks only.
LAZY = ("structlog", "rich", "pygments", "asyncio")


def test_a_plain_run_imports_neither_structlog_nor_asyncio() -> None:
    answer = _fresh(
        f"""
        import json, logging, sys
        import xlib_pipeline
        after_import = sorted({{m.split(".")[0] for m in sys.modules}} & set({LAZY!r}))
        if "importlib.metadata" in sys.modules:  # plugins are found without it
            after_import.append("importlib.metadata")
        from xlib_pipeline import Pipeline, PipelineManager
        logging.basicConfig(level=logging.INFO, stream=sys.stdout)  # events are written
        pm = PipelineManager({{}})
        p = Pipeline("cold")
        p.add_task("a", lambda: 1)
        p.add_task("b", lambda a: a + 1, depends_on="a")
        ok = pm.execute_pipeline(p).success
        after_run = sorted({{m.split(".")[0] for m in sys.modules}} & set({LAZY!r}))
        print(json.dumps({{"ok": ok, "import": after_import, "run": after_run}}))
        """
    )
    assert answer == {"ok": True, "import": [], "run": []}


def test_async_tasks_still_get_their_event_loop_and_plain_futures_still_fail() -> None:
    answer = _fresh(
        """
        import json, sys
        from xlib_pipeline import Pipeline, PipelineManager
        pm = PipelineManager({}, entry_points=False)
        p = Pipeline("lazy")

        async def slow():
            import asyncio
            await asyncio.sleep(0)
            return 2

        def future():
            import asyncio
            loop = asyncio.new_event_loop()
            try:
                return loop.create_future()
            finally:
                loop.close()

        p.add_task("a", slow)
        ok = pm.execute_pipeline(p).success
        q = Pipeline("future")
        q.add_task("f", future)
        before = "asyncio" in sys.modules
        r = pm.execute_pipeline(q)
        print(json.dumps({"ok": ok, "before": before, "error": type(r.tasks["f"].error).__name__}))
        """
    )
    # asyncio was imported by the first run, so the set of lazy results knows its Future
    assert answer == {"ok": True, "before": True, "error": "LazyResultError"}


def test_configured_plugin_imports_its_dependency_on_use(tmp_path: Path) -> None:
    """Laziness is not absence: lineage on still writes OpenLineage events."""
    events = tmp_path / "lineage.jsonl"
    answer = _fresh(
        f"""
        import json, sys
        from xlib_pipeline import Pipeline, PipelineManager
        pm = PipelineManager({{"lineage": {{"transport": {{"type": "file",
                                              "path": {str(events)!r}}}}}}})
        p = Pipeline("cold")
        p.add_task("a", lambda: 1)
        ok = pm.execute_pipeline(p).success
        pm.close()
        print(json.dumps({{"ok": ok, "openlineage": "openlineage" in sys.modules}}))
        """
    )
    assert answer["ok"] is True
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    assert {e["eventType"] for e in lines} >= {"START", "COMPLETE"}
    assert all(e["schemaURL"].startswith("https://openlineage.io/spec/") for e in lines)


# -- the arity check works from code objects ------------------------------------------------


def _reference(fn: object, count: int) -> bool:
    import inspect

    try:
        inspect.signature(fn).bind(*([None] * count))  # type: ignore[arg-type]
    except TypeError:
        return False
    return True


def _a() -> None: ...
def _b(x: int) -> None: ...
def _c(x: int, y: int = 1) -> None: ...
def _d(*args: int) -> None: ...
def _e(x: int, *args: int) -> None: ...
def _f(x: int, *, k: int) -> None: ...
def _g(x: int, *, k: int = 2) -> None: ...
def _h(x: int, /, y: int, z: int = 0, *rest: int, k: int = 1, **kw: int) -> None: ...
def _i(**kw: int) -> None: ...


class _M:
    def method(self, x: int, y: int = 0) -> None: ...


@pytest.mark.parametrize("fn", [_a, _b, _c, _d, _e, _f, _g, _h, _i, _M().method])
@pytest.mark.parametrize("count", range(5))
def test_code_object_arity_agrees_with_inspect(fn: object, count: int) -> None:
    assert _accepts(fn, count) is _reference(fn, count)


def test_closures_share_one_cached_check_and_errors_still_name_the_signature() -> None:
    p = Pipeline("closures")
    p.add_task("root", lambda: 0)
    for k in range(50):

        def body(x: int, k: int = k) -> int:
            return x + k

        p.add_task(f"t{k}", body, depends_on="root")

    def one(x: int) -> int:  # two upstreams, one parameter: refused, naming the signature
        return x

    p.add_task("bad", one, depends_on=["root", "t0"])
    with pytest.raises(ArityError) as err:
        plan(p)
    assert "bad" in str(err.value) and "(x: 'int')" in str(err.value)


def test_wrapped_functions_are_checked_through_their_signature() -> None:
    import functools

    def inner(x: int) -> int:
        return x

    @functools.wraps(inner)
    def outer(*args: int) -> int:
        return inner(*args)

    assert _accepts(outer, 2) is None  # inspect decides: it follows __wrapped__
    p = Pipeline("wrapped")
    p.add_task("a", lambda: 1)
    p.add_task("b", lambda: 2)
    p.add_task("c", outer, depends_on=["a", "b"])
    with pytest.raises(ArityError):
        plan(p)


def test_a_threads_run_imports_no_worker_process_machinery() -> None:
    """The local executor (inline and lanes) runs without cloudpickle, subprocess or the
    limits watchdog: only the process executor needs them (the cold first run pays for
    what it imports). Nor the reference loop's graphlib and concurrent.futures, which the
    cold benchmark (``_cold.py``) loads outside both windows."""
    answer = _fresh(
        """
        import json, sys
        from xlib_pipeline import Pipeline, PipelineManager
        pm = PipelineManager({"max_workers": 2}, entry_points=False)
        p = Pipeline("cold")
        p.add_task("a", lambda: 1)
        p.add_task("b", lambda a: a + 1, depends_on="a")
        p.add_task("c", lambda a: a + 2, depends_on="a")
        ok = pm.execute_pipeline(p).success and pm.execute_pipeline(p, parallel=False).success
        worker = ("cloudpickle", "subprocess", "xlib_pipeline._worker_pool",
                  "xlib_pipeline._limits", "xlib_pipeline._worker",
                  "concurrent.futures", "graphlib")  # the reference's modules, too
        print(json.dumps({"ok": ok, "loaded": sorted(m for m in worker if m in sys.modules)}))
        """
    )
    assert answer == {"ok": True, "loaded": []}


@pytest.mark.parametrize("fn", [_a, _b, _c, _d, _e, _f, _g, _h, _i, _M().method])
@pytest.mark.parametrize("count", range(5))
def test_plain_call_is_accepts_without_extra_parameters(fn: object, count: int) -> None:
    """The one cached look-up the compiler uses agrees with the two checks it replaces and
    with inspect: the function takes exactly its upstream results."""
    expected = bool(_accepts(fn, count)) and not _has_extra(fn, count)
    assert _plain_call(fn, count) is expected
    assert _plain_call(fn, count) is expected  # cached answer
    if expected:
        assert _reference(fn, count)


@st.composite
def _layered(draw: st.DrawFn) -> tuple[list[tuple[int, ...]], list[int]]:
    """Tasks in a shuffled definition order (so a task may name one defined later)."""
    n = draw(st.integers(1, 30))
    deps = [
        tuple(sorted(draw(st.sets(st.integers(0, i - 1), max_size=4)))) if i else ()
        for i in range(n)
    ]
    perm = draw(st.permutations(range(n)))
    return deps, list(perm)


@given(_layered(), st.booleans())
def test_compiled_plan_matches_a_plain_model(spec: Any, optioned: bool) -> None:
    """preds, succs, roots, sinks, a topological order and every task's height (longest
    path to a sink, in tasks) agree with a direct model; ``has_options`` says whether any
    task carries an option."""
    deps, perm = spec
    p = Pipeline("model")
    for i in perm:  # definition order differs from the topological one
        p.add_task(f"t{i}", lambda *a: None, depends_on=[f"t{j}" for j in deps[i]])
    if optioned:
        p.replace(f"t{perm[-1]}", options={"timeout": 5.0})
    compiled = plan(p)
    at = {name: k for k, name in enumerate(compiled.names)}
    n = len(deps)
    for i in range(n):
        k = at[f"t{i}"]
        assert compiled.preds[k] == tuple(at[f"t{j}"] for j in deps[i])
        below = sorted(at[f"t{s}"] for s in range(n) if i in deps[s])
        assert sorted(compiled.succs[k]) == below
        assert compiled.npreds[k] == len(deps[i])
    pos = {k: q for q, k in enumerate(compiled.order)}
    assert sorted(pos) == list(range(n))
    assert all(pos[j] < pos[k] for k in range(n) for j in compiled.preds[k])
    height: dict[int, int] = {}
    for i in reversed(range(n)):  # model indices: successors have larger numbers
        height[i] = 1 + max((height[s] for s in range(i + 1, n) if i in deps[s]), default=0)
    assert {f"t{i}": h for i, h in height.items()} == {
        compiled.names[k]: compiled.height[k] for k in range(n)
    }
    assert set(compiled.roots) == {at[f"t{i}"] for i in range(n) if not deps[i]}
    assert set(compiled.sinks) == {k for k in range(n) if not compiled.succs[k]}
    assert compiled.has_options is optioned
    assert compiled.timeouts == tuple(
        5.0 if optioned and name == f"t{perm[-1]}" else None for name in compiled.names
    )
