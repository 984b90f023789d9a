"""Tenant isolation: own worker processes per tenant, memory and CPU-core limits."""

from __future__ import annotations

import itertools
import os
import re
import time
from pathlib import Path

import pytest

from xlib_pipeline import Pipeline, PipelineManager, ResourceLimitExceeded

pytestmark = pytest.mark.slow


@pytest.fixture
def pm():
    manager = PipelineManager({"multi_tenant": True})
    yield manager
    manager.close()


def test_memory_limit_fails_one_tenant_not_the_other(pm):
    """A task allocating past memory_gb fails with ResourceLimitExceeded; another tenant's
    concurrent task completes."""
    p = Pipeline("mem")

    @p.task("hog", tenant_id="acme", resource_limits={"memory_gb": 0.2})
    def hog():
        block = bytearray(1024**3)  # ~1 GiB
        return len(block)

    @p.task("fine", tenant_id="globex")
    def fine():
        time.sleep(0.3)
        return os.getpid()

    # The driver holds a big allocation too: it must not count against the worker's limit.
    ballast = bytearray(300 * 1024**2)
    result = pm.execute_pipeline(p, isolation_mode="tenant")
    del ballast
    hog_result = result.tasks["hog"]
    assert hog_result.status == "failed"
    err = hog_result.error
    assert isinstance(err, ResourceLimitExceeded)
    assert err.task == "hog" and err.tenant == "acme" and err.limit == "memory"
    assert "acme" in str(err) and "hog" in str(err)
    assert result.tasks["fine"].status == "succeeded"
    assert result.tasks["fine"].output != os.getpid()


def test_one_core_tenant_never_runs_two_tasks_at_once(pm):
    """A tenant limited to 1 CPU core runs its tasks one at a time, on one core."""
    p = Pipeline("cores")
    for k in range(4):

        def body(k=k):
            start = time.time()
            time.sleep(0.2)
            return (start, time.time(), os.getpid(), sorted(os.sched_getaffinity(0)))

        p.add_task(f"t{k}", body, tenant_id="small")
    result = pm.execute_pipeline(p, isolation_mode="tenant", resource_limits={"cpu_cores": 1})
    assert result.success
    spans = sorted(result.tasks[f"t{k}"].output[:2] for k in range(4))
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end - 0.005, "two tasks of a 1-core tenant overlapped"
    assert all(len(result.tasks[f"t{k}"].output[3]) == 1 for k in range(4))


def test_tenants_run_in_different_worker_pids(pm):
    """Tasks of tenant A and tenant B run in different worker processes, never the driver."""
    p = Pipeline("pids")
    for tenant in ("a", "b"):
        for k in range(2):
            p.add_task(f"{tenant}{k}", lambda: os.getpid(), tenant_id=tenant)
    result = pm.execute_pipeline(p, isolation_mode="tenant", resource_limits={"cpu_cores": 2})
    assert result.success
    a = {result.tasks[f"a{k}"].output for k in range(2)}
    b = {result.tasks[f"b{k}"].output for k in range(2)}
    assert not (a & b)
    assert os.getpid() not in a | b
    pools = pm.executor("processes").pool_pids()
    assert {"a", "b"} <= {tenant for tenant, _, _ in pools}


def test_cores_are_clamped_and_run_limits_cover_tasks_without_a_tenant(pm):
    """cpu_cores above the machine's count is clamped; run-level limits hold for every task,
    so a task without a tenant runs in a limited worker too (never in the driver)."""
    p = Pipeline("clamp")
    p.add_task("tenanted", lambda: os.getpid(), tenant_id="big")
    p.add_task("plain", lambda: os.getpid())
    result = pm.execute_pipeline(
        p, isolation_mode="tenant", resource_limits={"cpu_cores": 64, "memory_gb": 8}
    )
    assert result.success
    assert result.tasks["plain"].output != os.getpid()
    assert result.tasks["tenanted"].output != os.getpid()
    ex = pm.executor("processes")
    (pool,) = [p for (tenant, _, _), p in ex._pools.items() if tenant == "big"]
    assert pool.size == len(os.sched_getaffinity(0))


def test_isolate_resources_decorator(pm):
    """pm.isolate_resources(tenant_id=...) isolates the task even without isolation_mode."""
    p = Pipeline("deco")

    @p.task("iso")
    @pm.isolate_resources(tenant_id="acme", cpu_cores=1)
    def iso():
        return os.getpid()

    assert dict(p["iso"].options) == {
        "isolate": True,
        "tenant_id": "acme",
        "resource_limits": {"cpu_cores": 1},
    }
    result = pm.execute_pipeline(p)
    assert result.final_result != os.getpid()
    off = pm.execute_pipeline(p, isolation_mode="none")
    assert off.final_result == os.getpid()


def test_plain_manager_is_inert():
    """Without tenancy config no tenancy hook is registered and tasks stay in-process."""
    pm = PipelineManager()
    assert not pm.has_plugin("tenancy.runtime")
    p = Pipeline("plain")
    p.add_task("t", lambda: os.getpid(), tenant_id="acme")
    assert pm.execute_pipeline(p).final_result == os.getpid()
    assert not pm.has_plugin("tenancy.runtime")


GUIDE = Path("/work/shared/seed/pipeline-manager-user-guide.md")


@pytest.mark.guide
def test_user_guide_multi_tenant_example(capsys):
    """The guide's EnterprisePipelineManager example runs unchanged, in tenant workers."""
    if not GUIDE.exists():
        pytest.skip("user guide not available")
    pytest.importorskip("xlib_pipeline_audit")
    pytest.importorskip("xlib_pipeline_encryption")
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)
    code = next(b for b in blocks if "EnterprisePipelineManager" in b)
    header = "\n".join(
        line for line in blocks[0].splitlines() if line.startswith(("from ", "import "))
    )
    ns: dict = {"__name__": "guide_multi_tenant"}
    exec(compile(header + "\n" + code, "guide-multi-tenant", "exec"), ns)
    out = capsys.readouterr().out
    for tenant in ("tenant_corp_a", "tenant_startup_b", "tenant_enterprise_c"):
        assert f"Tenant {tenant}: Processed" in out
        assert f"/secure/tenant_{tenant}/results" in out
    assert "failed" not in out
    pm = ns["enterprise_pm"].pm
    pools = {tenant for tenant, _, _ in pm.executor("processes").pool_pids()}
    assert {"tenant_corp_a", "tenant_startup_b"} <= pools
    pm.close()


def test_run_limits_without_isolation_mode_are_enforced():
    """execute_pipeline(resource_limits=...) alone, no tenant anywhere: every task runs in a
    limited worker and a task past the memory limit fails; nothing is silently ignored."""
    p = Pipeline("limited")

    @p.task("pid")
    def pid():
        return os.getpid()

    @p.task("hog")
    def hog():
        return len(bytearray(1024**3))

    with PipelineManager() as manager:
        result = manager.execute_pipeline(p, resource_limits={"memory_gb": 0.2})
    assert result.tasks["pid"].output != os.getpid()
    err = result.tasks["hog"].error
    assert isinstance(err, ResourceLimitExceeded) and err.limit == "memory"


def test_run_limits_with_isolation_none_are_refused():
    """Limits that cannot be enforced refuse the run with a ConfigError saying why."""
    from xlib_pipeline import ConfigError

    p = Pipeline("refused")
    p.add_task("a", lambda: 1)
    with PipelineManager() as manager, pytest.raises(ConfigError) as info:
        manager.execute_pipeline(p, isolation_mode="none", resource_limits={"cpu_cores": 1})
    assert "resource_limits" in str(info.value) and "isolation_mode='none'" in str(info.value)


def test_async_task_runs_to_completion_in_its_tenant_worker(pm):
    """An async def task of an isolated tenant is awaited inside the tenant's worker."""
    import asyncio

    p = Pipeline("async-tenant")

    @p.task("fetch", tenant_id="acme")
    async def fetch():
        await asyncio.sleep(0.01)
        return os.getpid()

    result = pm.execute_pipeline(p, isolation_mode="tenant")
    assert result.success, result.error
    assert isinstance(result.final_result, int) and result.final_result != os.getpid()
