"""Real pipeline runs with audit on: what is recorded, and what never is."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
from xlib_pipeline_audit import AuditPlugin, AuditTrailError, read, verify

from xlib_pipeline import (
    ComplianceError,
    ConfigError,
    Pipeline,
    PipelineManager,
    RetryDecision,
    hookimpl,
)

MARKER = "RAW-VALUE-MARKER-7f3a"


_OPENED: list[PipelineManager] = []


@pytest.fixture(autouse=True)
def _close_managers():
    """Close every manager a test made with ``_pm`` (many never close theirs): an open
    manager keeps its trail, and the trail's ``xlib-audit-sync`` flusher thread, alive."""
    yield
    while _OPENED:
        _OPENED.pop().close()


def _pm(config: dict, *extra: object) -> PipelineManager:
    pm = PipelineManager(config, entry_points=False, plugins=[AuditPlugin(), *extra])
    _OPENED.append(pm)
    return pm


class TestRun:
    def test_records_run_and_tasks_with_tenant_and_operation(self, tmp_path):
        """A run records start/finish of the run and of each task, labelled by pm.audit_log."""
        path = tmp_path / "a.jsonl"
        pm = _pm({"audit": {"path": str(path)}, "max_workers": 2})
        p = Pipeline("tenant_data")

        @p.task("validate")
        @pm.audit_log(tenant_id="tenant_a")
        def validate():
            return {"secret": MARKER}

        @p.task("store", depends_on=["validate"])
        @pm.audit_log(tenant_id="tenant_a", operation="data_storage")
        def store(v):
            return {"stored": v["secret"]}

        result = pm.execute_pipeline(p)
        assert result.success
        recs = list(read(path))
        actions = [(r["action"], r["task"], r["outcome"]) for r in recs]
        assert actions == [
            ("run.started", None, "started"),
            ("task.started", "validate", "started"),
            ("task.finished", "validate", "succeeded"),
            ("task.started", "store", "started"),
            ("task.finished", "store", "succeeded"),
            ("run.finished", None, "succeeded"),
        ]
        by_task = {(r["task"], r["action"]): r for r in recs if r["task"]}
        assert by_task[("store", "task.finished")]["operation"] == "data_storage"
        assert by_task[("store", "task.finished")]["tenant"] == "tenant_a"
        assert by_task[("validate", "task.started")]["tenant"] == "tenant_a"
        assert "operation" not in by_task[("validate", "task.started")]
        assert all(r["run_id"] == result.run_id and r["pipeline"] == "tenant_data" for r in recs)
        assert [r["seq"] for r in recs] == list(range(1, 7))
        assert MARKER not in path.read_text()
        assert verify(path).ok

    def test_failures_skips_and_error_class_only(self, tmp_path):
        """Failed, upstream_failed and skipped outcomes are recorded with the error class only."""
        path = tmp_path / "a.jsonl"
        pm = _pm({"audit": {"path": str(path)}})
        p = Pipeline("outcomes")

        @p.task("boom")
        def boom():
            raise KeyError(MARKER)

        @p.task("after", depends_on=["boom"])
        def after(x):
            return x

        @p.task("maybe", condition=lambda: False)
        def maybe():
            return 1

        pm.execute_pipeline(p, parallel=False)
        fin = {r["task"]: r for r in read(path, action="task.finished")}
        assert fin["boom"]["outcome"] == "failed"
        assert fin["boom"]["error_class"] == "KeyError"
        assert fin["after"]["outcome"] == "upstream_failed"
        assert fin["maybe"]["outcome"] == "skipped"
        (end,) = read(path, action="run.finished")
        assert end["outcome"] == "failed"
        assert end["counts"] == {"failed": 1, "upstream_failed": 1, "skipped": 1}
        assert MARKER not in path.read_text()

    def test_digests_opt_in(self, tmp_path):
        """Digests appear only when enabled, as an HMAC (SHA-256 unkeyed) of the value,
        never the value."""
        path = tmp_path / "a.jsonl"
        pm = _pm({"audit": {"path": str(path), "digests": True}})
        p = Pipeline("d")

        @p.task("src")
        def src():
            return MARKER

        @p.task("dst", depends_on=["src"])
        def dst(x):
            return len(x)

        pm.execute_pipeline(p, parallel=False)
        from xlib_pipeline_audit import digest

        recs = {(r["task"], r["action"]): r for r in read(path) if r["task"]}
        key = pm.get_plugin("audit").key  # keyed by default: digests are HMACs too
        assert key is not None
        assert recs[("src", "task.finished")]["output_digest"] == digest(MARKER, key)
        assert recs[("dst", "task.started")]["input_digest"] == digest((MARKER,), key)
        assert MARKER not in path.read_text()

        plain = tmp_path / "b.jsonl"
        _pm({"audit": {"path": str(plain)}}).execute_pipeline(p, parallel=False)
        assert not any("input_digest" in r or "output_digest" in r for r in read(plain))

    def test_retry_attempts(self, tmp_path):
        """Each attempt gets its own outcome record with its attempt number."""

        class RetryOnce:
            name = "retry-once"

            @hookimpl
            def on_task_error(self, task, run, outcome):
                return RetryDecision(retry=True) if outcome.attempt == 1 else None

        path = tmp_path / "a.jsonl"
        pm = _pm({"audit": {"path": str(path)}}, RetryOnce())
        calls = []
        p = Pipeline("r")

        @p.task("flaky")
        def flaky():
            calls.append(1)
            if len(calls) == 1:
                raise ConnectionError("first")
            return 1

        assert pm.execute_pipeline(p, parallel=False).success
        recs = [r for r in read(path) if r["task"] == "flaky"]
        assert [(r["action"], r["attempt"], r["outcome"]) for r in recs] == [
            ("task.started", 1, "started"),
            ("task.finished", 1, "failed"),
            ("task.started", 2, "started"),
            ("task.finished", 2, "succeeded"),
        ]
        assert recs[1]["retrying"] is True and recs[1]["error_class"] == "ConnectionError"

    def test_refused_run(self, tmp_path):
        """A run refused by a validator is recorded as run.refused with the error class."""

        class Refuser:
            name = "refuser"

            @hookimpl
            def validate_pipeline(self, pipeline, run):
                raise ComplianceError("not today")

        path = tmp_path / "a.jsonl"
        pm = _pm({"audit": {"path": str(path)}}, Refuser())
        p = Pipeline("refused")
        p.add_task("a", lambda: 1)
        with pytest.raises(ComplianceError):
            pm.execute_pipeline(p)
        (rec,) = read(path)
        assert rec["action"] == "run.refused" and rec["outcome"] == "refused"
        assert rec["error_class"] == "xlib_pipeline.exceptions.ComplianceError"
        assert verify(path).ok

    def test_actor_from_config_and_principal(self, tmp_path):
        """actor comes from audit.actor, else the core's actor; a run's principal wins."""
        path = tmp_path / "a.jsonl"
        p = Pipeline("who")
        p.add_task("a", lambda: 1)
        _pm({"audit": {"path": str(path), "actor": "svc-etl"}}).execute_pipeline(p)
        _pm({"audit": {"path": str(path)}, "actor": "core-actor"}).execute_pipeline(p)
        _pm({"audit": {"path": str(path)}}).execute_pipeline(p, principal="alice")
        actors = [r["actor"] for r in read(path, action="run.started")]
        assert actors == ["svc-etl", "core-actor", "alice"]
        assert verify(path).ok


class TestDirectCalls:
    def test_direct_call_is_audited(self, tmp_path):
        """Calling an audit_log function directly writes call.started/call.finished."""
        path = tmp_path / "a.jsonl"
        pm = _pm({"audit": {"path": str(path)}})

        @pm.audit_log(tenant_id="t9", operation="export")
        def export(x):
            return {"v": x}

        assert export(MARKER) == {"v": MARKER}
        with pytest.raises(ZeroDivisionError):
            pm.audit_log(operation="div")(lambda: 1 / 0)()
        recs = list(read(path))
        assert [(r["action"], r["outcome"]) for r in recs] == [
            ("call.started", "started"),
            ("call.finished", "succeeded"),
            ("call.started", "started"),
            ("call.finished", "failed"),
        ]
        assert recs[0]["tenant"] == "t9" and recs[0]["operation"] == "export"
        assert recs[0]["function"].endswith("export")
        assert recs[3]["error_class"] == "ZeroDivisionError"
        assert MARKER not in path.read_text()
        pm.close()
        assert verify(path).ok

    def test_audit_everything_records_direct_calls_of_every_task_function(self, tmp_path):
        """audit_everything: calling any @pipeline.task function directly is audited once
        (pm.audit_log functions are not recorded twice); calls made by a run are not
        direct calls; after close nothing more is recorded."""
        path = tmp_path / "a.jsonl"
        pm = _pm({"audit": {"path": str(path)}, "audit_everything": True})
        p = Pipeline("direct")

        @p.task("double")
        def double(x=2):
            return x * 2

        @p.task("labelled")
        @pm.audit_log(operation="label")
        def labelled():
            return 1

        @p.task("broken")
        def broken():
            raise ValueError(MARKER)

        assert double(21) == 42 and labelled() == 1
        with pytest.raises(ValueError):
            broken()
        calls = [(r["action"], r.get("task"), r["outcome"]) for r in read(path)]
        assert calls == [
            ("call.started", "double", "started"),
            ("call.finished", "double", "succeeded"),
            ("call.started", None, "started"),
            ("call.finished", None, "succeeded"),
            ("call.started", "broken", "started"),
            ("call.finished", "broken", "failed"),
        ]
        before = len(calls)
        result = pm.execute_pipeline(p)
        assert result.tasks["double"].output == 4
        assert not [r for r in list(read(path))[before:] if r["action"].startswith("call.")]
        pm.close()
        double(1)
        assert not [r for r in list(read(path))[before:] if r["action"].startswith("call.")]
        assert MARKER not in path.read_text()
        assert verify(path).ok

    def test_a_call_after_close_is_audited_and_leaves_no_trail_open(self, tmp_path):
        """A pm.audit_log function called after pm.close() reopened the manager's trail,
        which nothing closed again: the file and its xlib-audit-sync thread stayed open until
        the process exited (one more per closed manager). The call is still audited, through
        a reference to the trail released as soon as its record is written."""
        from xlib_pipeline_audit._trail import registry

        path = tmp_path / "a.jsonl"
        pm = _pm({"audit": {"path": str(path), "fsync": "batch"}})

        @pm.audit_log(operation="late")
        def late():
            return 1

        assert late() == 1
        pm.close()
        before = set(threading.enumerate())
        assert late() == 1
        with pytest.raises(ZeroDivisionError):
            pm.audit_log(operation="div")(lambda: 1 / 0)()
        assert os.path.realpath(path) not in registry.open
        left = [t.name for t in set(threading.enumerate()) - before if t.name.startswith("xlib-")]
        assert not left, f"a call after close left {left} running"
        recs = list(read(path))
        assert [(r["action"], r.get("operation"), r["outcome"]) for r in recs[2:]] == [
            ("call.started", "late", "started"),
            ("call.finished", "late", "succeeded"),
            ("call.started", "div", "started"),
            ("call.finished", "div", "failed"),
        ]
        report = verify(path)
        assert report.ok and report.unanchored == 0

    def test_decorator_without_audit_config_uses_defaults(self, _audit_home):
        """pm.audit_log with no audit config is never ignored: the default trail records it."""
        pm = _pm({})

        @pm.audit_log(tenant_id="t1", operation="op")
        def f():
            return 3

        assert f() == 3
        p = Pipeline("x")
        p.task("f")(f)
        assert p["f"].options["audit"] == {"operation": "op"}
        assert p["f"].options["tenant_id"] == "t1"
        assert pm.execute_pipeline(p).success
        trail = _audit_home / "audit.jsonl"
        records = [json.loads(line) for line in trail.read_text().splitlines()]
        assert {r["action"] for r in records} >= {"call.started", "task.started"}
        assert all(r["tenant"] == "t1" for r in records if r.get("task") == "f")
        assert verify(trail).ok

    def test_decorator_with_audit_disabled_is_inert(self, tmp_path):
        """With audit: false, pm.audit_log attaches options and writes nothing."""
        pm = _pm({"audit": False})

        @pm.audit_log(tenant_id="t1", operation="op")
        def f():
            return 3

        assert f() == 3
        p = Pipeline("x")
        p.task("f")(f)
        assert pm.execute_pipeline(p).success
        assert not (tmp_path / "home").exists()


class TestConfig:
    @pytest.mark.parametrize("flag", ["audit_logging", "audit_everything"])
    def test_flags_turn_audit_on_with_defaults(self, flag, _audit_home):
        """Each guide flag enables the trail at data_dir()/audit.jsonl with fsync batch."""
        pm = _pm({flag: True})
        plugin = pm.get_plugin("audit")
        assert plugin.enabled and plugin.path == _audit_home / "audit.jsonl"
        assert plugin.settings.fsync == "batch"
        p = Pipeline("f")
        p.add_task("a", lambda: 1)
        pm.execute_pipeline(p)
        assert verify(plugin.path).ok

    def test_compliance_mode_needs_the_whole_set(self, _audit_home):
        """compliance_mode turns on more than audit: with only audit here it refuses by name."""
        from xlib_pipeline import MissingPluginConfigError

        with pytest.raises(MissingPluginConfigError) as info:
            _pm({"compliance_mode": True})
        assert "compliance_mode" in str(info.value) and "xlib-pipeline-" in str(info.value)

    def test_inert_without_keys(self, _audit_home):
        """No audit key: no hooks on the task path, no file, path is None."""
        pm = _pm({})
        plugin = pm.get_plugin("audit")
        assert not plugin.enabled and plugin.path is None and plugin.trail is None
        assert not pm.hooks.has["before_task"] and not pm.hooks.has["after_task"]
        p = Pipeline("f")
        p.add_task("a", lambda: 1)
        pm.execute_pipeline(p)
        assert not _audit_home.exists()
        assert not _pm({"audit_logging": False}).get_plugin("audit").enabled

    def test_bad_values(self, tmp_path, monkeypatch):
        """Bad settings are ConfigErrors naming the key and what was expected."""
        with pytest.raises(ConfigError, match=r"did you mean 'audit\.fsync'"):
            _pm({"audit": {"fsycn": "always"}})
        with pytest.raises(ConfigError, match="always"):
            _pm({"audit": {"fsync": "sometimes"}})
        with pytest.raises(ConfigError, match="batch_size"):
            _pm({"audit": {"batch_size": 0}})
        with pytest.raises(ConfigError, match="true or false"):
            _pm({"compliance_mode": "yes"})
        monkeypatch.delenv("NO_SUCH_AUDIT_KEY", raising=False)
        with pytest.raises(ConfigError, match="NO_SUCH_AUDIT_KEY"):
            _pm({"audit": {"hmac_key_env": "NO_SUCH_AUDIT_KEY"}})
        with pytest.raises(ConfigError, match="cannot read"):
            _pm({"audit": {"hmac_key_file": str(tmp_path / "missing.key")}})
        with pytest.raises(ConfigError, match="audit: false"):
            _pm({"audit": False, "compliance_mode": True})
        p = Pipeline("opt")
        p.add_task("a", lambda: 1, audit={"operaton": "x"})
        with pytest.raises(ValueError, match="operaton"):
            _pm({}).execute_pipeline(p)

    def test_key_file_and_task_option(self, tmp_path):
        """hmac_key_file keys the trail; the audit= task option labels a task."""
        key = tmp_path / "audit.key"
        key.write_bytes(b"file-key\n")
        path = tmp_path / "a.jsonl"
        pm = _pm({"audit": {"path": str(path), "hmac_key_file": str(key)}})
        p = Pipeline("k")
        p.add_task("a", lambda: 1, audit={"operation": "load", "tenant_id": "t3"})
        pm.execute_pipeline(p)
        rec = next(read(path, task="a"))
        assert rec["operation"] == "load" and rec["tenant"] == "t3"
        assert verify(path, key=b"file-key").ok
        assert not verify(path, key=b"file-key\n").ok


class TestProcessorsAndDestinations:
    def test_config_processors_and_destinations(self, tmp_path):
        """User processors add hashed fields; destinations get every written line."""
        seen: list[str] = []

        def add_site(logger, method, ev):
            ev["site"] = "eu-1"
            return ev

        path = tmp_path / "a.jsonl"
        pm = _pm(
            {"audit": {"path": str(path), "processors": [add_site], "destinations": seen.append}}
        )
        p = Pipeline("proc")
        p.add_task("a", lambda: 1)
        pm.execute_pipeline(p)
        recs = list(read(path))
        assert all(r["site"] == "eu-1" for r in recs)
        assert [json.loads(line)["seq"] for line in seen] == [r["seq"] for r in recs]
        assert verify(path).ok
        # the added field is covered by the hash
        text = path.read_text().replace('"site":"eu-1"', '"site":"us-1"', 1)
        path.write_text(text)
        assert not verify(path).ok

    def test_dotted_path_processor_and_python_api(self, tmp_path):
        """Processors may be given as 'module:attr'; add_destination works at run time."""
        path = tmp_path / "a.jsonl"
        pm = _pm(
            {
                "audit": {
                    "path": str(path),
                    "processors": ["structlog.processors:add_log_level"],
                }
            }
        )
        lines: list[str] = []
        pm.get_plugin("audit").add_destination(lines.append)
        p = Pipeline("proc")
        p.add_task("a", lambda: 1)
        pm.execute_pipeline(p)
        assert all(r["level"] == "info" for r in read(path))
        assert len(lines) == 4


class TestDurabilityAndRecovery:
    @pytest.mark.parametrize("policy", ["always", "batch", "never"])
    def test_every_policy_gives_an_anchored_chain(self, tmp_path, policy):
        """After a run the head anchor is at the last record, whatever the policy."""
        path = tmp_path / "a.jsonl"
        pm = _pm({"audit": {"path": str(path), "fsync": policy, "batch_size": 3}})
        p = Pipeline("pol")
        for i in range(5):
            p.add_task(f"t{i}", lambda: 1)
        pm.execute_pipeline(p)
        report = verify(path)
        assert report.ok and report.unanchored == 0 and report.head_seq == 12

    def test_batch_interval_moves_head(self, tmp_path):
        """With fsync batch, a lone record is synced and anchored within the interval."""
        from xlib_pipeline_audit import AuditTrail

        path = tmp_path / "a.jsonl"
        trail = AuditTrail(path, fsync="batch", batch_size=1000, batch_interval_ms=20)
        trail.append({"action": "test.one"})
        deadline = time.monotonic() + 10
        while verify(path).head_seq != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert verify(path).head_seq == 1
        trail.close()

    def test_truncated_trail_refuses_new_records(self, tmp_path):
        """A trail cut short of its head anchor is not silently extended."""
        path = tmp_path / "a.jsonl"
        p = Pipeline("t")
        p.add_task("a", lambda: 1)
        pm = _pm({"audit": {"path": str(path)}})
        pm.execute_pipeline(p)
        pm.close()
        lines = path.read_bytes().splitlines(keepends=True)
        path.write_bytes(b"".join(lines[:-1]))
        with pytest.raises(AuditTrailError, match="truncated"):
            _pm({"audit": {"path": str(path)}}).execute_pipeline(p)

    def test_torn_last_line_is_moved_aside(self, tmp_path):
        """A half-written last record (crash) is moved to .torn and the chain goes on."""
        path = tmp_path / "a.jsonl"
        p = Pipeline("t")
        p.add_task("a", lambda: 1)
        pm = _pm({"audit": {"path": str(path)}})
        pm.execute_pipeline(p)
        pm.close()
        with open(path, "ab") as fh:
            fh.write(b'{"action":"task.sta')
        assert not verify(path).ok
        pm2 = _pm({"audit": {"path": str(path)}})
        pm2.execute_pipeline(p)
        pm2.close()
        assert verify(path).ok
        assert (tmp_path / "a.jsonl.torn").read_bytes().startswith(b'{"action":"task.sta')

    def test_edited_trail_refuses_new_records(self, tmp_path):
        """An edited last record makes the writer refuse to append."""
        path = tmp_path / "a.jsonl"
        p = Pipeline("t")
        p.add_task("a", lambda: 1)
        pm = _pm({"audit": {"path": str(path)}})
        pm.execute_pipeline(p)
        pm.close()
        path.write_text(path.read_text().replace('"succeeded"', '"failed"'))
        with pytest.raises(AuditTrailError):
            _pm({"audit": {"path": str(path)}}).execute_pipeline(p)


class TestClassificationLevels:
    def test_levels_are_recorded_without_data(self, tmp_path):
        """With the classification plugin, each finished task records its output's level."""
        cls = pytest.importorskip("xlib_pipeline_classification")
        path = tmp_path / "a.jsonl"
        pm = PipelineManager(
            {"audit": {"path": str(path)}, "classification": {"detect_pii": True}},
            entry_points=False,
            plugins=[AuditPlugin(), cls.ClassificationPlugin()],
        )
        p = Pipeline("levels")
        p.add_task("public_stats", lambda: {"rows": 3}, classification="public")
        p.add_task("contacts", lambda: {"owner": "jane.doe@example.com"})
        assert pm.execute_pipeline(p).success
        pm.close()
        done = {r["task"]: r for r in read(path) if r["action"] == "task.finished"}
        assert done["public_stats"]["classification"] == "public"
        assert done["contacts"]["classification"] == "confidential"
        assert done["contacts"]["pii_detected"] == ["email"]
        assert "jane.doe" not in path.read_text()
        assert verify(path).ok


def test_a_stale_lease_taken_over_by_resume_is_audited(tmp_path):
    """A driver killed mid-run leaves its lease; the resume that takes it over says so in the
    audit trail, naming the previous owner's pid and host."""
    import os
    import sqlite3
    import subprocess
    import sys
    import textwrap

    db, trail = tmp_path / "runs.sqlite", tmp_path / "audit.jsonl"
    config = {"store": {"path": str(db)}, "audit": {"path": str(trail)}}
    script = tmp_path / "slow.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import time
            from xlib_pipeline import Pipeline, PipelineManager
            from xlib_pipeline_audit import AuditPlugin
            p = Pipeline("slow")
            p.add_task("a", lambda: 1)
            p.add_task("b", lambda x: time.sleep(60) or x, depends_on=["a"])
            pm = PipelineManager({config!r}, entry_points=False, plugins=[AuditPlugin()])
            pm.execute_pipeline(p)
            """
        )
    )
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, str(script)], env=env)
    rid = None
    try:
        deadline = time.monotonic() + 60
        while rid is None and time.monotonic() < deadline:
            if db.exists():
                with sqlite3.connect(db) as c:
                    try:
                        row = c.execute(
                            "SELECT run_id FROM tasks WHERE task='a' AND status='succeeded'"
                        ).fetchone()
                    except sqlite3.OperationalError:
                        row = None
                rid = row[0] if row else None
            time.sleep(0.05)
        assert rid is not None
    finally:
        proc.kill()
        proc.wait()
    p = Pipeline("slow")
    p.add_task("a", lambda: 1)
    p.add_task("b", lambda x: x, depends_on=["a"])
    with _pm(config) as pm:
        result = pm.execute_pipeline(p, resume=rid)
    assert result.success
    taken = [r for r in read(trail) if r["action"] == "run.lease_taken_over"]
    assert len(taken) == 1
    assert taken[0]["leased_run"] == rid and taken[0]["previous_owner"]["pid"] == proc.pid
    assert verify(trail).ok


def test_every_prune_is_an_audit_record(tmp_path):
    """runs prune (API and CLI) writes who pruned which runs and how many rows; a dry run
    writes nothing."""
    from xlib_pipeline.cli import main as cli_main

    db, trail = tmp_path / "runs.sqlite", tmp_path / "audit.jsonl"
    config = {"store": {"path": str(db)}, "audit": {"path": str(trail)}}
    p = Pipeline("pruned")
    p.add_task("a", lambda: 1)
    with _pm(config) as pm:
        ids = [pm.execute_pipeline(p).run_id for _ in range(4)]
        dry = pm.prune_runs(keep=3, dry_run=True)
        assert dry.dry_run and list(dry.runs) == [ids[0]]
        assert not [r for r in read(trail) if r["action"] == "runs.pruned"]
        report = pm.prune_runs(keep=3, principal="ops-oncall")
    assert list(report.runs) == [ids[0]]
    pruned = [r for r in read(trail) if r["action"] == "runs.pruned"]
    assert len(pruned) == 1
    assert pruned[0]["actor"] == "ops-oncall"
    assert pruned[0]["details"]["runs"] == [ids[0]] and pruned[0]["details"]["rows"] > 0
    (tmp_path / "cfg.json").write_text(json.dumps({"audit": {"path": str(trail)}}))
    code = cli_main(
        ["runs", "prune", "--keep", "1", "--store", str(db), "--config", str(tmp_path / "cfg.json")]
    )
    assert code == 0
    pruned = [r for r in read(trail) if r["action"] == "runs.pruned"]
    assert len(pruned) == 2 and sorted(pruned[1]["details"]["runs"]) == sorted(ids[1:3])
    assert verify(trail).ok
