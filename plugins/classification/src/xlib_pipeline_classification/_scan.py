"""Bounded gathering of the text in a task output, for the detectors."""

from __future__ import annotations

from typing import Any

#: Deepest nesting walked; deeper values are not scanned.
MAX_DEPTH = 32


def gather_text(value: Any, limit: int) -> str:
    """Join the strings (and integers of 9+ digits) found in ``value`` into one text.

    Walks dicts (keys and values), lists, tuples, sets and frozensets, at most
    :data:`MAX_DEPTH` deep, and stops once ``limit`` characters were gathered. Other objects
    are not looked into. Cheap for small outputs: one pass, no copies of large strings
    beyond ``limit``.
    """
    if isinstance(value, str):
        return value[:limit]
    if not isinstance(value, dict | list | tuple | set | frozenset | int) or isinstance(
        value, bool
    ):
        return ""
    parts: list[str] = []
    size = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    pop = stack.pop
    push = stack.append
    while stack:
        v, depth = pop()
        if isinstance(v, str):
            if len(v) > 2:
                if size + len(v) > limit:
                    parts.append(v[: limit - size])
                    break
                parts.append(v)
                size += len(v) + 1
        elif isinstance(v, dict):
            if depth < MAX_DEPTH:
                for k, x in v.items():
                    push((x, depth + 1))
                    if isinstance(k, str):
                        push((k, depth + 1))
        elif isinstance(v, list | tuple | set | frozenset):
            if depth < MAX_DEPTH:
                for x in v:
                    push((x, depth + 1))
        elif isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 100_000_000:
            s = str(v)
            parts.append(s)
            size += len(s) + 1
        if size >= limit:
            break
    return "\n".join(parts)
