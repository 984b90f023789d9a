"""The alerting plugin against the real thing: a local HTTP server receives the webhook and
Alertmanager POSTs (payloads checked against Alertmanager's v2 ``postableAlerts`` schema), a
real aiosmtpd server receives the mail."""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from email import message_from_bytes
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from xlib_pipeline_alerting import AlertingPlugin

from xlib_pipeline import (
    ComplianceError,
    ConfigError,
    Pipeline,
    PipelineManager,
    RetryDecision,
    hookimpl,
)

# Alertmanager's API v2 (api/v2/openapi.yaml), definitions postableAlerts, postableAlert,
# alert and labelSet, as JSON Schema.
POSTABLE_ALERTS = {
    "type": "array",
    "items": {
        "type": "object",
        "allOf": [
            {
                "type": "object",
                "properties": {
                    "labels": {"$ref": "#/definitions/labelSet"},
                    "generatorURL": {"type": "string", "format": "uri"},
                },
                "required": ["labels"],
            }
        ],
        "properties": {
            "startsAt": {"type": "string", "format": "date-time"},
            "endsAt": {"type": "string", "format": "date-time"},
            "annotations": {"$ref": "#/definitions/labelSet"},
        },
    },
    "definitions": {
        "labelSet": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


class Recorder(http.server.BaseHTTPRequestHandler):
    requests: list[tuple[str, str, dict[str, str], Any]]
    status = 200

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(n) or b"null")
        type(self).requests.append((self.command, self.path, dict(self.headers), body))
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_sink() -> Iterator[Any]:
    class Handler(Recorder):
        requests: list[tuple[str, str, dict[str, str], Any]] = []
        status = 200

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    Handler.url = f"http://127.0.0.1:{server.server_port}"  # type: ignore[attr-defined]
    try:
        yield Handler
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def smtp_sink() -> Iterator[Any]:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    class Handler:
        def __init__(self) -> None:
            self.messages: list[tuple[str, list[str], bytes]] = []
            self.logins: list[tuple[bytes, bytes]] = []

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
            return "250 OK"

    handler = Handler()

    def authenticator(
        server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> Any:
        if isinstance(auth_data, LoginPassword):
            handler.logins.append((auth_data.login, auth_data.password))
            return AuthResult(success=auth_data.password == b"s3cret")
        return AuthResult(success=False)

    port = free_port()
    ctl = Controller(
        handler,
        hostname="127.0.0.1",
        port=port,
        authenticator=authenticator,
        auth_require_tls=False,
    )
    ctl.start()
    handler.port = port  # type: ignore[attr-defined]
    try:
        yield handler
    finally:
        ctl.stop()


class RetryOnce:
    name = "retry_once"

    @hookimpl
    def on_task_error(self, task: Any, run: Any, outcome: Any) -> RetryDecision | None:
        return RetryDecision(retry=True) if outcome.attempt == 1 else None


class Refuser:
    name = "refuser"

    @hookimpl
    def validate_pipeline(self, pipeline: Any, run: Any) -> None:
        if pipeline.name == "refused":
            run.manager.report_compliance_event(
                "clearance_violation",
                pipeline=pipeline.name,
                run_id=run.run_id,
                plugin="refuser",
                detail="extract -> load (restricted > clearance internal)",
            )
            raise ComplianceError("data flows above a task's clearance")


def nightly(fail: str | None = None, message: str = "disk full", sleep: float = 0.0) -> Pipeline:
    p = Pipeline("nightly")

    @p.task("extract")
    def extract() -> int:
        return 1

    @p.task("load_orders", depends_on=["extract"])
    def load_orders(x: int) -> int:
        if sleep:
            time.sleep(sleep)
        if fail == "load_orders":
            raise RuntimeError(message)
        return x

    @p.task("report", depends_on=["load_orders"])
    def report(x: int) -> int:
        return x

    return p


def alerting(url: str, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "alerting": {
            "channels": [{"type": "webhook", "url": url + "/hook"}],
            "state_file": str(tmp_path / "alerting.json"),
            "backoff_seconds": 0.01,
            **extra,
        }
    }


def make(config: dict[str, Any], *extra: object) -> PipelineManager:
    return PipelineManager(
        config, plugins=[AlertingPlugin(), RetryOnce(), Refuser(), *extra], entry_points=False
    )


def bodies(sink: Any) -> list[Any]:
    return [r[3] for r in sink.requests]


class TestWebhook:
    def test_run_failed_then_resolved(self, http_sink: Any, tmp_path: Path) -> None:
        with make(alerting(http_sink.url, tmp_path)) as pm:
            bad = pm.execute_pipeline(nightly(fail="load_orders"))
            assert not bad.success
        [firing] = bodies(http_sink)
        assert http_sink.requests[0][1] == "/hook"
        assert firing["status"] == "firing"
        assert firing["rule"] == "run_failed"
        assert firing["pipeline"] == "nightly"
        assert firing["task"] == "load_orders"
        assert firing["run_id"] == bad.run_id
        assert firing["error_class"] == "RuntimeError"
        assert firing["message"] == "disk full"
        assert firing["dedup_key"] == "nightly/load_orders/run_failed"
        assert firing["text"].startswith("[CRITICAL] run_failed nightly/load_orders")
        datetime.fromisoformat(firing["time"])
        # A new manager (the next nightly process) resolves it when the run succeeds.
        with make(alerting(http_sink.url, tmp_path)) as pm:
            ok = pm.execute_pipeline(nightly())
            assert ok.success
        resolved = bodies(http_sink)[1]
        assert resolved["status"] == "resolved"
        assert resolved["dedup_key"] == "nightly/load_orders/run_failed"
        assert resolved["run_id"] == ok.run_id
        # Resolved once only.
        with make(alerting(http_sink.url, tmp_path)) as pm:
            pm.execute_pipeline(nightly())
        assert len(http_sink.requests) == 2

    def test_task_rules_and_retries_exhausted(self, http_sink: Any, tmp_path: Path) -> None:
        rules = [
            {"on": "task_failed", "tasks": ["load_*"], "severity": "warning"},
            {"on": "task_failed", "tasks": ["report"]},
            {"on": "retries_exhausted"},
        ]
        with make(alerting(http_sink.url, tmp_path, rules=rules)) as pm:
            pm.execute_pipeline(nightly(fail="load_orders"))
        got = sorted((b["rule"], b["task"], b["severity"]) for b in bodies(http_sink))
        assert got == [
            ("retries_exhausted", "load_orders", "critical"),
            ("task_failed", "load_orders", "warning"),
        ]

    def test_no_task_rule_adds_no_task_hooks(self, http_sink: Any, tmp_path: Path) -> None:
        with make(alerting(http_sink.url, tmp_path)) as pm:
            assert not pm.hooks.has["before_task"]
            assert not pm.hooks.has["after_task"]
        with make(alerting(http_sink.url, tmp_path, rules=[{"on": "task_failed"}])) as pm:
            assert pm.hooks.has["after_task"]

    def test_sla_missed_fires_while_the_task_runs(self, http_sink: Any, tmp_path: Path) -> None:
        rules = [{"on": "sla_missed", "task": "load_orders", "seconds": 0.2}]
        seen_during: list[int] = []
        p = Pipeline("nightly")

        @p.task("load_orders")
        def load_orders() -> int:
            deadline = time.monotonic() + 10
            while not http_sink.requests and time.monotonic() < deadline:
                time.sleep(0.02)
            seen_during.append(len(http_sink.requests))
            return 1

        with make(alerting(http_sink.url, tmp_path, rules=rules)) as pm:
            assert pm.execute_pipeline(p).success
        assert seen_during == [1], "the SLA alert arrived while the task was still running"
        body = bodies(http_sink)[0]
        assert body["rule"] == "sla_missed"
        assert body["task"] == "load_orders"
        assert body["error_class"] == "SLAMissed"
        # The run then succeeded: the SLA alert is resolved.
        assert bodies(http_sink)[1]["status"] == "resolved"

    def test_sla_met_sends_nothing(self, http_sink: Any, tmp_path: Path) -> None:
        rules = [
            {"on": "sla_missed", "task": "load_*", "seconds": 30},
            {"on": "sla_missed", "seconds": 30},
        ]
        with make(alerting(http_sink.url, tmp_path, rules=rules)) as pm:
            assert pm.execute_pipeline(nightly()).success
        assert http_sink.requests == []

    def test_compliance_violation(self, http_sink: Any, tmp_path: Path) -> None:
        p = Pipeline("refused")

        @p.task("a")
        def a() -> int:
            return 1

        rules = [{"on": "compliance_violation"}]
        pm = make(alerting(http_sink.url, tmp_path, rules=rules))
        with pm, pytest.raises(ComplianceError):
            pm.execute_pipeline(p)
        kinds = sorted(b["error_class"] for b in bodies(http_sink))
        assert kinds == ["clearance_violation", "run_refused"]

    def test_token_from_env_goes_in_a_bearer_header(
        self, http_sink: Any, tmp_path: Path, monkeypatch: Any
    ) -> None:
        monkeypatch.setenv("HOOK_TOKEN", "t0ken")
        cfg = alerting(http_sink.url, tmp_path)
        cfg["alerting"]["channels"][0]["token_env"] = "HOOK_TOKEN"
        with make(cfg) as pm:
            pm.execute_pipeline(nightly(fail="load_orders"))
        headers = http_sink.requests[0][2]
        assert headers["Authorization"] == "Bearer t0ken"

    def test_url_from_a_file(self, http_sink: Any, tmp_path: Path) -> None:
        secret = tmp_path / "hook-url"
        secret.write_text(http_sink.url + "/T000/B000/XXXX\n")
        cfg = alerting(http_sink.url, tmp_path)
        cfg["alerting"]["channels"] = [{"type": "webhook", "url_file": str(secret)}]
        with make(cfg) as pm:
            pm.execute_pipeline(nightly(fail="load_orders"))
        assert http_sink.requests[0][1] == "/T000/B000/XXXX"

    def test_failing_channel_never_fails_or_blocks_the_run(
        self, http_sink: Any, tmp_path: Path, caplog: Any
    ) -> None:
        http_sink.status = 503
        cfg = alerting(http_sink.url, tmp_path, max_attempts=3)
        pm = make(cfg, _metrics_reader())
        result = pm.execute_pipeline(nightly(fail="load_orders"))
        assert result.status == "failed"  # the run's own outcome, untouched
        pm.close()
        assert len(http_sink.requests) == 3, "retried with backoff, then given up"
        assert "undeliverable on channel 'webhook-0' after 3 attempt(s): HTTP 503" in caplog.text
        samples = {
            (s.name, s.labels["channel"]): s.value
            for s in pm.get_plugin("alerting").collect_metrics()
        }
        assert samples[("xlib_pipeline_alerts_undeliverable_total", "webhook-0")] == 1
        assert samples[("xlib_pipeline_alerts_sent_total", "webhook-0")] == 0

    def test_bounded_queue_drops_and_counts(self, tmp_path: Path, caplog: Any) -> None:
        # A server that accepts and never answers: the sender is stuck on its first alert.
        with socket.socket() as srv:
            srv.bind(("127.0.0.1", 0))
            srv.listen(16)
            url = f"http://127.0.0.1:{srv.getsockname()[1]}"
            cfg = alerting(
                url,
                tmp_path,
                queue_size=2,
                max_attempts=1,
                timeout_seconds=20,  # stuck on the first alert for the whole run
                flush_timeout_seconds=0.5,
                rules=[{"on": "task_failed"}],
            )
            p = Pipeline("many")
            for k in range(6):

                @p.task(f"t{k}")
                def t() -> None:
                    raise ValueError("x")

            started = time.monotonic()
            pm = make(cfg)
            pm.execute_pipeline(p, parallel=False)
            assert time.monotonic() - started < 30
            plugin = pm.get_plugin("alerting")
            sender = plugin.senders["webhook-0"]
            pm.close()
        assert sender.dropped >= 3
        assert "queue of channel 'webhook-0' is full (2)" in caplog.text

    def test_pii_never_reaches_an_alert(self, http_sink: Any, tmp_path: Path) -> None:
        if importlib.util.find_spec("xlib_pipeline_classification") is None:
            pytest.skip("needs xlib-pipeline-classification")
        from xlib_pipeline_classification import ClassificationPlugin

        cfg = alerting(http_sink.url, tmp_path)
        cfg["classification"] = {"detect_pii": True}
        with make(cfg, ClassificationPlugin()) as pm:
            pm.execute_pipeline(
                nightly(fail="load_orders", message="bad row for jane.doe@example.com")
            )
        body = bodies(http_sink)[0]
        assert "jane.doe" not in json.dumps(body)
        assert body["message"] == "[redacted: confidential text with PII (email)]"


def _metrics_reader() -> object:
    class Nothing:
        name = "nothing"

    return Nothing()


class TestAlertmanager:
    def test_payload_matches_postable_alerts_and_resolves(
        self, http_sink: Any, tmp_path: Path
    ) -> None:
        cfg = {
            "alerting": {
                "channels": [
                    {
                        "type": "alertmanager",
                        "url": http_sink.url + "/",
                        "generator_url": "https://ci.example/job/nightly",
                    }
                ],
                "rules": [{"on": "run_failed"}, {"on": "task_failed", "tasks": ["load_*"]}],
                "state_file": str(tmp_path / "state.json"),
                "labels": {"team": "data-eng"},
            }
        }
        with make(cfg) as pm:
            bad = pm.execute_pipeline(nightly(fail="load_orders"), tenant_id="acme")
        with make(cfg) as pm:
            pm.execute_pipeline(nightly())
        assert [r[1] for r in http_sink.requests] == ["/api/v2/alerts"] * 4
        for r in http_sink.requests:
            jsonschema.validate(r[3], POSTABLE_ALERTS)
            for item in r[3]:
                for key in ("startsAt", "endsAt"):
                    datetime.fromisoformat(item[key])
        firing = [r[3][0] for r in http_sink.requests[:2]]
        resolved = [r[3][0] for r in http_sink.requests[2:]]
        by_rule = {a["labels"]["rule"]: a for a in firing}
        run_alert = by_rule["run_failed"]
        assert run_alert["labels"] == {
            "alertname": "XlibPipeline_run_failed",
            "pipeline": "nightly",
            "rule": "run_failed",
            "severity": "critical",
            "dedup_key": "nightly/load_orders/run_failed",
            "task": "load_orders",
            "team": "data-eng",
        }
        assert run_alert["annotations"]["run_id"] == bad.run_id
        assert run_alert["annotations"]["tenant"] == "acme"
        assert run_alert["annotations"]["error_class"] == "RuntimeError"
        assert run_alert["generatorURL"] == "https://ci.example/job/nightly"
        assert run_alert["endsAt"] > run_alert["startsAt"]
        # Resolved: same labels (Alertmanager's identity), endsAt now.
        assert {tuple(sorted(a["labels"].items())) for a in resolved} == {
            tuple(sorted(a["labels"].items())) for a in firing
        }
        for a in resolved:
            assert a["endsAt"] == a["startsAt"]


class TestEmail:
    def test_mail_reaches_a_real_smtp_server(
        self, smtp_sink: Any, tmp_path: Path, monkeypatch: Any
    ) -> None:
        monkeypatch.setenv("SMTP_PASSWORD", "s3cret")
        cfg = {
            "alerting": {
                "channels": [
                    {
                        "type": "email",
                        "smtp_host": "127.0.0.1",
                        "smtp_port": smtp_sink.port,
                        "from": "pipelines@example.org",
                        "to": ["oncall@example.org"],
                        "username": "alerts",
                        "password_env": "SMTP_PASSWORD",
                    }
                ],
                "state_file": str(tmp_path / "state.json"),
            }
        }
        with make(cfg) as pm:
            bad = pm.execute_pipeline(nightly(fail="load_orders"))
        [(sender, rcpts, raw)] = smtp_sink.messages
        assert sender == "pipelines@example.org"
        assert rcpts == ["oncall@example.org"]
        assert smtp_sink.logins == [(b"alerts", b"s3cret")]
        msg = message_from_bytes(raw)
        assert msg["Subject"].startswith("[xlib-pipeline] [CRITICAL] run_failed nightly/load")
        body = msg.get_payload()
        assert f"run_id: {bad.run_id}" in body
        assert "dedup_key: nightly/load_orders/run_failed" in body


class TestConfig:
    @pytest.mark.parametrize(
        ("section", "message"),
        [
            ({"channels": []}, "must list at least one channel"),
            ({"channels": [{"type": "pager"}]}, "'type' must be one of"),
            (
                {"channels": [{"type": "webhook", "url": "https://h/x", "token": "abc"}]},
                "'token' would put a secret in the config in clear",
            ),
            (
                {
                    "channels": [
                        {
                            "type": "email",
                            "smtp_host": "h",
                            "from": "a@b",
                            "to": ["c@d"],
                            "username": "u",
                            "password": "p",
                        }
                    ]
                },
                "give password_env",
            ),
            (
                {
                    "channels": [
                        {
                            "type": "webhook",
                            "url": "https://h/x",
                            "headers": {"Authorization": "Bearer x"},
                        }
                    ]
                },
                "Authorization header is a secret",
            ),
            (
                {
                    "channels": [
                        {
                            "type": "webhook",
                            "url": "https://h/x",
                            "token_env": "XLIB_NOT_SET_ANYWHERE",
                        }
                    ]
                },
                "'XLIB_NOT_SET_ANYWHERE' (token_env) is not set",
            ),
            ({"channels": [{"type": "webhook", "url": "h/x"}]}, "http(s) URL"),
            (
                {
                    "channels": [{"type": "webhook", "url": "https://h"}],
                    "rules": [{"on": "sla_missed", "task": "x"}],
                },
                "needs 'seconds'",
            ),
            (
                {
                    "channels": [{"type": "webhook", "url": "https://h"}],
                    "rules": [{"on": "task_faild"}],
                },
                "'on' must be one of",
            ),
            (
                {
                    "channels": [{"type": "webhook", "url": "https://h"}],
                    "rules": [{"on": "run_failed", "taks": ["a"]}],
                },
                "did you mean 'tasks'",
            ),
            (
                {"channels": [{"type": "webhook", "url": "https://h"}], "queue_size": 0},
                "queue_size' must be a positive integer",
            ),
        ],
    )
    def test_bad_config_names_the_entry(self, section: dict[str, Any], message: str) -> None:
        with pytest.raises(ConfigError, match="alerting") as info:
            make({"alerting": section})
        assert message in str(info.value)


class TestCli:
    def _cli(self, *args: str, env: dict[str, str] | None = None) -> Any:
        return subprocess.run(
            [sys.executable, "-m", "xlib_pipeline.cli", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **(env or {})},
        )

    def test_alerts_test_sends_to_every_channel(
        self, http_sink: Any, smtp_sink: Any, tmp_path: Path
    ) -> None:
        cfg = tmp_path / "config.json"
        cfg.write_text(
            json.dumps(
                {
                    "alerting": {
                        "channels": [
                            {"type": "webhook", "name": "chat", "url": http_sink.url + "/hook"},
                            {"type": "alertmanager", "name": "am", "url": http_sink.url},
                            {
                                "type": "email",
                                "name": "oncall",
                                "smtp_host": "127.0.0.1",
                                "smtp_port": smtp_sink.port,
                                "from": "a@example.org",
                                "to": "b@example.org",
                            },
                        ],
                        "state_file": str(tmp_path / "state.json"),
                    }
                }
            )
        )
        proc = self._cli("alerts", "test", "--config", str(cfg))
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines() == [
            "sent    chat (webhook)",
            "sent    am (alertmanager)",
            "sent    oncall (email)",
        ]
        assert sorted(r[1] for r in http_sink.requests) == ["/api/v2/alerts", "/hook"]
        assert bodies(http_sink)[0]["rule"] == "test" or bodies(http_sink)[1]
        assert len(smtp_sink.messages) == 1

    def test_alerts_test_reports_a_failing_channel(self, tmp_path: Path) -> None:
        cfg = tmp_path / "config.json"
        cfg.write_text(
            json.dumps(
                {
                    "alerting": {
                        "channels": [
                            {"type": "webhook", "url": f"http://127.0.0.1:{free_port()}/x"}
                        ],
                        "max_attempts": 2,
                        "backoff_seconds": 0.01,
                    }
                }
            )
        )
        proc = self._cli("alerts", "test", "--config", str(cfg))
        assert proc.returncode == 1
        assert proc.stdout.startswith("FAILED  webhook-0 (webhook): cannot reach http://127.0.0.1:")

    def test_alerts_test_without_alerting_section(self, tmp_path: Path) -> None:
        cfg = tmp_path / "config.json"
        cfg.write_text("{}")
        proc = self._cli("alerts", "test", "--config", str(cfg))
        assert proc.returncode == 2
        assert "has no 'alerting' section" in proc.stderr


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 (also its own CA) and its key."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "xlib test smtp")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


class TestStartTls:
    def test_starttls_with_a_private_ca(self, tmp_path: Path, monkeypatch: Any) -> None:
        import ssl

        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        cert, key = _self_signed(tmp_path)
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(cert, key)
        got: list[bytes] = []
        secure: list[bool] = []

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                secure.append(session.ssl is not None)
                got.append(envelope.content)
                return "250 OK"

        def auth(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
            ok = isinstance(data, LoginPassword) and data.password == b"pw"
            return AuthResult(success=ok)

        port = free_port()
        ctl = Controller(
            Handler(),
            hostname="127.0.0.1",
            port=port,
            tls_context=server_ctx,
            require_starttls=True,
            authenticator=auth,
        )
        ctl.start()
        monkeypatch.setenv("SMTP_PW", "pw")
        channel = {
            "type": "email",
            "smtp_host": "127.0.0.1",
            "smtp_port": port,
            "starttls": True,
            "ca_file": str(cert),
            "username": "u",
            "password_env": "SMTP_PW",
            "from": "a@example.org",
            "to": ["b@example.org"],
        }
        try:
            cfg = {"alerting": {"channels": [channel], "state_file": str(tmp_path / "s.json")}}
            with make(cfg) as pm:
                pm.execute_pipeline(nightly(fail="load_orders"))
            # Without the private CA the server's certificate is refused: nothing is sent.
            untrusted = {k: v for k, v in channel.items() if k != "ca_file"}
            cfg = {
                "alerting": {
                    "channels": [untrusted],
                    "max_attempts": 1,
                    "state_file": str(tmp_path / "s2.json"),
                }
            }
            pm = make(cfg)
            pm.execute_pipeline(nightly(fail="load_orders"))
            pm.close()
            sender = pm.get_plugin("alerting").senders["email-0"]
        finally:
            ctl.stop()
        assert secure == [True] and len(got) == 1
        assert b"run_failed nightly/load_orders" in got[0]
        assert sender.failed == 1 and sender.sent == 0
