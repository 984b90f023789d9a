"""Structured logging (issue 17 item 5): events reach ``logging`` with their fields as
``extra``; a structlog configured by the application is used; JSON and console handlers."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from xlib_pipeline import (
    ConsoleFormatter,
    JsonFormatter,
    Pipeline,
    TaskContext,
    configure_logging,
)
from xlib_pipeline._events import get_logger


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
