"""Did-you-mean suggestions for error messages (config keys, hooks, tasks, commands).

A module of its own so that what only needs a suggestion (config validation, plugin
registration, the CLI parser) does not import the graph compiler.
"""

from __future__ import annotations

from collections.abc import Iterable


def suggest(name: str, candidates: Iterable[str]) -> str | None:
    """Return the closest candidate to ``name`` (for did-you-mean messages), or ``None``."""
    import difflib  # only on the error path

    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None
