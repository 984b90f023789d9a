"""The :class:`RetryPolicy` record and the conversions from task options and config values.

Semantics, in one place:

* ``max_attempts`` counts calls of the task function, the first one included:
  ``max_attempts=3`` means up to 2 retries. The task option ``retries=N`` means *N retries*,
  i.e. ``max_attempts = N + 1``.
* After failed attempt ``n`` (1-based) the retry waits ``delay`` seconds, drawn with *full
  jitter* from ``[0, window(n)]`` where ``window(n) = min(max_delay, initial_delay *
  multiplier ** (n - 1))``. With ``jitter=False`` the delay is ``window(n)`` itself.
  The exponential arithmetic (including overflow and the ``max_delay`` cap) is tenacity's
  :class:`tenacity.wait_exponential`; the jitter is drawn from an injectable random source.
* An error is retried when it is an instance of one of ``retry_on`` and of none of
  ``never_retry_on`` (``never_retry_on`` always wins).
"""

from __future__ import annotations

import importlib
import math
import random
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import attrs

if TYPE_CHECKING:  # pragma: no cover
    import tenacity

from xlib_pipeline import (
    ComplianceError,
    ResourceLimitExceeded,
    SecurityError,
    SerializationError,
)


class RandomSource(Protocol):
    """What a policy needs from a random generator (``random.Random`` fits)."""

    def uniform(self, a: float, b: float) -> float: ...


#: Errors never retried unless a policy says otherwise: refusals, broken limits and values
#: that cannot travel to or from a worker are deterministic, so retrying them only repeats
#: the failure (and, for a function a Dask worker cannot load, delays the run's end).
DEFAULT_NEVER_RETRY_ON: tuple[type[BaseException], ...] = (
    SecurityError,
    ComplianceError,
    ResourceLimitExceeded,
    SerializationError,
)

_POLICY_FIELDS = (
    "max_attempts",
    "initial_delay",
    "multiplier",
    "max_delay",
    "jitter",
    "retry_on",
    "never_retry_on",
)


def _exception_type(value: Any) -> type[BaseException]:
    """An exception class, or a name of one: ``"ConnectionError"``, ``"pkg.mod.Error"``."""
    if isinstance(value, type) and issubclass(value, BaseException):
        return value
    if isinstance(value, str) and value:
        module, _, name = value.rpartition(".")
        try:
            obj = getattr(importlib.import_module(module or "builtins"), name)
        except (ImportError, AttributeError, ValueError):
            raise ValueError(f"cannot find an exception class named {value!r}") from None
        if isinstance(obj, type) and issubclass(obj, BaseException):
            return obj
        raise ValueError(f"{value!r} names {type(obj).__name__}, not an exception class")
    raise TypeError(f"expected an exception class or its dotted name, got {value!r}")


def _exception_types(value: Any) -> tuple[type[BaseException], ...]:
    if value is None:
        return ()
    if isinstance(value, type | str):
        return (_exception_type(value),)
    if not isinstance(value, Iterable):
        raise TypeError(f"expected exception classes, got {value!r}")
    return tuple(_exception_type(v) for v in value)


def _check_max_attempts(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.name} must be an integer >= 1, got {value!r}")


def _check_seconds(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or math.isnan(value)
        or value < 0
    ):
        raise ValueError(f"{attribute.name} must be a number of seconds >= 0, got {value!r}")
    if math.isinf(value):
        raise ValueError(f"{attribute.name} must be finite, got {value!r}")


def _check_multiplier(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 1
    ):
        raise ValueError(f"{attribute.name} must be a finite number >= 1, got {value!r}")


def _check_jitter(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{attribute.name} must be true or false, got {value!r}")


def _check_rng(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not callable(getattr(value, "uniform", None)):
        raise TypeError(f"{attribute.name} must have a uniform(a, b) method, got {value!r}")


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How a task is retried: attempts, backoff and which errors qualify.

    ``max_attempts`` counts the first call (3 = up to 2 retries). Backoff before retry ``n``
    is drawn uniformly from ``[0, min(max_delay, initial_delay * multiplier ** (n - 1))]``
    ("full jitter"); ``jitter=False`` waits the upper bound exactly. ``retry_on`` and
    ``never_retry_on`` hold exception classes (``never_retry_on`` wins). ``rng`` supplies
    the randomness (``random.Random(seed)`` for reproducible delays); ``None`` uses the
    plugin's generator.
    """

    max_attempts: int = attrs.field(default=3, validator=_check_max_attempts)
    initial_delay: float = attrs.field(default=0.5, validator=_check_seconds)
    multiplier: float = attrs.field(default=2.0, validator=_check_multiplier)
    max_delay: float = attrs.field(default=30.0, validator=_check_seconds)
    jitter: bool = attrs.field(default=True, validator=_check_jitter)
    retry_on: tuple[type[BaseException], ...] = attrs.field(
        default=(Exception,), converter=_exception_types
    )
    never_retry_on: tuple[type[BaseException], ...] = attrs.field(
        default=DEFAULT_NEVER_RETRY_ON, converter=_exception_types
    )
    rng: RandomSource | None = attrs.field(default=None, validator=_check_rng, eq=False, repr=False)
    # tenacity (which imports tornado when installed) is imported on first use.
    _wait: tenacity.wait_exponential = attrs.field(init=False, eq=False, repr=False)

    @_wait.default
    def _make_wait(self) -> tenacity.wait_exponential:
        import tenacity

        return tenacity.wait_exponential(
            multiplier=self.initial_delay,
            exp_base=self.multiplier,
            max=self.max_delay,
            min=0,
        )

    @property
    def retries(self) -> int:
        """How many retries follow the first attempt (``max_attempts - 1``)."""
        return self.max_attempts - 1

    def should_retry(self, error: BaseException) -> bool:
        """Whether ``error`` qualifies for a retry (ignoring how many attempts were made)."""
        return isinstance(error, self.retry_on) and not isinstance(error, self.never_retry_on)

    def window(self, attempt: int) -> float:
        """The upper bound of the wait after failed attempt ``attempt`` (1-based)."""
        if attempt < 1:
            raise ValueError(f"attempt numbers start at 1, got {attempt}")
        import tenacity

        state = tenacity.RetryCallState(
            retry_object=tenacity.Retrying(), fn=None, args=(), kwargs={}
        )
        state.attempt_number = attempt
        return float(self._wait(state))

    def delay(self, attempt: int, rng: RandomSource | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` before the next one.

        Draws from ``self.rng``, else ``rng``, else the module-level :mod:`random`.
        """
        return self.jittered(self.window(attempt), rng)

    def jittered(self, high: float, rng: RandomSource | None = None) -> float:
        """A wait drawn for the window ``[0, high]`` (``high`` itself without jitter)."""
        if not self.jitter or high <= 0:
            return high
        source = self.rng or rng or random
        value = float(source.uniform(0.0, high))
        return min(max(value, 0.0), high)

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary for log events (exception classes by qualified name)."""
        return {
            "max_attempts": self.max_attempts,
            "initial_delay": self.initial_delay,
            "multiplier": self.multiplier,
            "max_delay": self.max_delay,
            "jitter": self.jitter,
            "retry_on": [_qualname(t) for t in self.retry_on],
            "never_retry_on": [_qualname(t) for t in self.never_retry_on],
        }


def _qualname(t: type) -> str:
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def policy_from(value: Any, base: RetryPolicy | None = None) -> RetryPolicy | None:
    """Convert a task option or config value to a policy.

    * ``None``: no opinion (``None`` is returned);
    * an ``int`` ``N >= 0``: ``N`` retries, i.e. ``base`` (or the defaults) with
      ``max_attempts = N + 1``;
    * a :class:`RetryPolicy`: itself;
    * a mapping of :class:`RetryPolicy` fields (``retries`` may stand for ``max_attempts - 1``):
      ``base`` (or the defaults) with those fields replaced.

    Raises ``ValueError``/``TypeError`` saying what was expected.
    """
    if value is None:
        return None
    if isinstance(value, RetryPolicy):
        return value
    start = base if base is not None else RetryPolicy()
    if isinstance(value, bool):
        raise TypeError(f"expected a number of retries, a RetryPolicy or a mapping, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"the number of retries must be >= 0, got {value!r}")
        return attrs.evolve(start, max_attempts=value + 1)
    if isinstance(value, Mapping):
        fields = dict(value)
        if "retries" in fields:
            if "max_attempts" in fields:
                raise ValueError("give either 'retries' or 'max_attempts', not both")
            n = fields.pop("retries")
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ValueError(f"'retries' must be an integer >= 0, got {n!r}")
            fields["max_attempts"] = n + 1
        unknown = sorted(set(fields) - set(_POLICY_FIELDS) - {"rng"})
        if unknown:
            raise ValueError(
                f"unknown retry policy field(s) {unknown}; expected some of "
                f"{['retries', *_POLICY_FIELDS]}"
            )
        return attrs.evolve(start, **fields)
    raise TypeError(
        f"expected a number of retries (int >= 0), a RetryPolicy or a mapping of its fields, "
        f"got {type(value).__name__} {value!r}"
    )


def option_value(value: Any) -> Any:
    """Validate the ``retries=`` task option (the core wraps errors in DefinitionError)."""
    policy_from(value)
    return value


def config_section(value: Any) -> RetryPolicy | None:
    """Validate the ``retries`` config section: ``{"default": <policy>}``."""
    if not isinstance(value, Mapping):
        raise TypeError(
            f"expected a mapping like {{'default': {{'max_attempts': 3}}}}, got {value!r}"
        )
    unknown = sorted(set(value) - {"default"})
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in the retries section; expected 'default'")
    return policy_from(value.get("default"))
