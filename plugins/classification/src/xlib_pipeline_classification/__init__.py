"""Sensitivity levels for xlib-pipeline: declared or detected, propagated, enforced.

Levels are ``public < internal < confidential < restricted``. See
docs/plugins/classification.md for the config keys, task options, the
:class:`Detector` protocol and the ``run.stash["classification"]`` contract.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xlib_pipeline import lazy_exports

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
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
    from ._levels import static_levels
    from ._plugin import STASH_KEY, ClassificationPlugin, output_level
    from ._scan import gather_text

_LAZY = {
    "DETECTOR_ENTRY_POINT_GROUP": "._detectors",
    "LEVELS": "._detectors",
    "RANK": "._detectors",
    "Detector": "._detectors",
    "RegexDetector": "._detectors",
    "builtin_detectors": "._detectors",
    "check_level": "._detectors",
    "luhn_valid": "._detectors",
    "STASH_KEY": "._plugin",
    "ClassificationPlugin": "._plugin",
    "output_level": "._plugin",
    "static_levels": "._levels",
    "gather_text": "._scan",
}

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


# Entry points load this package on every PipelineManager(): its submodules (and their
# dependencies) are imported when a name is first used, not before.
if not TYPE_CHECKING:  # mypy sees the names above, and flags a misspelt one
    __getattr__, __dir__ = lazy_exports(__name__, _LAZY)
