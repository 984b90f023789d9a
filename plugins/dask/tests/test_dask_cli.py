"""``xlib-pipeline run FILE --executor dask`` end to end (issue 17, item 2).

The file's functions (module ``xlib_pipeline_user_<stem>``, which no worker can import)
reach the workers by value; a function a worker cannot load fails the run at once with an
error naming the task, instead of a worker logging ModuleNotFoundError while the run
waits for ever. Each command runs as a real subprocess with a deadline far above its
normal duration, so a hang fails the test instead of the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("distributed")
pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "xlib_pipeline.cli"]
DEADLINE = 240  # seconds; a run takes a few under load

ETL = '''
"""An ETL whose functions, classes and closures live in the file itself."""
from dataclasses import dataclass

from xlib_pipeline import Pipeline

PIPELINE_CONFIG = {"distributed": {"n_workers": 1, "threads_per_worker": 2}}


@dataclass
class Order:
    id: int
    amount: float


etl = Pipeline("etl")


@etl.task()
def extract_orders():
    return [Order(i, i * 1.5) for i in range(10)]


def _scale(factor):
    def scale(orders):
        return [Order(o.id, o.amount * factor) for o in orders]
    return scale


etl.add_task("transform", _scale(2), depends_on="extract_orders")


@etl.task(depends_on="transform", map_over=0)
def tax(order):
    return Order(order.id, order.amount + 1)


@etl.task(depends_on="tax")
def load(orders):
    import os
    total = sum(o.amount for o in orders)
    return {"total": total, "pid": os.getpid(), "kind": type(orders[0]).__name__}
'''

BROKEN = '''
"""A task whose function lives in a module only the driver has."""
import sys
import types

from xlib_pipeline import Pipeline

PIPELINE_CONFIG = {"distributed": {"n_workers": 1}}

helper = types.ModuleType("only_in_the_driver")
exec("def work():\\n    return 1\\n", helper.__dict__)
sys.modules["only_in_the_driver"] = helper

broken = Pipeline("broken")
broken.add_task("work", helper.work, retries=3)
'''


def _run(tmp_path: Path, name: str, source: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / name).write_text(textwrap.dedent(source))
    env = dict(os.environ, XLIB_PIPELINE_HOME=str(tmp_path / "home"), NO_COLOR="1")
    return subprocess.run(
        [*CLI, "run", name, "--executor", "dask", "--no-monitor"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )


def test_run_file_on_dask_sends_the_files_code_by_value(tmp_path: Path) -> None:
    proc = _run(tmp_path, "etl.py", ETL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ModuleNotFoundError" not in proc.stderr
    home = tmp_path / "home"
    shown = subprocess.run(
        [*CLI, "runs", "list", "--json"],
        cwd=tmp_path,
        env=dict(os.environ, XLIB_PIPELINE_HOME=str(home)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert '"succeeded"' in shown.stdout and "etl" in shown.stdout


def test_a_function_workers_cannot_load_fails_the_run_fast(tmp_path: Path) -> None:
    proc = _run(tmp_path, "broken.py", BROKEN)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "SerializationError" in text, text
    assert "'work'" in text and "only_in_the_driver" in text, text
    assert "could not load its function" in text, text


def test_the_outputs_came_from_a_worker(tmp_path: Path) -> None:
    """From Python too: the file's dataclass crossed to the worker and back by value."""
    (tmp_path / "etl.py").write_text(textwrap.dedent(ETL))
    code = f"""
        import json, os
        from xlib_pipeline import PipelineManager
        from xlib_pipeline.loading import load_pipeline
        p, module = load_pipeline({str(tmp_path / "etl.py")!r})
        with PipelineManager(module.PIPELINE_CONFIG) as pm:
            r = pm.execute_pipeline(p, executor="dask")
        out = r.final_result
        print(json.dumps({{"ok": r.success, "out": out, "driver": os.getpid()}}))
    """
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=dict(os.environ, XLIB_PIPELINE_HOME=str(tmp_path / "home")),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    assert answer["ok"] is True
    assert answer["out"]["total"] == sum(i * 1.5 * 2 + 1 for i in range(10))
    assert answer["out"]["kind"] == "Order"
    assert answer["out"]["pid"] != answer["driver"]
