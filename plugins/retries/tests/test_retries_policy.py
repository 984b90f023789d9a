"""Unit tests of RetryPolicy, its conversions and the installed plugin's discovery."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xlib_pipeline_retries import DEFAULT_NEVER_RETRY_ON, RetriesPlugin, RetryPolicy, policy_from

from xlib_pipeline import PipelineManager


class TestRetryPolicy:
    def test_defaults(self) -> None:
        """The default policy makes 3 attempts, retries any Exception but refusals."""
        p = RetryPolicy()
        assert p.max_attempts == 3
        assert p.retries == 2
        assert p.retry_on == (Exception,)
        assert p.never_retry_on == DEFAULT_NEVER_RETRY_ON

    def test_windows_grow_geometrically_up_to_max_delay(self) -> None:
        """window(n) = min(max_delay, initial_delay * multiplier**(n-1))."""
        p = RetryPolicy(initial_delay=0.5, multiplier=2, max_delay=3)
        assert [p.window(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]

    def test_huge_attempt_numbers_do_not_overflow(self) -> None:
        """A very late attempt is capped at max_delay instead of overflowing."""
        assert RetryPolicy(max_delay=60).window(10_000) == 60

    def test_constant_backoff_with_multiplier_one(self) -> None:
        """multiplier=1 keeps every window at initial_delay."""
        p = RetryPolicy(initial_delay=0.2, multiplier=1)
        assert {p.window(n) for n in range(1, 10)} == {0.2}

    def test_attempt_numbers_start_at_one(self) -> None:
        """window(0) is a mistake."""
        with pytest.raises(ValueError, match="start at 1"):
            RetryPolicy().window(0)

    def test_should_retry(self) -> None:
        """never_retry_on wins over retry_on; subclasses match."""
        p = RetryPolicy(retry_on=(OSError,), never_retry_on=(PermissionError,))
        assert p.should_retry(ConnectionResetError())
        assert not p.should_retry(PermissionError())
        assert not p.should_retry(ValueError())

    def test_exception_names_resolve(self) -> None:
        """Exception classes may be named: builtins bare, others dotted."""
        p = RetryPolicy(retry_on=["ConnectionError", "xlib_pipeline.TaskTimeoutError"])
        from xlib_pipeline import TaskTimeoutError

        assert p.retry_on == (ConnectionError, TaskTimeoutError)

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("max_attempts", 0),
            ("max_attempts", 1.5),
            ("initial_delay", -1),
            ("initial_delay", math.inf),
            ("multiplier", 0.9),
            ("max_delay", math.nan),
            ("max_delay", math.inf),
            ("jitter", 1),
            ("retry_on", ["not.a.module.Error"]),
            ("retry_on", [str]),
            ("rng", object()),
        ],
    )
    def test_invalid_fields_are_refused(self, field: str, value: object) -> None:
        """Each field is validated, and the message names it."""
        with pytest.raises((ValueError, TypeError)) as info:
            RetryPolicy(**{field: value})
        assert field in str(info.value) or "exception" in str(info.value)

    def test_describe_is_json_friendly(self) -> None:
        """describe() names exception classes instead of holding them."""
        d = RetryPolicy(retry_on=(ConnectionError,)).describe()
        assert d["retry_on"] == ["ConnectionError"]
        assert d["never_retry_on"][0] == "xlib_pipeline.exceptions.SecurityError"

    @settings(max_examples=60, deadline=None)
    @given(
        initial=st.floats(0, 100, allow_nan=False),
        mult=st.floats(1, 10, allow_nan=False),
        cap=st.floats(0, 1000, allow_nan=False),
        attempt=st.integers(1, 200),
        seed=st.integers(0, 2**32),
    )
    def test_full_jitter_stays_in_its_window(
        self, initial: float, mult: float, cap: float, attempt: int, seed: int
    ) -> None:
        """Any delay lies in [0, min(max_delay, initial * mult**(attempt-1))]."""
        p = RetryPolicy(initial_delay=initial, multiplier=mult, max_delay=cap)
        d = p.delay(attempt, random.Random(seed))
        try:
            bound = min(cap, initial * mult ** (attempt - 1))
        except OverflowError:
            bound = cap
        assert 0.0 <= d <= p.max_delay
        assert d <= bound * (1 + 1e-9) + 1e-12


class TestPolicyFrom:
    def test_int_means_retries(self) -> None:
        """retries=N gives N + 1 attempts."""
        assert policy_from(2).max_attempts == 3
        assert policy_from(0).max_attempts == 1

    def test_int_keeps_the_base(self) -> None:
        """An int over a base policy changes only the attempts."""
        base = RetryPolicy(initial_delay=9, retry_on=(KeyError,))
        p = policy_from(4, base)
        assert (p.max_attempts, p.initial_delay, p.retry_on) == (5, 9, (KeyError,))

    def test_mapping_overrides_the_base(self) -> None:
        """A mapping replaces just the fields it names."""
        base = RetryPolicy(initial_delay=9)
        p = policy_from({"max_delay": 1}, base)
        assert (p.initial_delay, p.max_delay) == (9, 1)

    def test_policy_is_itself(self) -> None:
        """A RetryPolicy is used as is, whatever the base."""
        own = RetryPolicy(max_attempts=7)
        assert policy_from(own, RetryPolicy(max_attempts=2)) is own

    def test_none_is_no_opinion(self) -> None:
        """None converts to None."""
        assert policy_from(None) is None


class TestDiscovery:
    def test_installed_plugin_is_listed(self) -> None:
        """The entry point loads the plugin with its hooks into a plain manager."""
        pm = PipelineManager()
        info = {i.name: i for i in pm.plugins}
        assert "retries" in info
        assert info["retries"].dist == "xlib-pipeline-retries"
        assert "on_task_error" in info["retries"].hooks
        assert isinstance(pm.get_plugin("retries"), RetriesPlugin)

    def test_plain_manager_has_no_default(self) -> None:
        """Without a retries section the plugin has no default policy (inert)."""
        assert PipelineManager().get_plugin("retries").default is None
