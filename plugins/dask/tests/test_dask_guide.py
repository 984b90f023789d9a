"""The user guide's distributed example runs unchanged on a local Dask cluster."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.guide]

GUIDE = Path("/work/shared/seed/pipeline-manager-user-guide.md")


def _blocks() -> list[str]:
    if not GUIDE.is_file():
        pytest.skip("the user guide is not available here")
    return re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)


def test_guide_kubernetes_block_runs_on_dask(tmp_path):
    """Blocks 1 and 5 (no __main__ guard, closures) run as a script; workers do not re-run it."""
    pytest.importorskip("yaml")
    pytest.importorskip("xlib_pipeline_kubernetes")  # owns auto_scaling / resource_management
    blocks = _blocks()
    distributed = next(b for b in blocks if "KubernetesPipelineManager" in b)
    probe = (
        "\nimport os as _os\n"
        "_h = k8s_pm.pm.get_plugin('dask').handle\n"
        "print('XLIB-DASK', _h.source, _h.address, len(_h.client().nthreads()), _os.getpid())\n"
    )
    script = tmp_path / "guide_distributed.py"
    script.write_text(
        "print('SCRIPT-STARTED', flush=True)\n" + blocks[0] + "\n" + distributed + probe
    )
    env = dict(os.environ, XLIB_PIPELINE_HOME=str(tmp_path / "home"))
    env.pop("XLIB_PIPELINE_DASK_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
    assert out.count("SCRIPT-STARTED") == 1  # no worker re-ran the guard-less script
    assert "Best model: classifier" in out
    assert "Pipeline deployed: distributed_etl-pipeline" in out
    assert "Service: distributed_etl-service" in out
    assert "Distributed Pipeline Results:" in out
    assert "- Records processed: 10,000,000" in out
    assert "- Parallel partitions: 100" in out
    assert "- Nodes utilized: 5" in out
    line = next(x for x in out.splitlines() if x.startswith("XLIB-DASK"))
    _, source, address, workers, _pid = line.split()
    assert source == "local" and address.startswith("tcp://127.0.0.1:")
    assert int(workers) == 2
    # The fallback is visible: a SettingWithoutEffectWarning saying how to reach a real cluster.
    assert "SettingWithoutEffectWarning" in err and "a local Dask cluster" in err
    assert "distributed.address" in err
