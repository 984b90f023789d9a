"""Bounded gathering of the text in a task output, for the detectors."""

from __future__ import annotations

from typing import Any

#: Deepest nesting walked; deeper values are not scanned.
MAX_DEPTH = 32

_WALKED = (dict, list, tuple, set, frozenset)


def gather_text(value: Any, limit: int) -> str:
    """Join the distinct strings (and integers of 9+ digits) found in ``value`` into one text.

    Walks dicts (keys and values), lists, tuples, sets and frozensets, at most
    :data:`MAX_DEPTH` deep, and stops once ``limit`` characters were gathered. Other objects
    are not looked into. A string met again (the same key in every record of a batch) is
    gathered once: a detector answers whether its kind of data is present, and a repeat
    adds only scanning time. Each repeat still counts one character against ``limit``, so
    the walk stays bounded by ``limit`` whatever the output holds. Cheap for small outputs:
    one pass, no copies of large strings beyond ``limit``.
    """
    if isinstance(value, str):
        return value[:limit]
    if isinstance(value, bool) or not isinstance(value, _WALKED):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 100_000_000:
            return str(value)
        return ""
    parts: list[str] = []
    seen: set[str] = set()
    size = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        depth += 1  # the depth of v's members
        if isinstance(v, dict):
            # Keys first (strings only: other keys are not scanned), then the values.
            keys = [k for k in v if k not in seen and isinstance(k, str) and len(k) > 2]
            size += len(v) - len(keys)  # a repeat (or a short key) counts one character
            leaves: Any = keys + list(v.values()) if keys else v.values()
        else:
            leaves = v
        for leaf in leaves:
            if type(leaf) is str or isinstance(leaf, str):
                if len(leaf) <= 2:
                    continue
                if leaf in seen:
                    size += 1
                else:
                    seen.add(leaf)
                    if size + len(leaf) > limit:
                        parts.append(leaf[: max(limit - size, 0)])
                        size = limit
                        break
                    parts.append(leaf)
                    size += len(leaf) + 1
            elif isinstance(leaf, _WALKED):
                if depth < MAX_DEPTH:
                    stack.append((leaf, depth))
                continue
            elif isinstance(leaf, int) and not isinstance(leaf, bool) and abs(leaf) >= 100_000_000:
                s = str(leaf)
                if s in seen:
                    size += 1
                else:
                    seen.add(s)
                    parts.append(s)
                    size += len(s) + 1
            else:
                continue
            if size >= limit:
                break
        if size >= limit:
            break
    return "\n".join(parts)
