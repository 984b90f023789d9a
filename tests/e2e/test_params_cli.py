"""Issue 17 item 1, end to end: a parametrized pipeline run from the CLI and from Python
with the same params; the task receives them, and they show in ``runs show``, the audit
trail and the lineage run facets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

pytest.importorskip("xlib_pipeline_audit")
pytest.importorskip("xlib_pipeline_lineage")

ETL = textwrap.dedent(
    """
    from xlib_pipeline import Pipeline, TaskContext

    etl = Pipeline("etl")

    @etl.task("extract_orders")
    def extract_orders(day=None, *, context: TaskContext):
        return {"day": day, "logical_date": context.logical_date.isoformat(),
                "params": dict(context.params), "attempt": context.attempt}

    @etl.task("load", depends_on=["extract_orders"])
    def load(orders, limit=100):
        return {**orders, "limit": limit}
    """
)

PARAMS = {"day": "2024-05-01", "limit": 5, "logical_date": "2024-05-01"}


def cli() -> list[str]:
    script = Path(sys.executable).with_name("xlib-pipeline")
    if script.exists():
        return [str(script)]
    found = shutil.which("xlib-pipeline")
    return [found] if found else [sys.executable, "-m", "xlib_pipeline.cli"]


def run_cli(*args: str, cwd: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, XLIB_PIPELINE_HOME=str(home), NO_COLOR="1", COLUMNS="200")
    return subprocess.run(
        [*cli(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180
    )


def config(tmp: Path) -> dict[str, object]:
    return {
        "store": {"path": str(tmp / "runs.sqlite")},
        "audit": {"path": str(tmp / "audit.jsonl"), "keyed": False},
        "lineage": {"transport": {"type": "file", "path": str(tmp / "lineage.jsonl")}},
    }


def trail_params(tmp: Path, run_id: str) -> dict[str, object]:
    lines = [json.loads(x) for x in (tmp / "audit.jsonl").read_text().splitlines() if x]
    started = [r for r in lines if r.get("run_id") == run_id and r["action"] == "run.started"]
    assert len(started) == 1, lines
    return started[0]


def lineage_start(tmp: Path, run_id: str) -> dict[str, object]:
    events = [json.loads(x) for x in (tmp / "lineage.jsonl").read_text().splitlines() if x]
    starts = [
        e for e in events
        if e["run"]["runId"] == run_id and e["eventType"] == "START"
    ]  # fmt: skip
    assert len(starts) == 1
    return starts[0]


def test_same_params_from_cli_and_python(tmp_path: Path, xlib_home: Path) -> None:
    (tmp_path / "etl.py").write_text(ETL)
    (tmp_path / "config.json").write_text(json.dumps(config(tmp_path)))
    # -- the CLI ---------------------------------------------------------------------------
    args = [f"--param={k}={v}" for k, v in PARAMS.items()]
    proc = run_cli(
        "run", "etl.py", "--config", "config.json", "--no-monitor", *args,
        cwd=tmp_path, home=xlib_home,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    listed = run_cli(
        "runs", "list", "--store", "runs.sqlite", "--json", cwd=tmp_path, home=xlib_home
    )
    assert listed.returncode == 0, listed.stderr
    (cli_run,) = json.loads(listed.stdout)
    cli_id = cli_run["run_id"]
    shown = run_cli(
        "runs", "show", cli_id, "--store", "runs.sqlite", "--json", cwd=tmp_path, home=xlib_home
    )
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["params"] == PARAMS
    text = run_cli("runs", "show", cli_id, "--store", "runs.sqlite", cwd=tmp_path, home=xlib_home)
    assert "params" in text.stdout and "2024-05-01" in text.stdout

    # -- Python, same params ---------------------------------------------------------------
    sys.path.insert(0, str(tmp_path))
    try:
        from xlib_pipeline import PipelineManager
        from xlib_pipeline.loading import load_pipeline

        pipeline, _ = load_pipeline(str(tmp_path / "etl.py"))
        with PipelineManager(config(tmp_path)) as pm:
            result = pm.execute_pipeline(pipeline, params=dict(PARAMS))
            assert result.success, result.error
            out = result.final_result
            assert out["day"] == "2024-05-01" and out["limit"] == 5
            assert out["logical_date"] == "2024-05-01T00:00:00+00:00"
            assert out["params"] == PARAMS
            stored = pm.store.get_run(cli_id)
            assert stored.params == pm.store.get_run(result.run_id).params == PARAMS
            py_id = result.run_id
    finally:
        sys.path.remove(str(tmp_path))

    for rid in (cli_id, py_id):
        started = trail_params(tmp_path, rid)
        assert started["params"] == PARAMS
        assert started["logical_date"] == "2024-05-01T00:00:00+00:00"
        facets = lineage_start(tmp_path, rid)["run"]["facets"]  # type: ignore[index]
        assert facets["xlibPipeline_run"]["params"] == PARAMS
        assert facets["nominalTime"]["nominalStartTime"].startswith("2024-05-01T00:00:00")


def test_param_reaches_a_task_from_the_cli(tmp_path: Path, xlib_home: Path) -> None:
    """Issue 17's first finding: ``--param day=...`` gave the task ``None``."""
    (tmp_path / "daily.py").write_text(
        textwrap.dedent(
            """
            from xlib_pipeline import Pipeline

            daily = Pipeline("daily")

            @daily.task("extract")
            def extract(day=None):
                return {"extracted": day}
            """
        )
    )
    proc = run_cli(
        "run", "daily.py", "--no-monitor", "--param", "day=2024-05-01",
        cwd=tmp_path, home=xlib_home,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert '"extracted": "2024-05-01"' in proc.stdout
    bad = run_cli(
        "run", "daily.py", "--no-monitor", "--param", "dya=2024-05-01",
        cwd=tmp_path, home=xlib_home,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "'dya'" in bad.stderr and "did you mean 'day'" in bad.stderr
    assert "extracted" not in bad.stdout
