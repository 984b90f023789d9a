"""Structured logging (issue 17 item 5): events reach ``logging`` with their fields as
``extra``; a structlog configured by the application is used; JSON and console handlers."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from xlib_pipeline import (
    ConsoleFormatter,
    JsonFormatter,
    Pipeline,
    TaskContext,
    configure_logging,
)
from xlib_pipeline._events import EventLogger, get_logger, render


def small() -> Pipeline:
    p = Pipeline("logged")
    p.add_task("extract", lambda: [1, 2])
    p.add_task("count", lambda rows: len(rows), depends_on=["extract"])
    return p


def test_fields_travel_as_extra(manager, caplog):
    with caplog.at_level(logging.INFO, logger="xlib_pipeline"):
        r = manager.execute_pipeline(small())
    by_event = {(rec.event, getattr(rec, "task", None)): rec for rec in caplog.records}
    done = by_event[("task.succeeded", "count")]
    assert done.pipeline == "logged" and done.run_id == r.run_id
    assert done.attempts == 1 and isinstance(done.duration, float)
    assert done.xlib_fields["task"] == "count"
    # the message stays readable for plain handlers
    assert "event='task.succeeded'" in done.getMessage() and "task='count'" in done.getMessage()
    started = by_event[("task.started", "extract")]
    assert started.attempt == 1
    assert by_event[("pipeline.started", None)].tasks == 2


def test_reserved_record_names_get_a_prefix(caplog):
    log = get_logger(pipeline="p")
    with caplog.at_level(logging.INFO, logger="xlib_pipeline"):
        log.info("custom.event", module="m", name="n", msg="x", level_ok=1)
    (rec,) = [r for r in caplog.records if getattr(r, "event", "") == "custom.event"]
    assert rec.xlib_module == "m" and rec.xlib_name == "n" and rec.xlib_msg == "x"
    assert rec.name == "xlib_pipeline" and rec.level_ok == 1


def test_exceptions_reach_the_record(caplog):
    log = get_logger()
    with caplog.at_level(logging.INFO, logger="xlib_pipeline"):
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("went.wrong")
    (rec,) = [r for r in caplog.records if getattr(r, "event", "") == "went.wrong"]
    assert rec.exc_info is not None and rec.exc_info[0] is ValueError


def test_a_configured_structlog_is_honoured(manager):
    seen: list[dict[str, object]] = []

    def keep(logger, method, event_dict):
        seen.append(dict(event_dict))
        raise structlog.DropEvent

    structlog.configure(processors=[keep])
    try:
        manager.execute_pipeline(small())
    finally:
        structlog.reset_defaults()
    events = [(e["event"], e.get("task")) for e in seen]
    assert ("task.started", "extract") in events and ("pipeline.succeeded", None) in events
    assert all(e["pipeline"] == "logged" for e in seen)


def test_json_formatter():
    out = io.StringIO()
    handler = configure_logging(logging.INFO, format="json", stream=out)
    try:
        get_logger(pipeline="p", run_id="r").info("x.done", n=3, when=object())
    finally:
        logging.getLogger("xlib_pipeline").removeHandler(handler)
    (line,) = out.getvalue().splitlines()
    data = json.loads(line)
    assert data["event"] == "x.done" and data["pipeline"] == "p" and data["n"] == 3
    assert data["level"] == "info" and data["logger"] == "xlib_pipeline"
    assert data["timestamp"].endswith("Z") and "object" in data["when"]
    assert isinstance(handler.formatter, JsonFormatter)


def test_console_formatter_and_replacing_the_handler():
    first, second = io.StringIO(), io.StringIO()
    configure_logging(logging.INFO, format="console", stream=first)
    handler = configure_logging(logging.INFO, format="console", stream=second)
    try:
        get_logger(pipeline="p").info("x.done", note="two words")
    finally:
        logging.getLogger("xlib_pipeline").removeHandler(handler)
    assert first.getvalue() == ""  # replaced, not stacked
    line = second.getvalue().strip()
    assert " INFO " in line and 'x.done pipeline=p note="two words"' in line
    assert isinstance(handler.formatter, ConsoleFormatter)
    with pytest.raises(ValueError, match="console, json"):
        configure_logging(format="xml")


def test_task_log_is_bound_to_the_task(manager, caplog):
    p = Pipeline("ctx_log")

    @p.task("extract")
    def extract(context: TaskContext):
        context.log.info("extract.rows", rows=3)
        return 3

    with caplog.at_level(logging.INFO, logger="xlib_pipeline"):
        r = manager.execute_pipeline(p)
    (rec,) = [x for x in caplog.records if getattr(x, "event", "") == "extract.rows"]
    assert rec.name == "xlib_pipeline.task"
    assert (rec.pipeline, rec.run_id, rec.task, rec.attempt, rec.rows) == (
        "ctx_log",
        r.run_id,
        "extract",
        1,
        3,
    )


# -- the library's events without structlog (cold start) ----------------------------------------

_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=3),
)
_keys = st.sampled_from(
    ["pipeline", "run_id", "task", "attempt", "name", "msg", "module", "duration", "rows", "x"]
)


def _structlog_reference(name: str, context: dict[str, object]) -> object:
    """What get_logger returned before: structlog's stdlib BoundLogger with the library's
    processors (filter_by_level, then the key=value message with fields as extra)."""
    from xlib_pipeline._events import _to_stdlib

    return structlog.wrap_logger(
        logging.getLogger(name),
        wrapper_class=structlog.stdlib.BoundLogger,
        processors=[structlog.stdlib.filter_by_level, _to_stdlib],
    ).bind(**context)


def _records(log: object, method: str, event: str, fields: dict[str, object]) -> list[tuple]:
    logger = logging.getLogger("xlib_pipeline.equivalence")
    got: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record)

    handler = Keep()
    logger.addHandler(handler)
    try:
        getattr(log, method)(event, **fields)
    finally:
        logger.removeHandler(handler)
    keep = ("xlib_fields", "pipeline", "run_id", "task", "xlib_name", "xlib_msg", "rows")
    return [
        (
            r.levelno,
            r.getMessage(),
            r.exc_info is not None,
            {k: getattr(r, k) for k in keep if hasattr(r, k)},
        )
        for r in got
    ]


@settings(max_examples=150, deadline=None)
@given(
    context=st.dictionaries(_keys, _values, max_size=4),
    fields=st.dictionaries(_keys, _values, max_size=4),
    method=st.sampled_from(["debug", "info", "warning", "warn", "error", "critical"]),
    level=st.sampled_from([logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR]),
    event=st.text(min_size=1, max_size=10),
)
def test_event_logger_writes_the_records_structlog_wrote(
    context: dict[str, object],
    fields: dict[str, object],
    method: str,
    level: int,
    event: str,
) -> None:
    """The structlog-free logger is checked against structlog itself: same level filter,
    same message, same extra fields, for random contexts, fields and levels."""
    logger = logging.getLogger("xlib_pipeline.equivalence")
    logger.setLevel(level)
    try:
        ours = get_logger("xlib_pipeline.equivalence", **context)
        assert isinstance(ours, EventLogger)
        ref = _structlog_reference("xlib_pipeline.equivalence", context)
        assert _records(ours, method, event, dict(fields)) == _records(
            ref, method, event, dict(fields)
        )
        assert render({"task": "t", "event": "e", "b": 1}) == "event='e' task='t' b=1"
    finally:
        logger.setLevel(logging.NOTSET)


def test_event_logger_binds_like_structlog_and_falls_back_to_it(caplog) -> None:
    log = get_logger(pipeline="p", run_id="r")
    bound = log.bind(task="t").unbind("run_id").try_unbind("missing").new(pipeline="q")
    with pytest.raises(KeyError):
        log.unbind("missing")
    with caplog.at_level(logging.INFO, logger="xlib_pipeline"):
        bound.info("one", rows=1)
        log.log(logging.WARNING, "two")
        bound.fatal("three")
    recs = {r.getMessage(): r for r in caplog.records}
    assert recs["event='one' pipeline='q' rows=1"].xlib_fields == {
        "pipeline": "q",
        "rows": 1,
        "event": "one",
    }
    assert recs["event='two' pipeline='p' run_id='r'"].levelno == logging.WARNING
    assert recs["event='three' pipeline='q'"].levelno == logging.CRITICAL
    # anything else a structlog BoundLogger has comes from a real one, same context
    assert log.name == "xlib_pipeline"
    assert structlog.get_context(log.structlog()) == {"pipeline": "p", "run_id": "r"}
    # copies and pickles keep the logger and its context (RunContext travels to workers)
    import copy
    import pickle

    for clone in (copy.deepcopy(log), pickle.loads(pickle.dumps(log))):
        assert isinstance(clone, EventLogger) and clone._context == log._context
    with pytest.raises(AttributeError):
        _ = EventLogger.__new__(EventLogger).anything  # half-built: no recursion
