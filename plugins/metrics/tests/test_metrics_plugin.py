"""The metrics plugin against the real thing: its HTTP endpoint scraped and parsed with
prometheus_client.parser, a real local HTTP server standing in for the Pushgateway, and
the textfile node_exporter would read."""

from __future__ import annotations

import http.server
import importlib.util
import socket
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from xlib_pipeline import (
    ComplianceError,
    ConfigError,
    MetricSample,
    Pipeline,
    PipelineManager,
    RetryDecision,
    hookimpl,
)


class RetryOnce:
    """A test plugin: retry every failed first attempt once, at once."""

    name = "retry_once"

    @hookimpl
    def on_task_error(self, task: Any, run: Any, outcome: Any) -> RetryDecision | None:
        return RetryDecision(retry=True) if outcome.attempt == 1 else None


class Refuser:
    name = "refuser"

    @hookimpl
    def validate_pipeline(self, pipeline: Any, run: Any) -> None:
        if pipeline.name == "refused":
            raise ComplianceError("pipeline 'refused' is not allowed here")


class Samples:
    name = "samples"

    @hookimpl
    def collect_metrics(self) -> list[MetricSample]:
        return [
            MetricSample(
                "xlib_pipeline_alerts_sent_total", 3, doc="sent", labels={"channel": "webhook"}
            )
        ]


def flaky_pipeline(name: str = "nightly") -> Pipeline:
    p = Pipeline(name)
    calls = {"n": 0}

    @p.task("extract")
    def extract() -> int:
        return 1

    @p.task("flaky", depends_on=["extract"])
    def flaky(x: int) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("first attempt fails")
        return x + 1

    @p.task("load", depends_on=["flaky"])
    def load(x: int) -> int:
        return x

    return p


def failing_pipeline(name: str = "nightly") -> Pipeline:
    p = Pipeline(name)

    @p.task("extract")
    def extract() -> int:
        return 1

    @p.task("load", depends_on=["extract"])
    def load(x: int) -> int:
        raise RuntimeError("disk full")

    return p


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fams: dict[str, Any], family: str, sample: str, **labels: str) -> float:
    for s in fams[family].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise AssertionError(f"no sample {sample}{labels} in {fams[family].samples}")


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        return str(resp.read().decode())


def manager(config: dict[str, Any], *extra: object) -> PipelineManager:
    from xlib_pipeline_metrics import MetricsPlugin

    return PipelineManager(
        config, plugins=[MetricsPlugin(), RetryOnce(), Refuser(), *extra], entry_points=False
    )


class TestEndpoint:
    def test_every_metric_of_a_run_is_served_and_parses(self) -> None:
        with manager({"metrics": {"port": 0}}, Samples()) as pm:
            port = pm.get_plugin("metrics").port
            assert isinstance(port, int) and port > 0
            ok = pm.execute_pipeline(flaky_pipeline())
            assert ok.success
            bad = pm.execute_pipeline(failing_pipeline())
            assert not bad.success
            fams = families(scrape(port))
        assert (
            value(fams, "xlib_pipeline_runs", "xlib_pipeline_runs_total", status="succeeded") == 1
        )
        assert value(fams, "xlib_pipeline_runs", "xlib_pipeline_runs_total", status="failed") == 1
        t = "xlib_pipeline_tasks_total"
        assert value(fams, "xlib_pipeline_tasks", t, task="flaky", status="succeeded") == 1
        assert value(fams, "xlib_pipeline_tasks", t, task="load", status="failed") == 1
        assert value(fams, "xlib_pipeline_tasks", t, task="extract", status="succeeded") == 2
        a = "xlib_pipeline_task_attempts_total"
        fam = "xlib_pipeline_task_attempts"
        assert value(fams, fam, a, task="flaky", outcome="retried") == 1
        assert value(fams, fam, a, task="flaky", outcome="succeeded") == 1
        # 'load' failed twice: one retried attempt, then the last one failed.
        assert value(fams, fam, a, task="load", outcome="retried") == 1
        assert value(fams, fam, a, task="load", outcome="failed") == 1
        h = "xlib_pipeline_task_duration_seconds"
        assert fams[h].type == "histogram"
        assert value(fams, h, h + "_count", pipeline="nightly", task="extract") == 2
        assert value(fams, h, h + "_bucket", task="extract", le="+Inf") == 2
        r = "xlib_pipeline_run_duration_seconds"
        assert value(fams, r, r + "_count", pipeline="nightly") == 2
        g = "xlib_pipeline_tasks_in_flight"
        assert fams[g].type == "gauge"
        assert value(fams, g, g, pipeline="nightly") == 0
        ls = "xlib_pipeline_last_success_timestamp_seconds"
        assert value(fams, ls, ls, pipeline="nightly") == pytest.approx(ok.finished)
        assert (
            value(
                fams,
                "xlib_pipeline_alerts_sent",
                "xlib_pipeline_alerts_sent_total",
                channel="webhook",
            )
            == 3
        )
        # Bounded labels: no run id anywhere.
        for f in fams.values():
            for s in f.samples:
                assert ok.run_id not in s.labels.values()
                assert bad.run_id not in s.labels.values()
                assert "run_id" not in s.labels

    def test_tasks_in_flight_while_a_task_runs(self) -> None:
        gate = threading.Event()
        seen: list[float] = []
        with manager({"metrics": {"port": 0}}) as pm:
            port = pm.get_plugin("metrics").port
            p = Pipeline("inflight")

            @p.task("a")
            def a() -> int:
                fams = families(scrape(port))
                seen.append(
                    value(
                        fams,
                        "xlib_pipeline_tasks_in_flight",
                        "xlib_pipeline_tasks_in_flight",
                        pipeline="inflight",
                    )
                )
                gate.set()
                return 1

            assert pm.execute_pipeline(p).success
            assert gate.is_set()
            fams = families(scrape(port))
        assert seen == [1.0]
        g = "xlib_pipeline_tasks_in_flight"
        assert value(fams, g, g, pipeline="inflight") == 0

    def test_a_long_run_counts_finished_tasks_before_it_ends_and_only_once(self) -> None:
        seen: list[float] = []
        with manager({"metrics": {"port": 0}}) as pm:
            port = pm.get_plugin("metrics").port
            p = Pipeline("long")
            p.add_task("a", lambda: 1)

            @p.task("b", depends_on=["a"])
            def b(x: int) -> int:
                fams = families(scrape(port))
                t = "xlib_pipeline_tasks"
                seen.append(
                    value(fams, t, t + "_total", pipeline="long", task="a", status="succeeded")
                )
                return x

            assert pm.execute_pipeline(p).success
            assert pm.execute_pipeline(p).success
            fams = families(scrape(port))
        t = "xlib_pipeline_tasks"
        assert seen == [1.0, 2.0]  # live, before each run ended
        assert value(fams, t, t + "_total", pipeline="long", task="a", status="succeeded") == 2
        assert value(fams, t, t + "_total", pipeline="long", task="b", status="succeeded") == 2

    def test_refused_run_counts_as_compliance_event(self) -> None:
        p = Pipeline("refused")

        @p.task("a")
        def a() -> int:
            return 1

        with manager({"metrics": True}) as pm:
            with pytest.raises(ComplianceError):
                pm.execute_pipeline(p)
            fams = families(pm.get_plugin("metrics").text())
        assert (
            value(
                fams,
                "xlib_pipeline_runs",
                "xlib_pipeline_runs_total",
                pipeline="refused",
                status="refused",
            )
            == 1
        )
        assert (
            value(
                fams,
                "xlib_pipeline_runs_refused",
                "xlib_pipeline_runs_refused_total",
                pipeline="refused",
            )
            == 1
        )

    @pytest.mark.skipif(
        importlib.util.find_spec("xlib_pipeline_classification") is None,
        reason="needs xlib-pipeline-classification",
    )
    def test_pii_detection_is_counted(self) -> None:
        from xlib_pipeline_classification import ClassificationPlugin

        p = Pipeline("pii")

        @p.task("a")
        def a() -> str:
            return "contact jane.doe@example.com"

        with manager(
            {"metrics": True, "classification": {"detect_pii": True}}, ClassificationPlugin()
        ) as pm:
            assert pm.execute_pipeline(p).success
            fams = families(pm.get_plugin("metrics").text())
        assert (
            value(
                fams,
                "xlib_pipeline_pii_detections",
                "xlib_pipeline_pii_detections_total",
                pipeline="pii",
            )
            == 1
        )

    @pytest.mark.skipif(
        importlib.util.find_spec("xlib_pipeline_audit") is None,
        reason="needs xlib-pipeline-audit",
    )
    def test_a_truncated_audit_trail_is_a_tamper_finding(self, tmp_path: Path) -> None:
        from xlib_pipeline_audit import AuditPlugin

        trail = tmp_path / "trail.jsonl"
        p = Pipeline("audited")
        p.add_task("a", lambda: 1)
        cfg = {"metrics": True, "audit": {"path": str(trail)}}
        with manager(cfg, AuditPlugin()) as pm:
            assert pm.execute_pipeline(p).success
        lines = trail.read_text().splitlines(True)
        trail.write_text("".join(lines[:-2]))  # cut the tail: the head anchor disagrees
        with manager(cfg, AuditPlugin()) as pm:
            with pytest.raises(Exception, match="refusing to append"):
                pm.execute_pipeline(p)
            fams = families(pm.get_plugin("metrics").text())
        name = "xlib_pipeline_audit_tamper_findings"
        assert value(fams, name, name + "_total", pipeline="audited") == 1
        assert (
            value(
                fams,
                "xlib_pipeline_runs",
                "xlib_pipeline_runs_total",
                pipeline="audited",
                status="refused",
            )
            == 1
        )

    def test_server_stops_when_the_manager_closes(self) -> None:
        pm = manager({"metrics": {"port": 0}})
        port = pm.get_plugin("metrics").port
        scrape(port)
        pm.close()
        with pytest.raises(OSError):
            scrape(port)

    def test_port_in_use_is_a_clear_config_error(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            port = s.getsockname()[1]
            with pytest.raises(ConfigError, match=rf"metrics\.port.*127\.0\.0\.1:{port}"):
                manager({"metrics": {"port": port}})

    def test_unconfigured_plugin_is_inactive(self) -> None:
        with manager({}) as pm:
            assert not pm.has_plugin("metrics.recorder")  # no run hook registered
            assert not pm.hooks.has["after_pipeline"] and not pm.hooks.has["after_task"]
            assert pm.execute_pipeline(flaky_pipeline()).success


class Recorder(http.server.BaseHTTPRequestHandler):
    requests: list[tuple[str, str, bytes]] = []

    def _record(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        type(self).requests.append((self.command, self.path, self.rfile.read(n)))
        self.send_response(200)
        self.end_headers()

    do_PUT = _record
    do_POST = _record

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def gateway() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    class Handler(Recorder):
        requests: list[tuple[str, str, bytes]] = []

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", Handler.requests
    finally:
        server.shutdown()
        server.server_close()


class TestExporters:
    def test_pushgateway_receives_a_put_at_run_end(self, gateway: Any) -> None:
        url, requests = gateway
        cfg = {
            "metrics": {
                "pushgateway": url,
                "job": "nightly_etl",
                "grouping_key": {"instance": "batch-1"},
            }
        }
        with manager(cfg) as pm:
            assert pm.execute_pipeline(flaky_pipeline()).success
        assert len(requests) == 1
        method, path, body = requests[0]
        assert method == "PUT"
        assert path == "/metrics/job/nightly_etl/instance/batch-1"
        fams = families(body.decode())
        assert (
            value(fams, "xlib_pipeline_runs", "xlib_pipeline_runs_total", status="succeeded") == 1
        )

    def test_unreachable_pushgateway_never_fails_the_run(self, caplog: Any) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # closed again: nothing listens there
        cfg = {"metrics": {"pushgateway": f"http://127.0.0.1:{port}", "push_timeout_seconds": 2}}
        with manager(cfg) as pm:
            assert pm.execute_pipeline(flaky_pipeline()).success
            fams = families(pm.get_plugin("metrics").text())
        assert (
            value(
                fams,
                "xlib_pipeline_metrics_export_errors",
                "xlib_pipeline_metrics_export_errors_total",
                exporter="pushgateway",
            )
            == 1
        )
        assert "push to the Pushgateway" in caplog.text

    def test_textfile_for_node_exporter(self, tmp_path: Path) -> None:
        out = tmp_path / "xlib.prom"
        with manager({"metrics": {"textfile": str(out)}}) as pm:
            assert not pm.execute_pipeline(failing_pipeline("etl")).success
        fams = families(out.read_text())
        assert (
            value(
                fams,
                "xlib_pipeline_runs",
                "xlib_pipeline_runs_total",
                pipeline="etl",
                status="failed",
            )
            == 1
        )
        assert not list(tmp_path.glob("*.tmp*")), "the write is atomic (temp file renamed)"

    def test_textfile_in_a_missing_folder_is_logged_and_counted(self, tmp_path: Path) -> None:
        cfg = {"metrics": {"textfile": str(tmp_path / "nope" / "x.prom")}}
        with manager(cfg) as pm:
            assert pm.execute_pipeline(flaky_pipeline()).success
            fams = families(pm.get_plugin("metrics").text())
        assert (
            value(
                fams,
                "xlib_pipeline_metrics_export_errors",
                "xlib_pipeline_metrics_export_errors_total",
                exporter="textfile",
            )
            == 1
        )


class TestConfig:
    @pytest.mark.parametrize(
        ("section", "message"),
        [
            ({"port": "9464"}, "'metrics.port' must be an integer"),
            ({"port": 70000}, "'metrics.port' must be an integer"),
            ({"pushgateway": "ftp://x"}, "'metrics.pushgateway' must be an http"),
            ({"textfile": "metrics.txt"}, "must end in '.prom'"),
            ({"buckets": [1, 0.5]}, "increasing numbers"),
            ({"prot": 1}, "did you mean 'port'"),
            ({"grouping_key": {"a": 1}}, "grouping_key"),
        ],
    )
    def test_bad_sections_name_the_key(self, section: dict[str, Any], message: str) -> None:
        with pytest.raises(ConfigError, match="metrics") as info:
            manager({"metrics": section})
        assert message in str(info.value)
