"""Cold start: one pipeline built and run once in a fresh process, as users run them.

Each figure is the median over ``repeat`` fresh interpreters, contenders interleaved:

* ``ours (all plugins)``: after ``from xlib_pipeline import Pipeline, PipelineManager``
  (untimed; ``import xlib_pipeline`` alone is lazy and loads no engine), build a 10,000-task
  random layered DAG through ``@pipeline.task`` (one closure per task), create
  ``PipelineManager({"max_workers": 2})`` with every installed plugin (entry points) and
  run it once (2 lanes);
* ``ours (bare core)``: the same with ``entry_points=False``;
* ``reference``: after the same untimed import line, build the same graph
  (one closure per task, a deps dict) and run it with graphlib.TopologicalSorter +
  ThreadPoolExecutor(2) (``_dags.reference_threads``).

Also measured in fresh processes: ``PipelineManager({})`` with every plugin installed
against the bare core (after ``import xlib_pipeline``), the wall time of
``xlib-pipeline --help`` against ``python -c pass``, and what the reference's imports
(graphlib, concurrent.futures) cost after our import line (``ref-imports``).

**What each window contains (the fairness rule).** Both sides' own import lines are
untimed, and everything either imports after them is timed. Every child runs the same
untimed prelude: ``_dags`` (the DAG spec generator; it imports graphlib and
concurrent.futures, the reference's import line) and ``from xlib_pipeline import Pipeline,
PipelineManager`` (ours). So the reference imports nothing inside its window, and ours pays
inside its window for every engine module it loads lazily (scheduler pieces, the executor,
the plugins' entry modules). Ours uses neither graphlib nor concurrent.futures
(``tests/test_cold_start.py`` checks a threads run imports neither), so it gains nothing
from the prelude. Had the reference to import its modules inside its window
it would pay ``ref-imports`` more (printed with the results; about 1-2 % of its window).

    python benchmarks/_cold.py --child ours-all   # one measurement, JSON on stdout

Instruction counts (independent of the machine's load): with ``COLD_EXIT_AFTER_WINDOW=1`` a
child ends with ``os._exit(0)`` as its window closes, and ``--child none`` ends where the
windows start, so the difference of two callgrind totals is one window::

    PYTHONHASHSEED=0 COLD_EXIT_AFTER_WINDOW=1 valgrind --tool=callgrind \
        python benchmarks/_cold.py --child ours-all     # minus the same with --child none
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
COLD_TASKS = 10_000
TARGET_COLD_RATIO = 1.0
TARGET_MANAGER_MS = 30.0
TARGET_HELP_MS = 300.0
CONTENDERS = (
    "ours-all",
    "ours-core",
    "reference",
    "manager-all",
    "manager-core",
    "ref-imports",
)


def _window_closed() -> None:
    """End the process here under ``COLD_EXIT_AFTER_WINDOW=1`` (instruction counts)."""
    if os.environ.get("COLD_EXIT_AFTER_WINDOW") == "1":
        os._exit(0)


def _child(kind: str) -> dict[str, Any]:
    if kind == "ref-imports":  # our import line, then the reference's (without _dags)
        from xlib_pipeline import Pipeline, PipelineManager

        t0, c0 = time.perf_counter(), time.process_time()
        import concurrent.futures  # noqa: F401
        import graphlib  # noqa: F401

        return {"seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0}
    sys.path.insert(0, str(HERE))
    from _dags import layered, reference_threads

    # Untimed: the targets start after the user's import line. The package exports lazily
    # (PEP 562), so ``import xlib_pipeline`` alone loads no engine; the names used below
    # are imported here, as ``import xlib_pipeline`` used to import them all.
    from xlib_pipeline import Pipeline, PipelineManager

    if kind.startswith("manager-"):
        t0, c0 = time.perf_counter(), time.process_time()
        pm = PipelineManager({}, entry_points=kind == "manager-all")
        took, cpu = time.perf_counter() - t0, time.process_time() - c0
        pm.close()
        return {"seconds": took, "cpu": cpu}
    dag = layered(COLD_TASKS, width=100)  # the random spec itself is not timed
    names, deps = dag.names, dag.deps
    if kind == "none":  # where every window starts (instruction counts)
        _window_closed()
        return {"seconds": 0.0, "cpu": 0.0}
    if kind == "reference":
        t0, c0 = time.perf_counter(), time.process_time()
        graph: dict[str, tuple[str, ...]] = {}
        fns: dict[str, Any] = {}
        for name, d in zip(names, deps):

            def body(*args: Any) -> None:
                return None

            graph[name] = d
            fns[name] = body
        reference_threads(dag, 2, (graph, fns))
        took, cpu = time.perf_counter() - t0, time.process_time() - c0
        _window_closed()
        return {"seconds": took, "cpu": cpu}
    t0, c0 = time.perf_counter(), time.process_time()
    p = Pipeline("cold")
    for name, d in zip(names, deps):

        @p.task(name, depends_on=d)
        def body(*args: Any) -> None:
            return None

    pm = PipelineManager({"max_workers": 2}, entry_points=kind == "ours-all")
    result = pm.execute_pipeline(p)
    took, cpu = time.perf_counter() - t0, time.process_time() - c0
    _window_closed()
    if not result.success:
        raise SystemExit(f"cold run failed: {result.error}")
    heavy = ("distributed", "openlineage", "psycopg", "prometheus_client", "opentelemetry")
    loaded = sorted(m for m in heavy if m in sys.modules)
    pm.close()
    return {"seconds": took, "cpu": cpu, "heavy_modules": loaded}


#: Children write and use bytecode caches, as an installed wheel has them (pip compiles
#: at install): without them every import compiles its source, which no user pays twice.
_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _run_child(kind: str) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=_ENV).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _wall(cmd: list[str]) -> tuple[float, float]:
    """Wall time and CPU time (user + system) of ``cmd`` in a fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=_ENV)
    took = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return took, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def measure(repeat: int) -> dict[str, Any]:
    """Median seconds per contender over ``repeat`` fresh processes (interleaved)."""
    times: dict[str, list[float]] = {k: [] for k in CONTENDERS}
    cpu: dict[str, list[float]] = {k: [] for k in CONTENDERS}
    times["help"], times["python"] = [], []
    cpu["help"], cpu["python"] = [], []
    heavy: list[str] = []
    cli = shutil.which("xlib-pipeline", path=str(Path(sys.executable).parent))
    for kind in CONTENDERS:  # unmeasured: writes the bytecode caches
        _run_child(kind)
    for _ in range(repeat):
        for kind in CONTENDERS:
            answer = _run_child(kind)
            times[kind].append(answer["seconds"])
            cpu[kind].append(answer["cpu"])
            heavy = answer.get("heavy_modules", heavy)
        if cli:
            wall, used = _wall([cli, "--help"])
            times["help"].append(wall)
            cpu["help"].append(used)
            wall, used = _wall([sys.executable, "-c", "pass"])
            times["python"].append(wall)
            cpu["python"].append(used)
    med = {k: statistics.median(v) for k, v in times.items() if v}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items() if v}
    return {
        "median": med,
        "cpu": med_cpu,
        "repeat": repeat,
        "tasks": COLD_TASKS,
        "heavy_modules": heavy,
    }


def render(res: dict[str, Any]) -> list[str]:
    """Markdown lines for RESULTS.md / results/core.md."""
    m = res["median"]
    n = res["tasks"]
    ratio_all = m["ours-all"] / m["reference"]
    ratio_core = m["ours-core"] / m["reference"]
    extra_ms = (m["manager-all"] - m["manager-core"]) * 1e3
    ok = "✅" if ratio_all <= TARGET_COLD_RATIO else "❌"
    lines = [
        f"### Cold start: build + first run of a {n:,}-task DAG in a fresh process "
        f"(median of {res['repeat']} processes each)",
        "",
        "| contender | build + first run | µs per task | ratio to reference |",
        "|---|---:|---:|---:|",
        f"| reference (graphlib + ThreadPoolExecutor(2), graph built) | "
        f"{m['reference'] * 1e3:.0f} ms | {m['reference'] / n * 1e6:.1f} | 1.00× |",
        f"| ours, bare core | {m['ours-core'] * 1e3:.0f} ms | "
        f"{m['ours-core'] / n * 1e6:.1f} | {ratio_core:.2f}× |",
        f"| ours, every plugin installed | {m['ours-all'] * 1e3:.0f} ms | "
        f"{m['ours-all'] / n * 1e6:.1f} | {ratio_all:.2f}× {ok} (target ≤ "
        f"{TARGET_COLD_RATIO:g}×) |",
        "",
        "| measure | every plugin installed | bare core | difference | target |",
        "|---|---:|---:|---:|---|",
        f"| `PipelineManager({{}})` after `import xlib_pipeline` | "
        f"{m['manager-all'] * 1e3:.1f} ms | {m['manager-core'] * 1e3:.1f} ms | "
        f"{extra_ms:+.1f} ms | ≤ {TARGET_MANAGER_MS:g} ms over the core "
        + ("✅" if extra_ms <= TARGET_MANAGER_MS else "❌")
        + " |",
    ]
    if "help" in m:
        ok_h = "✅" if m["help"] * 1e3 <= TARGET_HELP_MS else "❌"
        lines.append(
            f"| `xlib-pipeline --help` wall time (`python -c pass`: "
            f"{m['python'] * 1e3:.0f} ms) | {m['help'] * 1e3:.0f} ms | | | "
            f"≤ {TARGET_HELP_MS:g} ms {ok_h} |"
        )
    if "ref-imports" in m:
        lines += [
            "",
            "The reference's imports (graphlib, concurrent.futures) after our import line, "
            f"untimed in its window (see the rule in `_cold.py`): {m['ref-imports'] * 1e3:.1f} "
            f"ms wall ({m['ref-imports'] / m['reference'] * 100:.1f} % of its window).",
        ]
    c = res.get("cpu")
    if c:
        extra_cpu = (c["manager-all"] - c["manager-core"]) * 1e3
        lines += [
            "",
            "CPU time (process_time, all threads; steadier than wall time on a shared "
            f"machine): reference {c['reference'] * 1e3:.0f} ms, bare core "
            f"{c['ours-core'] * 1e3:.0f} ms ({c['ours-core'] / c['reference']:.2f}×), every "
            f"plugin installed {c['ours-all'] * 1e3:.0f} ms "
            f"({c['ours-all'] / c['reference']:.2f}×); `PipelineManager({{}})` "
            f"{c['manager-all'] * 1e3:.1f} ms with every plugin against "
            f"{c['manager-core'] * 1e3:.1f} ms bare ({extra_cpu:+.1f} ms).",
        ]
    heavy = ", ".join(res.get("heavy_modules") or []) or "none"
    lines += [
        "",
        f"Heavy modules imported by the cold run with every plugin installed: {heavy}.",
    ]
    return lines


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(_child(sys.argv[2])))
    elif len(sys.argv) > 1 and sys.argv[1] == "--json":  # for _cold_ab.py
        print(json.dumps(measure(int(sys.argv[2]) if len(sys.argv) > 2 else 5)))
    else:
        print("\n".join(render(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 5))))
