"""Retry policies for xlib-pipeline tasks.

>>> from xlib_pipeline_retries import RetryPolicy
>>> RetryPolicy(max_attempts=4, initial_delay=0.1, jitter=False).delay(3)
0.4
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    # Entry points load this package on every PipelineManager(): its submodules (and
    # their dependencies) are imported when a name is first used, not before.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
