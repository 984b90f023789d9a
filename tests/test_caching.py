"""Result caching: keys (code, inputs, version, params, tenant), status ``cached``, refresh,
encryption through the hooks, tenant isolation, the CLI and the composition of features.

Tests taking ``store_backend`` run against each run store backend (the SQLite file and a real
PostgreSQL server, tests/conftest.py): the cache lives in the run store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xlib_pipeline import (
    DefinitionError,
    FallbackValue,
    Pipeline,
    PipelineManager,
    Status,
)
from xlib_pipeline._cache import (
    CachePolicy,
    cache_key,
    function_fingerprint,
    value_fingerprint,
)


def store_cfg(tmp: Path, **extra: Any) -> dict[str, Any]:
    return {"store": {"path": str(tmp / "runs.sqlite")}, **extra}


#: Calls of the cached task. A module global, not a closure cell: closure values are part of
#: the code fingerprint, so a closure over a growing list would change the key every run.
CALLS: list[Any] = []


def counted(calls: list[Any], **options: Any) -> Pipeline:
    """``calls`` is CALLS (cleared here); kept as a parameter for readability."""
    assert calls is CALLS
    p = Pipeline("cached")

    @p.task("load")
    def load() -> int:
        return 3

    @p.task("slow", depends_on=["load"], cache=True, **options)
    def slow(x: int) -> int:
        CALLS.append(x)
        return x * 10

    return p


def cache_rows(pm: PipelineManager, **where: Any) -> list[tuple[Any, str, bytes]]:
    """(tenant, key, stored output) of every entry in ``pm``'s store, through its table."""
    table = pm.store.open_cache()  # type: ignore[union-attr]
    try:
        out = []
        for e in table.list(**where):
            found = table.get(e.key, e.tenant, 0.0)
            assert found is not None
            out.append((e.tenant, e.key, found[0]))
        return out
    finally:
        table.close()


def test_hit_costs_no_execution_and_is_its_own_status(store_backend: Any) -> None:
    calls = CALLS
    calls.clear()
    with store_backend.manager() as pm:
        first = pm.execute_pipeline(counted(calls))
        second = pm.execute_pipeline(counted(calls))
        refreshed = pm.execute_pipeline(counted(calls), refresh=["slow"])
        again = pm.execute_pipeline(counted(calls), refresh=False)
        with pytest.raises(DefinitionError, match="did you mean 'slow'"):
            pm.execute_pipeline(counted(calls), refresh=["slwo"])
        store: Any = pm.store
        statuses = [store.get_tasks(r.run_id)["slow"].status for r in store.list_runs()]
    assert first.tasks["slow"].status is Status.SUCCEEDED
    assert second.tasks["slow"].status is Status.CACHED and second.final_result == 30
    assert second.cached == ["slow"] and second.tasks["slow"].attempts == 0
    assert second.tasks["slow"].succeeded and second.success
    assert refreshed.tasks["slow"].status is Status.SUCCEEDED
    assert again.tasks["slow"].status is Status.CACHED
    assert calls == [3, 3]  # first run and the refresh
    assert sorted(statuses) == ["cached", "cached", "succeeded", "succeeded"]


def test_ttl_and_version(store_backend: Any) -> None:
    calls = CALLS
    calls.clear()
    with store_backend.manager() as pm:
        pm.execute_pipeline(counted(calls, cache_version="1"))
        pm.execute_pipeline(counted(calls, cache_version="1"))
        pm.execute_pipeline(counted(calls, cache_version="2"))
        assert calls == [3, 3]
        pm.execute_pipeline(counted(calls, cache_ttl=1e-6, cache_version="3"))
        pm.execute_pipeline(counted(calls, cache_ttl=1e-6, cache_version="3"))  # expired
    assert calls == [3, 3, 3, 3]


def test_config_enables_every_task_and_cache_key_overrides(tmp_path: Path) -> None:
    calls = CALLS
    calls.clear()
    p = Pipeline("keyed")
    p.add_task("src", lambda: {"id": 7, "noise": object()})
    p.add_task(
        "use",
        lambda d: calls.append(d["id"]) or d["id"],
        depends_on=["src"],
        cache_key=lambda d: d["id"],
    )
    cfg = store_cfg(tmp_path, cache={"enabled": True, "default_ttl": 3600})
    with PipelineManager(cfg, entry_points=False) as pm:
        pm.execute_pipeline(p)
        r = pm.execute_pipeline(p)
    assert r.tasks["use"].status is Status.CACHED and calls == [7]


def test_unhashable_inputs_name_the_task(tmp_path: Path) -> None:
    import threading

    p = Pipeline("locks")
    p.add_task("src", threading.Lock)
    p.add_task("use", lambda lock: 1, depends_on=["src"], cache=True)
    with PipelineManager(store_cfg(tmp_path), entry_points=False) as pm:
        r = pm.execute_pipeline(p)
    err = r.tasks["use"].error
    assert isinstance(err, DefinitionError) and "'use'" in str(err) and "cache_key=" in str(err)


# --- the key: no stale hit after a code or input change ---------------------------------------


def _helper(x: int) -> int:
    return x + 1


def _other_helper(x: int) -> int:
    return x + 2


def make_fn(const: int, closure: int, default: int, helper: Any) -> Any:
    def fn(x: int, d: int = default) -> int:
        return helper(x) * const + closure + d

    return fn


@given(
    st.integers(0, 3),
    st.integers(0, 3),
    st.integers(0, 3),
    st.booleans(),
    st.integers(0, 3),
)
def test_fingerprint_changes_with_code_inputs_closures_defaults(
    const: int, closure: int, default: int, other: bool, x: int
) -> None:
    helper = _other_helper if other else _helper
    base = function_fingerprint(make_fn(const, closure, default, helper))
    assert base == function_fingerprint(make_fn(const, closure, default, helper))
    assert base != function_fingerprint(make_fn(const, closure + 1, default, helper))
    assert base != function_fingerprint(make_fn(const, closure, default + 1, helper))
    assert base != function_fingerprint(
        make_fn(const, closure, default, _helper if other else _other_helper)
    )
    assert value_fingerprint([x, {"a": x}]) != value_fingerprint([x + 1, {"a": x}])
    assert value_fingerprint({"a": 1, "b": 2}) == value_fingerprint({"b": 2, "a": 1})


def _calls_helper(x: int) -> int:
    return _helper(x)


def test_same_module_helper_edit_invalidates(monkeypatch: pytest.MonkeyPatch) -> None:
    before = function_fingerprint(_calls_helper)
    monkeypatch.setitem(globals(), "_helper", _other_helper)
    assert function_fingerprint(_calls_helper) != before


@given(st.lists(st.integers(-5, 5), min_size=1, max_size=4), st.integers(0, 2))
def test_never_a_stale_output(inputs: list[int], variant: int) -> None:
    """Whatever sequence of inputs and code variants, the output equals a fresh run's."""
    import tempfile

    with (
        tempfile.TemporaryDirectory() as d,
        PipelineManager(store_cfg(Path(d)), entry_points=False) as pm,
    ):
        for k, value in enumerate(inputs):
            factor = (variant + k) % 3 + 1  # the code changes between runs too
            p = Pipeline("stale")
            p.add_task("src", lambda v=value: v)
            p.add_task("f", make_fn(factor, 0, 0, _helper), depends_on=["src"], cache=True)
            r = pm.execute_pipeline(p)
            assert r.final_result == (value + 1) * factor


def _key_from_scratch(
    policy: CachePolicy, tenant: str | None, pipeline: str, task: str, args: Any, params: str
) -> str:
    """The documented key, hashed from nothing (no kept prefix)."""
    import hashlib

    h = hashlib.sha256()
    for part in ("xlib-cache-1", tenant or "", pipeline, task, policy.version, params):
        h.update(part.encode() + b"\x1f")
    if policy.key_fn is not None:
        h.update(b"U" + bytes.fromhex(value_fingerprint(policy.key_fn(*args))))
    else:
        h.update(policy.code.encode())
        h.update(b"I" + bytes.fromhex(value_fingerprint(args)))
    return h.hexdigest()


_PLAIN = st.recursive(
    st.none() | st.integers() | st.text(max_size=5) | st.floats(allow_nan=False),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
    max_leaves=6,
)


@given(
    st.lists(
        st.tuples(
            st.sampled_from([None, "acme", "globex"]),
            st.sampled_from(["p", "q"]),
            st.sampled_from(["a", "b"]),
            _PLAIN,
            st.sampled_from(["", "f00d"]),
        ),
        min_size=1,
        max_size=40,
    ),
    st.booleans(),
)
def test_kept_key_prefix_gives_the_documented_key(calls: list[Any], user_key: bool) -> None:
    """A policy keeps the hash state before the inputs per (tenant, pipeline, task, params)
    and copies it: every key equals the one hashed from scratch, in any order of calls and
    past the bound on kept prefixes (tenants, tasks and params never leak into another's)."""
    policy = CachePolicy(
        ttl=None,
        version="v2",
        key_fn=(lambda *a: repr(a)) if user_key else None,
        code=function_fingerprint(_calls_helper),
    )
    for tenant, pipeline, task, value, params in calls:
        kept = cache_key(
            policy, tenant=tenant, pipeline=pipeline, task=task, args=(value,), params=params
        )
        assert kept == _key_from_scratch(policy, tenant, pipeline, task, (value,), params)


@given(st.lists(st.sampled_from(["acme", "globex", "initech"]), min_size=2, max_size=5))
def test_tenants_never_share(tenants: list[str]) -> None:
    import tempfile

    with (
        tempfile.TemporaryDirectory() as d,
        PipelineManager(store_cfg(Path(d)), entry_points=False) as pm,
    ):
        seen: set[str] = set()
        for t in tenants:
            r = pm.execute_pipeline(counted(CALLS), tenant_id=t)
            status = r.tasks["slow"].status
            # A hit only for a tenant that already ran it: never another tenant's entry.
            assert (status is Status.CACHED) == (t in seen), (t, seen, status)
            seen.add(t)


def test_tenant_isolation_with_identical_inputs_and_code(store_backend: Any) -> None:
    calls = CALLS
    calls.clear()
    p = Pipeline("shared-code")
    p.add_task("a", lambda: 1, tenant_id="acme", cache=True)
    p.add_task("b", lambda: 1, tenant_id="globex", cache=True)
    with store_backend.manager() as pm:
        pm.execute_pipeline(counted(calls), tenant_id="acme")
        r = pm.execute_pipeline(counted(calls), tenant_id="globex")
        assert r.tasks["slow"].status is Status.SUCCEEDED and calls == [3, 3]
        pm.execute_pipeline(p)
        r2 = pm.execute_pipeline(p)
        rows = cache_rows(pm, task="slow")
        table = pm.store.open_cache()  # type: ignore[union-attr]
        try:  # the table itself never serves an entry under another tenant
            for tenant, key, _ in rows:
                other = "globex" if tenant == "acme" else "acme"
                assert table.get(key, other, 0.0) is None and table.get(key, None, 0.0) is None
        finally:
            table.close()
    assert r2.cached == ["a", "b"]
    assert {t for t, _, _ in rows} == {"acme", "globex"} and len({k for _, k, _ in rows}) == 2


# --- encryption, audit, CLI --------------------------------------------------------------------


def test_entries_are_encrypted_and_audited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store_backend: Any
) -> None:
    audit = pytest.importorskip("xlib_pipeline_audit", reason="needs xlib-pipeline-audit")
    pytest.importorskip("xlib_pipeline_encryption", reason="needs xlib-pipeline-encryption")
    monkeypatch.setenv("XLIB_PIPELINE_KEYS_DIR", str(tmp_path / "keys"))
    cfg = store_cfg(
        tmp_path,
        audit={"path": str(tmp_path / "audit.jsonl")},
        security={"encryption_at_rest": True},
    )
    p = Pipeline("secret")
    p.add_task("s", lambda: "very-secret-value-123", cache=True)
    with PipelineManager({**cfg, "store": store_backend.section}) as pm:
        pm.execute_pipeline(p, tenant_id="acme")
        r = pm.execute_pipeline(p, tenant_id="acme")
        [(_, _, blob)] = cache_rows(pm)
    assert r.tasks["s"].status is Status.CACHED and r.final_result == "very-secret-value-123"
    assert b"very-secret-value-123" not in blob and blob.startswith(b"XLPENC")
    records = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    hit = [x for x in records if x["task"] == "s" and x["outcome"] == "cached"]
    assert len(hit) == 1 and len(hit[0]["cache_key"]) == 64
    assert audit.verify(tmp_path / "audit.jsonl").ok


def test_cli_list_and_clear(store_backend: Any) -> None:
    calls = CALLS
    with store_backend.manager() as pm:
        pm.execute_pipeline(counted(calls), tenant_id="acme")
    store = store_backend.target

    def cli(*args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "xlib_pipeline.cli", "cache", *args, "--store", store],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    listed = cli("list", "--pipeline", "cached")
    assert "slow" in listed and "acme" in listed and "1 entry" in listed
    assert "0 entries" in cli("list", "--task", "other")
    assert "cleared 0 cache entries" in cli("clear", "--older-than", "1d")
    assert "cleared 1 cache entry" in cli("clear", "--task", "slow")
    assert "0 entries" in cli("list")


# --- the four features together ---------------------------------------------------------------


def test_features_compose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store_backend: Any
) -> None:
    """A cached task with a contract and a fallback, under a resource budget, in a
    tenant-isolated, encrypted, audited run."""
    audit = pytest.importorskip("xlib_pipeline_audit", reason="needs xlib-pipeline-audit")
    pytest.importorskip("xlib_pipeline_encryption", reason="needs xlib-pipeline-encryption")
    pytest.importorskip("xlib_pipeline_tenancy", reason="needs xlib-pipeline-tenancy")
    monkeypatch.setenv("XLIB_PIPELINE_KEYS_DIR", str(tmp_path / "keys"))
    cfg = store_cfg(
        tmp_path,
        audit={"path": str(tmp_path / "audit.jsonl")},
        security={"encryption_at_rest": True},
        resources={"cpu": 2},
        max_workers=4,
    )
    calls = CALLS
    calls.clear()

    def build(fail_model: bool) -> Pipeline:
        p = Pipeline("composed")

        @p.task("load", resources={"cpu": 1})
        def load() -> list[int]:
            return [1, 2, 3]

        @p.task(
            "model",
            depends_on=["load"],
            cache=True,
            contract=lambda v: isinstance(v, float),
            fallback=FallbackValue(0.0),
            resources={"cpu": 2},
        )
        def model(rows: list[int]) -> Any:
            CALLS.append("model")
            return "broken" if fail_model else float(sum(rows))

        @p.task("side", depends_on=["load"], resources={"cpu": 1})
        def side(rows: list[int]) -> int:
            return len(rows)

        @p.task("report", depends_on=["model", "side"])
        def report(m: float, s: int) -> str:
            return f"{m}/{s}"

        return p

    with PipelineManager({**cfg, "store": store_backend.section}) as pm:
        r1 = pm.execute_pipeline(build(False), tenant_id="acme")
        r2 = pm.execute_pipeline(build(False), tenant_id="acme")
        r3 = pm.execute_pipeline(build(False), tenant_id="globex")
        r4 = pm.execute_pipeline(build(True), tenant_id="acme", refresh=True)
        blobs = [b for _, _, b in cache_rows(pm)]
    assert (r1.final_result, r2.final_result, r3.final_result) == ("6.0/3",) * 3
    assert r2.tasks["model"].status is Status.CACHED  # same tenant: a hit
    assert r3.tasks["model"].status is Status.SUCCEEDED  # other tenant: never shared
    assert r4.tasks["model"].status is Status.FALLBACK and r4.final_result == "0.0/3"
    assert calls == ["model", "model", "model"]
    for r in (r1, r2, r3, r4):  # the budget: model (2 cpus) never beside load or side
        m, s = r.tasks["model"], r.tasks["side"]
        if m.status is not Status.CACHED:
            assert m.started >= s.finished or s.started >= m.finished
    assert blobs and all(b.startswith(b"XLPENC") for b in blobs)
    assert audit.verify(tmp_path / "audit.jsonl").ok
    outcomes = {
        json.loads(x)["outcome"]
        for x in (tmp_path / "audit.jsonl").read_text().splitlines()
        if json.loads(x).get("task") == "model"
    }
    assert {"succeeded", "cached", "fallback"} <= outcomes
