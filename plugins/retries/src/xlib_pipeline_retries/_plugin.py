"""The ``retries`` plugin: answers the core's ``on_task_error`` hook from retry policies.

The core owns the retry loop (``xlib_pipeline._scheduler.Run._run``): when an attempt
raises, it asks ``on_task_error``; on a :class:`~xlib_pipeline.RetryDecision` it reports the
attempt to ``after_task`` with ``outcome.final=False``, logs ``task.retry_scheduled``,
waits with ``run.sleep(delay)`` and calls the function again. This plugin only decides.

Inert unless configured: a task without ``retries=`` in a manager without a ``retries``
config section is never retried, and the plugin adds no work to tasks that succeed.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from xlib_pipeline import (
    ConfigKey,
    RetryDecision,
    RunContext,
    Task,
    TaskOption,
    TaskOutcome,
    hookimpl,
)

if TYPE_CHECKING:  # pragma: no cover
    from ._policy import RandomSource, RetryPolicy


# The entry point loads this module on every PipelineManager(): the policy module (attrs
# classes) is imported when a ``retries`` key or option is given.
def _config_section(value: Any) -> RetryPolicy | None:
    from ._policy import config_section

    return config_section(value)


def _option_value(value: Any) -> Any:
    from ._policy import option_value

    return option_value(value)


# The core routes its structlog events to this stdlib logger; skip building events it drops.
_LOGGER = logging.getLogger("xlib_pipeline")


class RetriesPlugin:
    """Retry failed task attempts by policy.

    ``rng`` is the random source for jitter when a policy has none of its own (pass
    ``random.Random(seed)`` for reproducible delays); by default each plugin instance gets
    its own ``random.Random()``.
    """

    name = "retries"

    def __init__(self, *, rng: RandomSource | None = None) -> None:
        self.rng: RandomSource = rng if rng is not None else random.Random()
        self.default: RetryPolicy | None = None
        # id(option value) -> (value, policy): converting a mapping builds and validates a
        # policy (~30 µs); a task's option value is converted once per manager.
        self._cache: dict[int, tuple[Any, RetryPolicy | None]] = {}

    # -- registration -------------------------------------------------------------------------

    @hookimpl
    def register_config_keys(self) -> Iterable[ConfigKey]:
        return (
            ConfigKey(
                name="retries",
                convert=_config_section,
                doc="{'default': policy}: the retry policy of tasks without a retries= option "
                "(an int of retries, or a mapping of RetryPolicy fields). Unset: no retries.",
            ),
        )

    @hookimpl
    def register_task_options(self) -> Iterable[TaskOption]:
        return (
            TaskOption(
                name="retries",
                convert=_option_value,
                doc="retries=N (N retries, N+1 attempts), a RetryPolicy, or a mapping of its "
                "fields; overrides the config default. retries=0 disables retries.",
            ),
        )

    @hookimpl
    def configure(self, manager: Any, config: Any) -> None:
        self.default = config.get("retries")
        self._cache.clear()

    # -- deciding -------------------------------------------------------------------------------

    def policy_for(self, task: Task) -> RetryPolicy | None:
        """The policy that applies to ``task``: its ``retries=`` option over the config default."""
        value = task.options.get("retries")
        if value is None:
            return self.default
        from ._policy import RetryPolicy, policy_from

        if isinstance(value, RetryPolicy):
            return value
        hit = self._cache.get(id(value))
        if hit is not None and hit[0] is value:
            return hit[1]
        policy = policy_from(value, self.default)
        if len(self._cache) >= 4096:
            self._cache.clear()
        self._cache[id(value)] = (value, policy)  # keeps value alive, so its id stays unique
        return policy

    @hookimpl
    def on_task_error(
        self, task: Task, run: RunContext, outcome: TaskOutcome
    ) -> RetryDecision | None:
        """Retry when the task's policy covers the error and attempts remain.

        Answers ``None`` (no opinion) for tasks without a policy and for errors outside
        ``retry_on``; vetoes (``retry=False``) errors in ``never_retry_on`` and attempts past
        ``max_attempts``, so no other plugin can stretch a task beyond its policy.
        """
        if self.default is None and "retries" not in task.options:
            return None  # inert: nothing configured for this task
        policy = self.policy_for(task)
        error = outcome.error
        if policy is None or error is None:
            return None
        attempt = outcome.attempt
        log = run.log if _LOGGER.isEnabledFor(logging.INFO) else None
        if isinstance(error, policy.never_retry_on):
            if log is not None:
                log.info(
                    "retries.not_retried",
                    task=task.name,
                    attempt=attempt,
                    error=type(error).__name__,
                    reason="never_retry_on",
                )
            return RetryDecision(retry=False, reason=f"{type(error).__name__} is never retried")
        if not isinstance(error, policy.retry_on):
            if log is not None:
                log.info(
                    "retries.not_retried",
                    task=task.name,
                    attempt=attempt,
                    error=type(error).__name__,
                    reason="not in retry_on",
                )
            return None
        if attempt >= policy.max_attempts:
            if log is not None:
                log.info(
                    "retries.exhausted",
                    task=task.name,
                    attempts=attempt,
                    max_attempts=policy.max_attempts,
                    error=type(error).__name__,
                )
            return RetryDecision(
                retry=False, reason=f"{attempt} of {policy.max_attempts} attempts used"
            )
        window = policy.window(attempt)
        delay = policy.jittered(window, self.rng)
        if log is not None:
            log.info(
                "retries.retry_scheduled",
                task=task.name,
                attempt=attempt,
                next_attempt=attempt + 1,
                max_attempts=policy.max_attempts,
                delay=round(delay, 6),
                window=round(window, 6),
                error=type(error).__name__,
                policy=policy.describe(),
            )
        return RetryDecision(
            retry=True,
            delay=delay,
            reason=f"attempt {attempt + 1} of {policy.max_attempts} after {type(error).__name__}",
            max_attempts=policy.max_attempts,
        )
