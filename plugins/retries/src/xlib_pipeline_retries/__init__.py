"""Retry policies for xlib-pipeline tasks.

>>> from xlib_pipeline_retries import RetryPolicy
>>> RetryPolicy(max_attempts=4, initial_delay=0.1, jitter=False).delay(3)
0.4
"""

from __future__ import annotations

from ._plugin import RetriesPlugin
from ._policy import DEFAULT_NEVER_RETRY_ON, RandomSource, RetryPolicy, policy_from

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_NEVER_RETRY_ON",
    "RandomSource",
    "RetriesPlugin",
    "RetryPolicy",
    "__version__",
    "policy_from",
]
