"""Issue 18, defects 2 and 5: limits hold for a task's whole process tree, and a worker that
dies is reported as what happened (exit code, signal, exception), not as a memory limit."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from xlib_pipeline import Pipeline, PipelineManager, ResourceLimitExceeded, WorkerLostError

pytestmark = pytest.mark.slow

MB = 1024**2


@pytest.fixture
def pm():
    manager = PipelineManager({"multi_tenant": True})
    yield manager
    manager.close()


def _spawn_hogs(n: int, mb: int) -> int:
    """Start ``n`` children holding ``mb`` MiB each (written, so resident); wait for them."""
    code = f"import time; block = 'x' * ({mb} * 1024 * 1024); time.sleep(30)"
    children = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]
    try:
        for c in children:
            c.wait(timeout=60)
    finally:
        for c in children:
            c.kill()
    return sum(c.returncode or 0 for c in children)


def test_children_count_against_the_memory_limit(pm):
    """memory_mb=200 and six children of 150 MB: used to succeed with ~950 MB resident."""
    p = Pipeline("tree")
    p.add_task("hog", lambda: _spawn_hogs(6, 150), tenant_id="acme")
    result = pm.execute_pipeline(
        p, isolation_mode="tenant", resource_limits={"memory_mb": 200, "wall_seconds": 120}
    )
    err = result.tasks["hog"].error
    assert isinstance(err, ResourceLimitExceeded), err
    assert err.limit == "memory" and err.tenant == "acme" and err.task == "hog"
    assert "process tree" in str(err) and "200 MiB" in str(err)


def test_a_tree_under_its_limit_runs(pm):
    p = Pipeline("small-tree")

    def two_small_children() -> int:
        code = "block = 'x' * (20 * 1024 * 1024)"
        return sum(subprocess.run([sys.executable, "-c", code]).returncode for _ in range(2))

    p.add_task("kids", two_small_children, tenant_id="acme")
    result = pm.execute_pipeline(p, isolation_mode="tenant", resource_limits={"memory_mb": 200})
    assert result.success, result.tasks["kids"].error
    assert result.final_result == 0


def test_children_inherit_the_cpu_affinity(pm):
    def child_cores() -> tuple[list[int], list[int]]:
        code = "import os; print(sorted(os.sched_getaffinity(0)))"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        return sorted(os.sched_getaffinity(0)), eval(out.stdout)

    p = Pipeline("cpu")
    p.add_task("c", child_cores, tenant_id="acme")
    result = pm.execute_pipeline(p, isolation_mode="tenant", resource_limits={"cpu_cores": 1})
    mine, child = result.final_result
    assert len(mine) == 1 and child == mine


def _exit0() -> None:
    os._exit(0)


def _segfault() -> None:
    import ctypes

    ctypes.string_at(0)


def _raise_memory_error() -> None:
    raise MemoryError("the task's own error")


@pytest.mark.parametrize(
    "fn, expected_type, expected_text",
    [
        (_exit0, WorkerLostError, "exited with code 0"),
        (_segfault, WorkerLostError, "SIGSEGV"),
        (_raise_memory_error, MemoryError, "the task's own error"),
    ],
)
def test_limited_pool_reports_what_happened(pm, fn, expected_type, expected_text):
    """os._exit(0), SIGSEGV and a user-raised MemoryError were all reported as
    ResourceLimitExceeded 'past its memory limit'."""
    p = Pipeline("honest")
    p.add_task("t", fn, tenant_id="acme")
    result = pm.execute_pipeline(p, isolation_mode="tenant", resource_limits={"memory_mb": 200})
    err = result.tasks["t"].error
    assert type(err) is expected_type, repr(err)
    assert not isinstance(err, ResourceLimitExceeded)
    assert expected_text in str(err)
    assert "memory limit" not in str(err)


def test_a_real_allocation_past_the_limit_is_still_the_limit(pm):
    def big() -> int:
        return len(bytearray(1024**3))

    p = Pipeline("alloc")
    p.add_task("t", big, tenant_id="acme")
    result = pm.execute_pipeline(p, isolation_mode="tenant", resource_limits={"memory_mb": 200})
    err = result.tasks["t"].error
    assert isinstance(err, ResourceLimitExceeded) and err.limit == "memory"
