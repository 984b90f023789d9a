"""Sensitivity levels, the :class:`Detector` protocol and the built-in PII detectors.

A detector looks at text gathered from a task's output and answers whether it found its
kind of data. It never returns or stores the matched value: only its ``name`` is recorded.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

#: Sensitivity levels, least to most sensitive.
LEVELS: tuple[str, ...] = ("public", "internal", "confidential", "restricted")
RANK: dict[str, int] = {name: i for i, name in enumerate(LEVELS)}

#: Entry-point group through which other distributions add detectors.
DETECTOR_ENTRY_POINT_GROUP = "xlib_pipeline.classification_detectors"


def check_level(value: Any) -> str:
    """Validate a level name (``public``, ``internal``, ``confidential``, ``restricted``)."""
    if not isinstance(value, str) or value not in RANK:
        raise ValueError(f"expected one of {list(LEVELS)}, got {value!r}")
    return value


@runtime_checkable
class Detector(Protocol):
    """Finds one kind of sensitive data in text.

    ``name`` identifies it in records (``"email"``); ``level`` is the level an output is
    raised to (at least) when ``detect`` answers true. ``detect`` must be fast and must not
    keep the text.
    """

    name: str
    level: str

    def detect(self, text: str) -> bool: ...


class RegexDetector:
    """A detector that fires when ``pattern`` matches (and ``check`` accepts the match).

    ``needs`` (optional) is a cheap regular expression that every match of ``pattern``
    contains a match of (``@`` for an e-mail address, ``\\d`` for a number): a text without
    it is answered ``False`` at once, without running ``pattern`` (most outputs hold no
    ``@`` and many no digit, and the pre-check is several times cheaper than the pattern's
    look-arounds).
    """

    def __init__(
        self,
        name: str,
        pattern: str,
        *,
        level: str = "confidential",
        flags: int = 0,
        check: Any = None,
        needs: str | None = None,
    ) -> None:
        self.name = name
        self.level = check_level(level)
        self._re = re.compile(pattern, flags)
        self._check = check
        self._needs = None if needs is None else re.compile(needs, flags)

    def detect(self, text: str) -> bool:
        """Whether ``text`` holds a match."""
        if self._needs is not None and self._needs.search(text) is None:
            return False
        return self.matches(text)

    @property
    def needs(self) -> re.Pattern[str] | None:
        """The compiled pre-check (``None``: none)."""
        return self._needs

    def matches(self, text: str) -> bool:
        """Whether ``text`` holds a match, without the pre-check (its caller ran it)."""
        if self._check is None:
            return self._re.search(text) is not None
        return any(self._check(m.group(0)) for m in self._re.finditer(text))

    def __repr__(self) -> str:
        return f"RegexDetector({self.name!r}, level={self.level!r})"


def luhn_valid(number: str) -> bool:
    """The Luhn checksum of the digits in ``number`` (separators ignored)."""
    digits = [int(c) for c in number if c.isdigit()]
    if len(digits) < 12:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card(match: str) -> bool:
    digits = "".join(c for c in match if c.isdigit())
    return 13 <= len(digits) <= 19 and len(set(digits)) > 1 and luhn_valid(digits)


def builtin_detectors() -> dict[str, Detector]:
    """The detectors shipped with the plugin, by name."""
    dets = [
        RegexDetector(
            "email",
            r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
            needs="@",
        ),
        RegexDetector(
            "phone",
            # +44 20 7946 0958, +1-202-555-0143, (202) 555-0143, 202-555-0143, 07700 900123
            r"(?<![\w+-])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){1,3}"
            r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}|\d{3}[.-]\d{3}[.-]\d{4}|07\d{3} ?\d{6})(?![\w-])",
            needs=r"\d",
        ),
        RegexDetector(
            "payment_card",
            r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])",
            check=_card,
            needs=r"\d",
        ),
        RegexDetector(
            "us_ssn",
            r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])",
            needs=r"\d",
        ),
        RegexDetector(
            "uk_nino",
            r"\b(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]"
            r" ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b",
            needs=r"\d",
        ),
    ]
    return {d.name: d for d in dets}


def check_detector(obj: Any, where: str) -> Detector:
    """Accept a detector object (or a class to instantiate) or raise naming ``where``."""
    if isinstance(obj, type):
        obj = obj()
    if not isinstance(obj, Detector) or not isinstance(getattr(obj, "name", None), str):
        raise ValueError(
            f"{where}: {obj!r} is not a detector (needs 'name', 'level' and detect(text))"
        )
    check_level(obj.level)
    return obj


def installed_detectors() -> dict[str, Detector]:
    """Detectors registered by other distributions in :data:`DETECTOR_ENTRY_POINT_GROUP`."""
    out: dict[str, Detector] = {}
    import importlib.metadata as md  # only when detectors are looked up (cold start)

    for ep in md.entry_points(group=DETECTOR_ENTRY_POINT_GROUP):
        det = check_detector(ep.load(), f"entry point {ep.name!r} ({ep.value})")
        out[ep.name] = det
    return out


def resolve(names: Iterable[Any] | None, extra: Mapping[str, Detector]) -> list[Detector]:
    """Detectors for config ``classification.detectors``.

    Each entry is a detector name (built-in, entry point or registered), a
    ``"module:attribute"`` import path, or a detector object. ``None`` means every known one.
    """
    known = {**builtin_detectors(), **installed_detectors(), **extra}
    if names is None:
        return list(known.values())
    out: list[Detector] = []
    for entry in names:
        if isinstance(entry, str) and entry in known:
            out.append(known[entry])
        elif isinstance(entry, str) and ":" in entry:
            module, _, attr = entry.partition(":")
            try:
                obj = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as exc:
                raise ValueError(f"detector {entry!r} cannot be imported: {exc}") from exc
            out.append(check_detector(obj, f"detector {entry!r}"))
        elif isinstance(entry, str):
            raise ValueError(f"unknown detector {entry!r}; known: {sorted(known)}")
        else:
            out.append(check_detector(entry, "classification.detectors"))
    return out
