"""structlog events of the core, routed through the standard ``logging`` logger
``"xlib_pipeline"`` so the host application decides where they go (the library never calls
``structlog.configure``). Event names are dotted and past tense: ``task.succeeded``.
Payloads (task inputs and outputs) are never logged.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

LOGGER_NAME = "xlib_pipeline"


def get_logger(**bind: Any) -> Any:
    """A structlog logger writing to ``logging.getLogger("xlib_pipeline")``, bound to ``bind``."""
    return structlog.wrap_logger(
        logging.getLogger(LOGGER_NAME),
        wrapper_class=structlog.stdlib.BoundLogger,
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.stdlib.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.KeyValueRenderer(
                key_order=["event", "pipeline", "run_id", "task"], drop_missing=True
            ),
        ],
    ).bind(**bind)
