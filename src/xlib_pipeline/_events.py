"""structlog events of the core and plugins, routed through the standard ``logging`` logger
``"xlib_pipeline"`` so the host application decides where they go. Event names are dotted
and past tense: ``task.succeeded``. Payloads (task inputs and outputs) are never logged.

Each event reaches ``logging`` as one record whose message is the event rendered as
``key=value`` pairs and whose *fields travel as* ``extra``: ``record.event``,
``record.pipeline``, ``record.run_id``, ``record.task``, ``record.attempt`` ... (a field
whose name a ``LogRecord`` already uses gets an ``xlib_`` prefix), and all of them together
in ``record.xlib_fields``. A JSON handler, structlog's ``ProcessorFormatter`` with
``ExtraAdder``, or any log shipper then reads fields, never parses strings.

When the application configured structlog itself (``structlog.configure(...)``), events go
through *its* processors and logger factory instead: the library never calls
``structlog.configure``.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import IO, Any

LOGGER_NAME = "xlib_pipeline"

#: Attribute names a ``LogRecord`` has already: event fields with these names are passed
#: with an ``xlib_`` prefix (``logging`` refuses to overwrite them).
_RESERVED = frozenset(
    {
        "name",
        "msg",
        "args",
        "levelname",
        "levelno",
        "pathname",
        "filename",
        "module",
        "exc_info",
        "exc_text",
        "stack_info",
        "lineno",
        "funcName",
        "created",
        "msecs",
        "relativeCreated",
        "thread",
        "threadName",
        "processName",
        "process",
        "message",
        "asctime",
        "taskName",
    }
)

#: The first fields of the ``key=value`` message; ``None`` values among them are dropped,
#: the other fields follow in their order (structlog's ``KeyValueRenderer(key_order=...,
#: drop_missing=True)``, which this is equivalent to).
_KEY_ORDER = ("event", "pipeline", "run_id", "task")

#: Method name -> level, as structlog's ``filter_by_level`` reads them.
_LEVELS = {
    "critical": logging.CRITICAL,
    "exception": logging.ERROR,
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "notset": logging.NOTSET,
}


def render(fields: dict[str, Any]) -> str:
    """The ``key=repr(value)`` message of an event (the dict is not changed)."""
    rest = dict(fields)
    items = []
    for key in _KEY_ORDER:
        value = rest.pop(key, None)
        if value is not None:
            items.append((key, value))
    items += rest.items()
    return " ".join(k + "=" + repr(v) for k, v in items)


def _to_stdlib(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """Last processor: the ``key=value`` message, and every field as ``extra``."""
    exc_info = event_dict.pop("exc_info", None)
    event_dict.pop("level", None)
    fields = dict(event_dict)
    extra: dict[str, Any] = {"xlib_fields": fields}
    for key, value in fields.items():
        extra["xlib_" + key if key in _RESERVED else key] = value
    kwargs: dict[str, Any] = {"extra": extra}
    if exc_info:
        kwargs["exc_info"] = exc_info
    return (render(fields),), kwargs


def _structlog_configured() -> bool:
    """Whether the application configured structlog (never imports it: an application
    that configured it has imported it)."""
    mod = sys.modules.get("structlog")
    return mod is not None and bool(mod.is_configured())


class EventLogger:
    """The library's events into a stdlib logger, as a structlog ``stdlib.BoundLogger``
    with the processors ``filter_by_level`` and the ``key=value`` + ``extra`` renderer
    would write them, without importing structlog (whose import pulls in rich and
    pygments: a third of the CLI's start-up). The usual methods (``debug`` ... ``critical``,
    ``exception``, ``log``, ``bind``, ``unbind``, ``try_unbind``, ``new``) are its own;
    any other attribute of a structlog ``BoundLogger`` is served by a real one bound to
    the same context, built on first use."""

    __slots__ = ("_context", "_logger")

    def __init__(self, logger: logging.Logger, context: dict[str, Any]) -> None:
        self._logger = logger
        self._context = context

    def _proxy(self, method: str, event: str | None, args: tuple[Any, ...], kw: Any) -> Any:
        logger = self._logger
        if logger.disabled or _LEVELS[method] < logger.getEffectiveLevel():
            return None  # structlog's filter_by_level drops it
        event_dict = dict(self._context)
        if args:
            kw["positional_args"] = args
        event_dict.update(kw)
        if event is not None:
            event_dict["event"] = event
        out_args, out_kw = _to_stdlib(logger, method, event_dict)
        return getattr(logger, method)(*out_args, **out_kw)

    def debug(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        return self._proxy("debug", event, args, kw)

    def info(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        return self._proxy("info", event, args, kw)

    def warning(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        return self._proxy("warning", event, args, kw)

    warn = warning

    def error(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        return self._proxy("error", event, args, kw)

    def critical(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        return self._proxy("critical", event, args, kw)

    def fatal(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        return self._proxy("critical", event, args, kw)

    def exception(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        kw.setdefault("exc_info", True)
        return self._proxy("exception", event, args, kw)

    def log(self, level: int, event: str | None = None, *args: Any, **kw: Any) -> Any:
        name = logging.getLevelName(level).lower()
        return self._proxy(name, event, args, kw)

    def bind(self, **new_values: Any) -> EventLogger:
        return EventLogger(self._logger, {**self._context, **new_values})

    def unbind(self, *keys: str) -> EventLogger:
        context = dict(self._context)
        for key in keys:
            del context[key]  # a KeyError for a missing key, as structlog's
        return EventLogger(self._logger, context)

    def try_unbind(self, *keys: str) -> EventLogger:
        context = dict(self._context)
        for key in keys:
            context.pop(key, None)
        return EventLogger(self._logger, context)

    def new(self, **new_values: Any) -> EventLogger:
        return EventLogger(self._logger, dict(new_values))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # dunders, and never recurse on a slot not yet set
            raise AttributeError(name)
        return getattr(self.structlog(), name)

    def structlog(self) -> Any:
        """The same logger as a structlog ``stdlib.BoundLogger`` (imports structlog)."""
        import structlog

        return structlog.wrap_logger(
            self._logger,
            wrapper_class=structlog.stdlib.BoundLogger,
            processors=[structlog.stdlib.filter_by_level, _to_stdlib],
        ).bind(**self._context)

    def __repr__(self) -> str:
        return f"<EventLogger {self._logger.name!r} context={self._context!r}>"


def get_logger(name: str = LOGGER_NAME, /, **bind: Any) -> Any:
    """A structlog-style logger for the events of the library, bound to ``bind``.

    Without an application structlog config it writes to ``logging.getLogger(name)`` with
    the fields as ``extra`` (an :class:`EventLogger`: structlog is not imported); with one
    (``structlog.is_configured()``) it is the application's ``structlog.get_logger(name)``.
    """
    mod = sys.modules.get("structlog")  # _structlog_configured, written out (once per run)
    if mod is not None and mod.is_configured():
        return mod.get_logger(name).bind(**bind)
    logger = logging.Logger.manager.loggerDict.get(name) if name else None
    if not isinstance(logger, logging.Logger):
        logger = logging.getLogger(name)
    return EventLogger(logger, bind)


def _stdlib_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)``: the logger registered under ``name`` read without the
    logging module's lock (taken by ``getLogger`` on every call; twice per run otherwise),
    or ``getLogger``'s answer when there is none yet (or only a placeholder)."""
    logger = logging.Logger.manager.loggerDict.get(name) if name else None
    if isinstance(logger, logging.Logger):
        return logger
    return logging.getLogger(name)


def events_enabled() -> bool:
    """Whether per-task events are worth building: the ``xlib_pipeline`` logger takes INFO,
    or the application configured structlog (its processors then decide).

    :func:`_structlog_configured` and :func:`_stdlib_logger` written out (twice per run, once
    per stream batch's run: three calls less each time)."""
    mod = sys.modules.get("structlog")
    if mod is not None and mod.is_configured():
        return True
    logger = logging.Logger.manager.loggerDict.get(LOGGER_NAME)
    if not isinstance(logger, logging.Logger):
        logger = logging.getLogger(LOGGER_NAME)
    return logger.isEnabledFor(logging.INFO)


# --- handlers for the CLI and for applications --------------------------------------------------


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The event fields of a record (``{"event": record.getMessage()}`` for a record not
    made by the library)."""
    fields = getattr(record, "xlib_fields", None)
    if isinstance(fields, dict):
        return dict(fields)
    return {"event": record.getMessage()}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``timestamp`` (ISO-8601 UTC), ``level``, ``logger``, then
    the event's fields (``event``, ``pipeline``, ``run_id``, ``task`` ...) and, with an
    exception, ``exception`` (its formatted traceback). Values JSON cannot hold are
    written with ``str``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "timestamp": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        out.update(record_fields(record))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class ConsoleFormatter(logging.Formatter):
    """Human lines: ``time level event key=value ...`` (the event first, then its fields)."""

    def format(self, record: logging.LogRecord) -> str:
        fields = record_fields(record)
        event = fields.pop("event", "")
        pairs = " ".join(f"{k}={_short(v)}" for k, v in fields.items() if v is not None)
        line = f"{_iso(record.created)} {record.levelname:<7} {event}" + (
            f" {pairs}" if pairs else ""
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return json.dumps(text) if (" " in text or not text) else text


LOG_FORMATS = ("console", "json")


def configure_logging(
    level: int = logging.INFO, *, format: str = "console", stream: IO[str] | None = None
) -> logging.Handler:
    """Send the library's events to ``stream`` (stderr) as ``console`` lines or ``json``
    objects; returns the handler (installed on the ``xlib_pipeline`` logger, replacing one
    installed before by this function). The CLI's ``--log-format`` calls it."""
    if format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {format!r}")
    logger = logging.getLogger(LOGGER_NAME)
    for old in list(logger.handlers):
        if getattr(old, "_xlib_installed", False):
            logger.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if format == "json" else ConsoleFormatter())
    handler._xlib_installed = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return handler
