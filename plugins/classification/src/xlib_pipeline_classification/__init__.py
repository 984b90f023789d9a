"""Sensitivity levels for xlib-pipeline: declared or detected, propagated, enforced.

Levels are ``public < internal < confidential < restricted``. See
docs/plugins/classification.md for the config keys, task options, the
:class:`Detector` protocol and the ``run.stash["classification"]`` contract.
"""

from __future__ import annotations

__version__ = "0.1.0"

from ._detectors import (
    DETECTOR_ENTRY_POINT_GROUP,
    LEVELS,
    RANK,
    Detector,
    RegexDetector,
    builtin_detectors,
    check_level,
    luhn_valid,
)
from ._plugin import STASH_KEY, ClassificationPlugin, output_level, static_levels
from ._scan import gather_text

__all__ = [
    "DETECTOR_ENTRY_POINT_GROUP",
    "LEVELS",
    "RANK",
    "STASH_KEY",
    "ClassificationPlugin",
    "Detector",
    "RegexDetector",
    "__version__",
    "builtin_detectors",
    "check_level",
    "gather_text",
    "luhn_valid",
    "output_level",
    "static_levels",
]
