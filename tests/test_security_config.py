"""Issue 18, defect 4: every numeric key is finite and range-checked, every boolean is a real
bool, and any violation is a ConfigError naming the key (never a hang or another error)."""

from __future__ import annotations

import math
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xlib_pipeline import ConfigError, DefinitionError, Pipeline, PipelineManager
from xlib_pipeline._store import RunStore


def _finishes(fn: Any, seconds: float = 60.0) -> Any:
    """Run ``fn`` on a thread; fail the test (instead of hanging) if it does not return."""
    box: list[Any] = []

    def target() -> None:
        try:
            box.append(("ok", fn()))
        except BaseException as exc:
            box.append(("err", exc))

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert box, f"{fn} did not return within {seconds}s (hang)"
    kind, value = box[0]
    if kind == "err":
        raise value
    return value


# --- the reproductions -------------------------------------------------------------------------


@pytest.mark.parametrize("batch_ms", [math.inf, 1e16, -1.0, math.nan])
def test_store_batch_ms_out_of_range_is_refused(tmp_path, batch_ms):
    """inf and 1e16 used to kill the writer thread (OverflowError) and hang the run."""
    config = {"store": {"path": str(tmp_path / "s.sqlite"), "batch_ms": batch_ms}}
    with pytest.raises(ConfigError, match=r"'store'.*batch_ms") as info:
        PipelineManager(config, entry_points=False)
    assert info.value.key == "store"


def test_store_batch_size_zero_and_string_booleans_are_refused(tmp_path):
    path = str(tmp_path / "s.sqlite")
    with pytest.raises(ConfigError, match="batch_size"):
        PipelineManager({"store": {"path": path, "batch_size": 0}}, entry_points=False)
    with pytest.raises(ConfigError, match=r"record_outputs.*true or false"):
        PipelineManager({"store": {"path": path, "record_outputs": "false"}}, entry_points=False)


def test_runstore_itself_refuses_non_finite_timeouts(tmp_path):
    with pytest.raises(ValueError, match="busy_timeout_ms"):
        RunStore(tmp_path / "s.sqlite", busy_timeout_ms=math.inf)  # type: ignore[arg-type]


def test_cancel_grace_seconds_must_be_a_real_number():
    for bad in ("10", math.inf, math.nan, -1, True, 1e300):
        with pytest.raises(ConfigError, match="cancel_grace_seconds") as info:
            PipelineManager({"cancel_grace_seconds": bad}, entry_points=False)
        assert info.value.key == "cancel_grace_seconds"
    assert PipelineManager({"cancel_grace_seconds": 0}, entry_points=False)


@pytest.mark.parametrize("timeout", [math.inf, math.nan, -1, 0, 1e300, "5"])
def test_task_timeout_must_be_finite(timeout):
    """timeout=inf or nan used to fail the task while its body kept running."""
    p = Pipeline("t")
    with pytest.raises((DefinitionError, ConfigError), match=r"task 't'.*timeout"):
        p.add_task("t", lambda: 1, timeout=timeout)
        PipelineManager(entry_points=False).validate_pipeline(p)


def test_the_largest_busy_timeout_never_hangs_a_run(tmp_path):
    """The largest accepted busy timeout still ends an uncontended run at once."""
    config = {"store": {"path": str(tmp_path / "s.sqlite"), "busy_timeout_ms": 86_400_000}}
    with PipelineManager(config, entry_points=False) as pm:
        p = Pipeline("quick")
        p.add_task("a", lambda: 1)
        result = _finishes(lambda: pm.execute_pipeline(p))
        assert result.success


# --- the property --------------------------------------------------------------------------------

#: Every numeric or boolean setting, top-level or inside a section (path inside the config).
NUMERIC_OR_BOOLEAN = [
    ("max_workers",),
    ("dependency_optimization",),
    ("parallel_execution",),
    ("cancel_grace_seconds",),
    ("store", "busy_timeout_ms"),
    ("store", "record_outputs"),
    ("plugins", "entry_points"),
    ("multi_tenant",),
    ("resource_isolation",),
    ("tenancy", "max_concurrent_tasks"),
    ("tenancy", "max_concurrent_runs"),
    ("tenancy", "fair_share"),
    ("tenancy", "default_limits", "cpu_cores"),
    ("tenancy", "default_limits", "memory_gb"),
    ("tenancy", "default_limits", "memory_mb"),
    ("tenancy", "default_limits", "memory_bytes"),
    ("tenancy", "default_limits", "wall_seconds"),
    ("tenancy", "tenants", "acme", "max_concurrent_tasks"),
    ("tenancy", "tenants", "acme", "max_concurrent_runs"),
    ("tenancy", "tenants", "acme", "resource_limits", "cpu_cores"),
    ("tenancy", "tenants", "acme", "resource_limits", "memory_gb"),
    ("security", "encryption_at_rest"),
    ("security", "encryption_in_transit"),
    ("encryption", "per_run_keys"),
    ("encryption", "allow_plaintext_reads"),
    ("audit", "batch_size"),
    ("audit", "batch_interval_ms"),
    ("audit", "digests"),
    ("audit", "multiprocess"),
    ("audit", "write_through"),
    ("audit_logging",),
    ("audit_everything",),
    ("classification", "enabled"),
    ("classification", "detect_pii"),
    ("classification", "scan_limit_bytes"),
    ("security_scanning",),
    ("lineage", "enabled"),
    ("lineage", "include_stack_trace"),
    ("data_lineage",),
    ("distributed_mode",),
    ("distributed", "n_workers"),
    ("distributed", "threads_per_worker"),
    ("distributed", "lanes"),
    ("distributed", "startup_timeout"),
    ("distributed", "death_timeout"),
    ("distributed", "dashboard"),
    ("kubernetes", "replicas"),
    ("kubernetes", "nthreads"),
    ("kubernetes", "port"),
    ("kubernetes", "service_port"),
    ("kubernetes", "run_as_user"),
    ("kubernetes", "auto_scaling"),
    ("kubernetes", "termination_grace_seconds"),
    ("retries", "default"),
    ("retries", "default", "max_retries"),
    ("retries", "default", "backoff"),
]

values = st.one_of(
    st.booleans(),
    st.none(),
    st.integers(-5, 5),
    st.integers(),
    st.integers(min_value=2**60, max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.inf, -math.inf, math.nan, 1e16, 1e300, -0.0, 0.5]),
    st.sampled_from(["10", "false", "true", "", "inf", "nan", "1e16"]),
    st.lists(st.integers(), max_size=2),
)


def _nest(path: tuple[str, ...], value: Any, tmp: str) -> dict[str, Any]:
    node: Any = value
    for part in reversed(path):
        node = {part: node}
    if path[0] == "store":
        node["store"]["path"] = tmp + "/s.sqlite"
    if path[0] == "audit":
        node["audit"]["path"] = tmp + "/audit.jsonl"
    if path[0] == "lineage":
        node["lineage"]["transport"] = {"type": "file", "path": tmp + "/lineage.jsonl"}
    return node


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(NUMERIC_OR_BOOLEAN), values)
def test_random_numeric_and_boolean_values_give_a_config_or_a_config_error(
    tmp_path_factory, path, value
):
    tmp = str(tmp_path_factory.mktemp("cfg"))
    config = _nest(path, value, tmp)

    def build() -> str:
        try:
            pm = PipelineManager(config)
        except ConfigError as exc:
            named = exc.key or ""
            assert named.split(".")[0] == path[0] or path[-1] in str(exc), (
                f"ConfigError does not name the key {path} for {config!r}: {exc}"
            )
            return "error"
        try:
            if path[0] == "store":  # the writer thread must survive what was accepted
                p = Pipeline("probe")
                p.add_task("a", lambda: 1)
                assert pm.execute_pipeline(p, monitor=False).status in ("succeeded", "failed")
        finally:
            pm.close()
        return "ok"

    _finishes(build)
