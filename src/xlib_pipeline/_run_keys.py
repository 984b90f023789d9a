"""The stash keys through which a run tells plugins what the core did for a task (served
from the result cache, replaced by a fallback). Plugins import them at load time, so this
module imports only the records."""

from __future__ import annotations

import attrs

from ._records import StashKey


@attrs.frozen(kw_only=True)
class FallbackUsed:
    """A task whose fallback supplied its output (see :data:`FALLBACKS`)."""

    #: ``value``, ``callable:<qualname>`` or ``task:<name>``.
    source: str
    #: The class name of the failure the fallback replaced.
    error_class: str


#: Tasks of this run served from the result cache: task name -> the entry's key (a SHA-256
#: hex digest); filled before ``after_task`` sees the ``cached`` outcome.
CACHE_HITS: StashKey[dict[str, str]] = StashKey("cache_hits")

#: Tasks of this run that ended ``fallback``, by name; filled before ``after_task`` sees
#: the outcome, so the audit trail and lineage can say what stood in.
FALLBACKS: StashKey[dict[str, FallbackUsed]] = StashKey("fallbacks")
