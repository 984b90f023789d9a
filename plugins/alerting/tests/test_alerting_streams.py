"""Stream alerts against real channels: a local HTTP server receives the webhook and
Alertmanager POSTs, real streams (JSON-lines files, iterables) run through a manager with
a run store, and a new manager stands for the restarted process."""

from __future__ import annotations

import http.server
import importlib.util
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from xlib_pipeline_alerting import AlertingPlugin

from xlib_pipeline import ConfigError, Pipeline, PipelineManager

# Alertmanager's API v2 postableAlerts (as in test_alerting_plugin.py), as JSON Schema.
LABEL_SET = {"type": "object", "additionalProperties": {"type": "string"}}
POSTABLE_ALERTS = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "labels": LABEL_SET,
            "annotations": LABEL_SET,
            "startsAt": {"type": "string", "format": "date-time"},
            "endsAt": {"type": "string", "format": "date-time"},
            "generatorURL": {"type": "string", "format": "uri"},
        },
        "required": ["labels"],
    },
}


class Recorder(http.server.BaseHTTPRequestHandler):
    requests: list[tuple[str, Any]]

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        type(self).requests.append((self.path, json.loads(self.rfile.read(n) or b"null")))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def sink() -> Iterator[Any]:
    class Handler(Recorder):
        requests: list[tuple[str, Any]] = []

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    Handler.url = f"http://127.0.0.1:{server.server_port}"  # type: ignore[attr-defined]
    try:
        yield Handler
    finally:
        server.shutdown()
        server.server_close()


def hooks(sink: Any) -> list[Any]:
    return [body for path, body in sink.requests if path == "/hook"]


def screening(fail_on: int | None = None, message: str = "malformed") -> Pipeline:
    p = Pipeline("screening")

    @p.task("keep")
    def keep(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if fail_on is not None and any(r["id"] == fail_on for r in rows):
            raise ValueError(f"record {fail_on}: {message}")
        return [r for r in rows if r["amount"] > 0]

    return p


def write_jsonl(path: Path, n: int) -> None:
    with open(path, "a") as f:
        for i in range(n):
            f.write(json.dumps({"id": i, "amount": i % 4 - 1}) + "\n")


def make(
    tmp_path: Path,
    url: str,
    rules: list[Any] | None,
    *extra: object,
    channels: list[Any] | None = None,
    **cfg: Any,
) -> Any:
    alerting: dict[str, Any] = {
        "channels": channels or [{"type": "webhook", "url": url + "/hook"}],
        "state_file": str(tmp_path / "alerting.json"),
        "backoff_seconds": 0.01,
    }
    if rules is not None:
        alerting["rules"] = rules
    config = {"store": {"path": str(tmp_path / "runs.sqlite")}, "alerting": alerting, **cfg}
    return PipelineManager(config, plugins=[AlertingPlugin(), *extra], entry_points=False)


def run(pm: Any, tmp_path: Path, pipeline: Pipeline, **kw: Any) -> Any:
    return pm.stream(
        pipeline,
        source=f"jsonl:{tmp_path / 'in.jsonl'}",
        sink=f"jsonl:{tmp_path / 'out.jsonl'}",
        name="payments",
        batch_size=10,
        **kw,
    )


def test_without_stream_rules_a_failed_batch_is_a_failed_run_only(
    sink: Any, tmp_path: Path
) -> None:
    write_jsonl(tmp_path / "in.jsonl", 30)
    with make(tmp_path, sink.url, None) as pm:  # default rules: run_failed
        assert not pm.hooks.has["stream_event"]  # nothing added to a stream's batches
        s = run(pm, tmp_path, screening(fail_on=25))
        assert s.status == "failed"
    [alert] = hooks(sink)
    assert alert["rule"] == "run_failed" and alert["run_id"] == s.last_run_id
    assert "stream" not in alert and "record 25: malformed" in alert["message"]


def test_stream_failed_names_stream_batch_and_error_then_resolves(
    sink: Any, tmp_path: Path
) -> None:
    write_jsonl(tmp_path / "in.jsonl", 30)
    rules = [{"on": "run_failed"}, {"on": "stream_failed", "streams": ["pay*"]}]
    with make(tmp_path, sink.url, rules) as pm:
        s = run(pm, tmp_path, screening(fail_on=25))
        assert s.status == "failed" and s.batches == 2
    by_rule = {a["rule"]: a for a in hooks(sink)}
    assert sorted(by_rule) == ["run_failed", "stream_failed"]
    alert = by_rule["stream_failed"]
    assert alert["status"] == "firing"
    assert alert["pipeline"] == "screening" and alert["stream"] == "payments"
    assert alert["batch"] == 3  # batches 1-2 committed; a restart retries 3
    assert alert["run_id"] == s.last_run_id == by_rule["run_failed"]["run_id"]
    assert alert["error_class"] == "StreamError"
    assert alert["message"].startswith("stream 'payments': batch 3 (offsets ")
    assert "record 25: malformed" in alert["message"]
    assert alert["dedup_key"] == "screening/stream:payments/stream_failed"
    assert alert["text"].startswith("[CRITICAL] stream_failed screening stream payments: ")
    # The restarted stream (a new process): its first batch's run resolves run_failed,
    # its first committed batch resolves stream_failed; nothing else fires.
    with make(tmp_path, sink.url, rules) as pm:
        s2 = run(pm, tmp_path, screening())
        assert s2.status == "completed"
    resolved = hooks(sink)[2:]
    assert sorted(a["rule"] for a in resolved) == ["run_failed", "stream_failed"]
    assert all(a["status"] == "resolved" for a in resolved)
    again = next(a for a in resolved if a["rule"] == "stream_failed")
    assert again["dedup_key"] == alert["dedup_key"] and again["batch"] == 3
    assert "the stream committed batch 3" in again["text"]
    assert json.loads((tmp_path / "alerting.json").read_text()) == {}
    with make(tmp_path, sink.url, rules) as pm:  # resolved once only
        run(pm, tmp_path, screening())
    assert len(hooks(sink)) == 4


def test_a_sink_failure_is_no_failed_run_but_fires_stream_failed(sink: Any, tmp_path: Path) -> None:
    def broken(records: list[Any]) -> None:
        raise OSError("disk full")

    rows = [{"id": i, "amount": 5} for i in range(30)]
    rules = [{"on": "run_failed"}, {"on": "stream_failed"}]
    with make(tmp_path, sink.url, rules) as pm:
        s = pm.stream(screening(), source=rows, sink=broken, name="payments", batch_size=10)
        assert s.status == "failed"
    [alert] = hooks(sink)  # the batch's run succeeded: run_failed says nothing
    assert alert["rule"] == "stream_failed" and alert["batch"] == 1
    assert "disk full" in alert["message"]


def test_stream_failed_rule_filters_by_stream_and_pipeline(sink: Any, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", 30)
    rules = [
        {"on": "stream_failed", "streams": ["other*"]},
        {"on": "stream_failed", "pipelines": ["nightly"]},
    ]
    with make(tmp_path, sink.url, rules) as pm:
        assert run(pm, tmp_path, screening(fail_on=5)).status == "failed"
    assert hooks(sink) == []


def test_pii_in_a_batch_error_never_reaches_the_alert(sink: Any, tmp_path: Path) -> None:
    if importlib.util.find_spec("xlib_pipeline_classification") is None:
        pytest.skip("needs xlib-pipeline-classification")
    from xlib_pipeline_classification import ClassificationPlugin

    write_jsonl(tmp_path / "in.jsonl", 30)
    rules = [{"on": "stream_failed"}]
    extra = {"classification": {"detect_pii": True}}
    with make(tmp_path, sink.url, rules, ClassificationPlugin(), **extra) as pm:
        run(pm, tmp_path, screening(fail_on=5, message="bad row for jane.doe@example.com"))
    [alert] = hooks(sink)
    assert "jane.doe" not in json.dumps(alert)
    assert alert["rule"] == "stream_failed" and alert["stream"] == "payments"


def test_stream_lag_fires_once_above_and_resolves_at_or_under(sink: Any, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", 100)
    size = (tmp_path / "in.jsonl").stat().st_size
    above = size // 2
    rules = [{"on": "stream_lag", "above": above, "severity": "warning"}]
    lags: list[int | None] = []
    channels = [
        {"type": "webhook", "url": sink.url + "/hook"},
        {"type": "alertmanager", "url": sink.url},
    ]
    with make(tmp_path, sink.url, rules, channels=channels) as pm:
        s = run(pm, tmp_path, screening(), on_batch=lambda st: lags.append(st.lag))
        assert s.status == "completed" and s.batches == 10
    # The model: the lag each committed batch reported (bytes not yet read).
    assert all(isinstance(x, int) for x in lags) and lags[-1] == 0
    fire_at = next(i for i, x in enumerate(lags, 1) if x is not None and x > above)
    back_at = next(i for i, x in enumerate(lags, 1) if i > fire_at and x is not None and x <= above)
    got = hooks(sink)
    assert [(a["status"], a["batch"]) for a in got] == [("firing", fire_at), ("resolved", back_at)]
    firing = got[0]
    assert firing["rule"] == "stream_lag" and firing["severity"] == "warning"
    assert firing["error_class"] == "StreamLag" and firing["threshold"] == above
    lag = lags[fire_at - 1]
    assert firing["message"] == f"lag {lag} above {above} (the source's unit) at batch {fire_at}"
    assert firing["dedup_key"] == f"screening/stream:payments/stream_lag>{above}"
    am = [body for path, body in sink.requests if path == "/api/v2/alerts"]
    assert len(am) == 2
    for body in am:
        jsonschema.validate(body, POSTABLE_ALERTS)
        labels = body[0]["labels"]
        assert labels["stream"] == "payments" and labels["rule"] == "stream_lag"
        assert "batch" not in labels and "run_id" not in labels  # bounded: annotations
    assert am[0][0]["labels"] == am[1][0]["labels"]  # the same alert, resolved
    assert am[0][0]["annotations"]["threshold"] == str(above)


def test_a_source_without_lag_never_fires_a_lag_rule(sink: Any, tmp_path: Path) -> None:
    rows = [{"id": i, "amount": 5} for i in range(30)]
    with make(tmp_path, sink.url, [{"on": "stream_lag", "above": 0}]) as pm:
        s = pm.stream(screening(), source=rows, sink=lambda r: None, name="it", batch_size=10)
        assert s.status == "completed" and s.lag is None
    assert hooks(sink) == []


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"on": "stream_lag"}, "stream_lag needs 'above'"),
        ({"on": "stream_lag", "above": -1}, "'above' must be a finite number >= 0"),
        ({"on": "stream_lag", "above": "10"}, "'above' must be a finite number >= 0"),
        ({"on": "stream_lag", "above": float("inf")}, "'above' must be a finite number"),
        ({"on": "run_failed", "above": 3}, "'above' applies to stream_lag only"),
        ({"on": "run_failed", "streams": ["x"]}, "'streams' applies to stream_failed"),
        ({"on": "stream_failed", "tasks": ["x"]}, "'stream_failed' takes no tasks"),
        ({"on": "stream_failed", "streams": [""]}, "streams must be a list of glob"),
        ({"on": "stream_lagg"}, "'on' must be one of"),
    ],
)
def test_bad_stream_rules_name_the_rule(rule: dict[str, Any], message: str) -> None:
    cfg = {"alerting": {"channels": [{"type": "webhook", "url": "http://x/hook"}], "rules": [rule]}}
    with pytest.raises(ConfigError, match="alerting") as info:
        PipelineManager(cfg, plugins=[AlertingPlugin()], entry_points=False)
    assert "alerting.rules[0]" in str(info.value) and message in str(info.value)
