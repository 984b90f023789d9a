"""Issue 18, defect 1: a worker process serves exactly one tenant for its whole life.

The attack: tenant ``acme`` with limits got pool ``tenant:acme:<digest>``; a tenant *named*
``acme:<digest>`` with the same limits landed in the same warm worker, planted
``builtins.LEAKED_SECRET``, and acme's next run read it from the same PID.
"""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xlib_pipeline import (
    ConfigError,
    DefinitionError,
    Isolation,
    Pipeline,
    PipelineManager,
    ResourceLimits,
    tenant_id_pattern,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def pm():
    manager = PipelineManager({"multi_tenant": True})
    yield manager
    manager.close()


def _plant() -> int:
    import builtins

    builtins.LEAKED_SECRET = "globex-secret"  # type: ignore[attr-defined]
    return os.getpid()


def _peek() -> tuple[int, str | None]:
    import builtins

    return os.getpid(), getattr(builtins, "LEAKED_SECRET", None)


def test_tenant_named_like_another_tenants_pool_is_refused(pm):
    """The old string key ``tenant:acme:<digest>`` is no longer reachable: ':' is outside
    the tenant-id grammar, and the error names the task option and the rule."""
    limits = ResourceLimits.from_mapping({"cpu_cores": 1})
    digest = hashlib.sha256(repr(limits).encode()).hexdigest()[:8]
    p = Pipeline("attack")
    with pytest.raises(DefinitionError, match=r"task 'plant'.*tenant_id.*letter or digit.*acme:"):
        p.add_task("plant", _plant, tenant_id=f"acme:{digest}")
        pm.execute_pipeline(p, isolation_mode="tenant", resource_limits={"cpu_cores": 1})


def test_run_tenant_outside_the_grammar_is_refused(pm):
    p = Pipeline("run-tenant")
    p.add_task("t", _peek)
    for bad in ("-", "acme:1234abcd", "a/b", "", "x" * 64, "tenant one", "t[/]"):
        with pytest.raises(ConfigError, match="tenant_id"):
            pm.execute_pipeline(p, tenant_id=bad, isolation_mode="tenant")


def test_declared_tenant_names_follow_the_grammar():
    with pytest.raises(ConfigError, match=r"tenant name.*'acme:x'"):
        PipelineManager({"tenancy": {"tenants": {"acme:x": {}}}})


def test_warm_worker_never_serves_a_second_tenant(pm):
    """Same limits, names that differ only after a separator: the second tenant's planted
    global never reaches the first tenant's worker, and no PID is shared."""
    limits = {"cpu_cores": 1}
    first = Pipeline("acme-1")
    first.add_task("peek", _peek, tenant_id="acme")
    r1 = pm.execute_pipeline(first, isolation_mode="tenant", resource_limits=limits)
    attack = Pipeline("evil")
    attack.add_task("plant", _plant, tenant_id="acme.evil")
    r2 = pm.execute_pipeline(attack, isolation_mode="tenant", resource_limits=limits)
    again = Pipeline("acme-2")
    again.add_task("peek", _peek, tenant_id="acme")
    r3 = pm.execute_pipeline(again, isolation_mode="tenant", resource_limits=limits)
    assert r1.success and r2.success and r3.success
    pid1, _ = r1.final_result
    pid3, leaked = r3.final_result
    assert pid1 == pid3, "acme's warm worker should be reused for acme"
    assert leaked is None
    assert r2.final_result not in (pid1, pid3)


def test_tenantless_isolated_tasks_never_share_with_a_tenant(pm):
    """Tasks with isolate=True and no tenant get their own pool, apart from every tenant."""
    p = Pipeline("mixed")
    p.add_task("plant", _plant, tenant_id="t1", isolate=True)
    p.add_task("peek", lambda _: _peek(), depends_on=["plant"], isolate=True)
    result = pm.execute_pipeline(p)
    assert result.success
    pid, leaked = result.final_result
    assert leaked is None and pid != result.tasks["plant"].output


# --- property: random tenants and limits never share a worker ---------------------------------

tenant_ids = st.from_regex(tenant_id_pattern(), fullmatch=True)
limits_st = st.builds(
    ResourceLimits,
    memory_bytes=st.none() | st.integers(1, 2**40),
    cpu_cores=st.none() | st.integers(1, 4),
    wall_seconds=st.none() | st.floats(0.1, 1e6),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(tenant_ids | st.none(), limits_st), min_size=1, max_size=12))
def test_random_tenants_and_limits_map_to_distinct_pools(assignments):
    """Through tenancy's pool_for and the process executor's keying, two different tenants
    (or a tenant and tenant-less tasks) never get the same pool, so never the same process;
    one tenant with two sets of limits gets two pools."""
    pm = PipelineManager({"multi_tenant": True})
    try:
        plugin = pm.get_plugin("tenancy")
        ex = pm.executor("processes")
        seen: dict[int, tuple[str | None, ResourceLimits]] = {}
        for tenant, limits in assignments:
            iso = Isolation(
                executor="processes",
                pool=plugin.pool_for(tenant, limits),
                tenant=tenant,
                limits=limits,
            )
            pool = ex.pool(iso)
            assert pool.tenant == tenant and pool.limits == limits
            owner = seen.setdefault(id(pool), (tenant, limits))
            assert owner == (tenant, limits)
    finally:
        pm.close()


@settings(max_examples=5, deadline=None)
@given(st.lists(tenant_ids, min_size=2, max_size=3, unique=True))
def test_random_tenants_get_disjoint_worker_pids(tenants):
    """End to end, with real worker processes: no PID serves two tenants."""
    pm = PipelineManager({"multi_tenant": True})
    try:
        pids: dict[str, set[int]] = {}
        for round_ in range(2):
            p = Pipeline(f"round{round_}")
            for k, tenant in enumerate(tenants):
                p.add_task(f"t{k}", os.getpid, tenant_id=tenant)
            result = pm.execute_pipeline(
                p, isolation_mode="tenant", resource_limits={"cpu_cores": 1}
            )
            assert result.success
            for k, tenant in enumerate(tenants):
                pids.setdefault(tenant, set()).add(result.tasks[f"t{k}"].output)
        for a in tenants:
            for b in tenants:
                if a != b:
                    assert not (pids[a] & pids[b])
    finally:
        pm.close()
