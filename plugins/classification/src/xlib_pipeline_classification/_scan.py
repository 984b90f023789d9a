"""Bounded gathering of the text in a task output, for the detectors."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import Any

from ._detectors import LEVELS, RANK, Detector, RegexDetector

#: Deepest nesting walked; deeper values are not scanned.
MAX_DEPTH = 32

_WALKED = (dict, list, tuple, set, frozenset)
_BIG = 100_000_000
_chain = chain.from_iterable


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
    if (type(value) is list or type(value) is tuple) and value:
        text = _records(value, limit)
        if text is not None:
            return text
    return _walk(value, limit)


def _walk(value: Any, limit: int) -> str:
    """:func:`gather_text` of a container: the general walk."""
    parts: list[str] = []
    seen: set[Any] = set()  # strings gathered, and every dict key met
    size = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        depth += 1  # the depth of v's members
        if isinstance(v, dict):
            if seen.issuperset(v):  # a record of a schema met before: no key to gather
                size += len(v)
            else:  # keys first (strings only: other keys are remembered, not scanned)
                for k in v:
                    if k in seen:
                        size += 1
                        continue
                    seen.add(k)
                    if (type(k) is str or isinstance(k, str)) and len(k) > 2:
                        if size + len(k) > limit:
                            parts.append(k[: max(limit - size, 0)])
                            return "\n".join(parts)
                        parts.append(k)
                        size += len(k) + 1
                    else:
                        size += 1
                    if size >= limit:
                        return "\n".join(parts)
            leaves: Any = v.values()
        else:
            leaves = v
        for leaf in leaves:
            t = type(leaf)
            # The common leaves that hold no text first: small ints, floats, bools, None.
            if (t is int and -100_000_000 < leaf < 100_000_000) or t is float or t is bool:
                continue
            if leaf is None:
                continue
            if t is str or isinstance(leaf, str):
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


def _records(value: list[Any] | tuple[Any, ...], limit: int) -> str | None:
    """:func:`gather_text` of a batch of flat records, without the general walk's stack
    and set work per record; ``None`` (the general walk answers) unless ``value`` holds
    only plain dicts whose keys are all keys of its last one, with values of plain ``str``,
    small ``int``, ``float``, ``bool`` or ``None``, and its text stays under ``limit``.

    The same text as the general walk, which pops the records last first (a stack): the
    last record's keys, then each record's strings in that order, each distinct one once.
    """
    first = value[-1]
    if type(first) is not dict:
        return None
    parts: list[str] = []
    seen: set[Any] = set()
    size = 0
    for k in first:  # as the general walk gathers the keys of the first dict it meets
        seen.add(k)
        if (type(k) is str or isinstance(k, str)) and len(k) > 2:
            parts.append(k)
            size += len(k) + 1
        else:
            size += 1
    texts: list[str] = []
    add = texts.append
    big, nbig = _BIG, -_BIG
    n = 0
    for rec in reversed(value):
        if type(rec) is not dict:
            return None
        n += len(rec)
        for leaf in rec.values():
            t = type(leaf)
            if t is str:
                if len(leaf) > 2:
                    add(leaf)
            elif t is int:
                if not nbig < leaf < big:  # gathered as text: the general walk
                    return None
            elif t is not float and t is not bool and leaf is not None:
                return None
    # every key of every record is a key of the last one (one pass in C over all the keys,
    # not a set comparison per record)
    if not seen.issuperset(_chain(value)):
        return None
    size += n - len(first)  # every key but the last record's is a repeat (counts 1)
    new = [x for x in dict.fromkeys(texts) if x not in seen]
    # a string met before counts 1 against the limit, a new one its length and 1
    size += len(texts) + sum(map(len, new))
    if size >= limit:  # the general walk stops or cuts a string short
        return None
    parts += new
    return "\n".join(parts)


def run_detectors(
    detectors: Sequence[Detector], text: str
) -> tuple[tuple[str | None, tuple[str, ...]], bool]:
    """((highest level found, detector names), pure) for ``text``: each detector's
    ``detect``, except that :class:`RegexDetector` pre-checks (``needs``) run once per
    distinct pattern (four built-ins need a digit: one search, not four). ``pure``: every
    detector was a :class:`RegexDetector` (a function of the text alone), so the answer
    holds for the same text again."""
    pure = True
    checked: dict[Any, bool] = {}
    found: list[str] = []
    top = -1
    for d in detectors:
        if type(d) is RegexDetector:
            needs = d.needs
            if needs is not None:
                ok = checked.get(needs)
                if ok is None:
                    ok = checked[needs] = needs.search(text) is not None
                if not ok:
                    continue
            hit = d.matches(text)
        else:
            pure = False
            hit = d.detect(text)
        if hit:
            found.append(d.name)
            r = RANK[d.level]
            if r > top:
                top = r
    return ((LEVELS[top] if top >= 0 else None), tuple(found)), pure
