"""Retry policies for xlib-pipeline tasks.

>>> from xlib_pipeline_retries import RetryPolicy
>>> RetryPolicy(max_attempts=4, initial_delay=0.1, jitter=False).delay(3)
0.4
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xlib_pipeline import lazy_exports

if TYPE_CHECKING:  # pragma: no cover
    from ._plugin import RetriesPlugin
    from ._policy import DEFAULT_NEVER_RETRY_ON, RandomSource, RetryPolicy, policy_from

_LAZY = {
    "RetriesPlugin": "._plugin",
    "DEFAULT_NEVER_RETRY_ON": "._policy",
    "RandomSource": "._policy",
    "RetryPolicy": "._policy",
    "policy_from": "._policy",
}

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_NEVER_RETRY_ON",
    "RandomSource",
    "RetriesPlugin",
    "RetryPolicy",
    "__version__",
    "policy_from",
]


# Entry points load this package on every PipelineManager(): its submodules (and their
# dependencies) are imported when a name is first used, not before.
if not TYPE_CHECKING:  # mypy sees the names above, and flags a misspelt one
    __getattr__, __dir__ = lazy_exports(__name__, _LAZY)
