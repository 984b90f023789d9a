"""RBAC before a run, policies, quotas and fair sharing between tenants."""

from __future__ import annotations

import json
import threading
import time

import pytest
from xlib_pipeline_tenancy import Policy, QuotaExceededError, os_user

from xlib_pipeline import ConfigError, Pipeline, PipelineManager, SecurityError
from xlib_pipeline.cli import main as cli

BINDINGS = {
    "alice": {"acme": ["operator"]},
    "bob": {"acme": ["analyst"]},
    "carol": {"*": ["admin"]},
}


def rbac(**tenancy):
    return {
        "multi_tenant": True,
        "security": {"access_control": "rbac"},
        "tenancy": {"bindings": BINDINGS, **tenancy},
    }


def acme_pipeline(ran=None):
    p = Pipeline("acme_etl")

    @p.task("extract", tenant_id="acme")
    def extract():
        if ran is not None:
            ran.append("extract")
        return 1

    return p


class TestAccess:
    def test_principal_without_process_data_is_refused_before_running(self):
        """bob (read_data only) cannot run acme's pipeline: SecurityError, nothing ran."""
        ran: list[str] = []
        pm = PipelineManager(rbac())
        with pytest.raises(SecurityError) as info:
            pm.execute_pipeline(acme_pipeline(ran), principal="bob")
        assert ran == []
        err = info.value
        assert err.principal == "bob" and err.tenant == "acme"
        assert err.permission == "process_data"
        assert "'bob'" in str(err) and "'acme'" in str(err) and "extract" in str(err)
        assert pm.execute_pipeline(acme_pipeline(ran), principal="alice").success
        assert pm.execute_pipeline(acme_pipeline(ran), principal="carol").success
        assert ran == ["extract", "extract"]

    def test_denial_lands_in_audit_trail(self, tmp_path):
        """With the audit plugin installed, the refused run is in its trail."""
        pytest.importorskip("xlib_pipeline_audit")
        trail = tmp_path / "audit.jsonl"
        pm = PipelineManager({**rbac(), "audit_logging": True, "audit": {"path": str(trail)}})
        with pytest.raises(SecurityError):
            pm.execute_pipeline(acme_pipeline(), principal="bob")
        pm.close()
        text = trail.read_text()
        refused = [line for line in text.splitlines() if "run.refused" in line]
        assert refused and "SecurityError" in refused[0] and "bob" in refused[0]

    def test_default_policy_os_user_is_admin(self):
        """rbac without bindings: the OS user may run any tenant; another principal may not."""
        pm = PipelineManager({"security": {"access_control": "rbac"}})
        result = pm.execute_pipeline(acme_pipeline())
        assert result.success
        with pytest.raises(SecurityError, match="default policy"):
            pm.execute_pipeline(acme_pipeline(), principal="mallory")
        assert Policy().allows(os_user(), "anything", "process_data")

    def test_tenant_less_tasks_need_global_scope(self):
        """A task without a tenant needs the permission on scope '*'."""
        p = Pipeline("global")
        p.add_task("t", lambda: 1)
        pm = PipelineManager(rbac())
        with pytest.raises(SecurityError, match="tenant-less"):
            pm.execute_pipeline(p, principal="alice")
        assert pm.execute_pipeline(p, principal="carol").success

    def test_undeclared_tenant_refused(self):
        """When tenants are declared, a pipeline using another tenant is refused."""
        pm = PipelineManager(rbac(tenants={"globex": {}}))
        with pytest.raises(SecurityError, match="not declared"):
            pm.execute_pipeline(acme_pipeline(), principal="carol")

    def test_resume_needs_read_data(self, tmp_path):
        """Resuming a stored run needs read_data on its tenants as well."""
        store = {"path": str(tmp_path / "runs.sqlite")}
        roles = {"runner": ["process_data"]}
        cfg = rbac(roles=roles, bindings={"dave": {"acme": ["runner"]}, **BINDINGS})
        with PipelineManager({**cfg, "store": store}) as pm:
            first = pm.execute_pipeline(acme_pipeline(), principal="dave")
            assert first.success
            with pytest.raises(SecurityError, match="read_data"):
                pm.execute_pipeline(acme_pipeline(), principal="dave", resume=first.run_id)
            assert pm.execute_pipeline(
                acme_pipeline(), principal="alice", resume=first.run_id
            ).success

    @pytest.mark.parametrize("suffix", [".json", ".toml", ".yaml"])
    def test_policy_file(self, tmp_path, suffix):
        """A policy file (JSON, TOML or YAML) supplies tenants, roles and bindings."""
        path = tmp_path / f"policy{suffix}"
        if suffix == ".json":
            path.write_text(json.dumps({"bindings": {"erin": {"acme": ["operator"]}}}))
        elif suffix == ".toml":
            path.write_text('[bindings.erin]\nacme = ["operator"]\n')
        else:
            path.write_text("bindings:\n  erin:\n    acme: [operator]\n")
        pm = PipelineManager(
            {"security": {"access_control": "rbac"}, "tenancy": {"policy_file": str(path)}}
        )
        assert pm.execute_pipeline(acme_pipeline(), principal="erin").success
        with pytest.raises(SecurityError):
            pm.execute_pipeline(acme_pipeline(), principal="alice")

    def test_bad_policy(self, tmp_path):
        """Unknown roles and malformed tenants are config errors naming them."""
        with pytest.raises(ConfigError, match="unknown role"):
            PipelineManager({"tenancy": {"bindings": {"x": {"acme": ["wizard"]}}}})
        with pytest.raises(ConfigError, match="max_concurent"):
            PipelineManager({"tenancy": {"tenants": {"acme": {"max_concurent_tasks": 1}}}})
        with pytest.raises(ConfigError, match="does not exist"):
            PipelineManager({"tenancy": {"policy_file": str(tmp_path / "nope.yaml")}})
        with pytest.raises(ConfigError, match="access_control"):
            PipelineManager({"security": {"access_control": "abac"}})

    def test_cli_check(self, tmp_path, capsys):
        """tenants check allows or refuses (exit 2 with the reason)."""
        cfg = tmp_path / "cfg.json"
        cfg.write_text(json.dumps(rbac()))
        base = ["tenants", "check", "--config", str(cfg), "--tenant", "acme"]
        assert cli([*base, "--principal", "alice"]) == 0
        assert cli([*base, "--principal", "bob"]) == 2
        assert "access denied" in capsys.readouterr().err
        assert cli(["tenants", "list", "--config", str(cfg), "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert listed["bindings"]["bob"] == {"acme": ["analyst"]}


class TestQuotas:
    def _slow(self, name, tenant, log, n=3, delay=0.15, gate=None):
        p = Pipeline(name)
        deps = []
        if gate is not None:
            # Both runs are registered with the gate before their slow tasks start.
            p.add_task("gate", lambda: gate.wait(timeout=30), tenant_id=tenant)
            deps = ["gate"]
        for k in range(n):

            def body(*_, k=k):
                with log["lock"]:
                    log["now"][tenant] = log["now"].get(tenant, 0) + 1
                    log["peak"][tenant] = max(log["peak"].get(tenant, 0), log["now"][tenant])
                time.sleep(delay)
                with log["lock"]:
                    log["now"][tenant] -= 1
                return k

            p.add_task(f"t{k}", body, tenant_id=tenant, depends_on=deps)
        return p

    def _log(self):
        return {"lock": threading.Lock(), "now": {}, "peak": {}}

    def test_max_concurrent_tasks(self):
        """A tenant's max_concurrent_tasks caps its running tasks."""
        log = self._log()
        pm = PipelineManager({"tenancy": {"tenants": {"acme": {"max_concurrent_tasks": 2}}}})
        assert pm.execute_pipeline(self._slow("q", "acme", log, n=6, delay=0.05)).success
        assert log["peak"]["acme"] == 2

    def test_max_concurrent_runs_refuse(self):
        """Over max_concurrent_runs with over_quota=refuse, a second run is refused."""
        log = self._log()
        pm = PipelineManager(
            {"tenancy": {"max_concurrent_runs": 1, "over_quota": "refuse"}, "multi_tenant": True}
        )
        first = threading.Thread(
            target=pm.execute_pipeline, args=(self._slow("r1", "acme", log, n=1, delay=0.4),)
        )
        first.start()
        deadline = time.time() + 5
        while not log["peak"] and time.time() < deadline:
            time.sleep(0.01)
        with pytest.raises(QuotaExceededError, match="max_concurrent_runs"):
            pm.execute_pipeline(self._slow("r2", "acme", log, n=1))
        first.join()
        assert pm.execute_pipeline(self._slow("r3", "acme", log, n=1)).success

    def test_max_concurrent_runs_wait(self):
        """With over_quota=wait, runs of one tenant run one after the other."""
        log = self._log()
        pm = PipelineManager({"tenancy": {"max_concurrent_runs": 1}})
        threads = [
            threading.Thread(
                target=pm.execute_pipeline, args=(self._slow(f"w{i}", "acme", log, n=2),)
            )
            for i in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert log["peak"]["acme"] == 2  # one run's two tasks, never both runs' four

    def test_concurrent_tenants_share_fairly(self):
        """Two tenants' runs at once each get half of max_workers, not all of it."""
        log = self._log()
        pm = PipelineManager({"multi_tenant": True, "max_workers": 4})
        results = {}

        gate = threading.Barrier(2)

        def go(tenant):
            results[tenant] = pm.execute_pipeline(self._slow(tenant, tenant, log, n=6, gate=gate))

        threads = [threading.Thread(target=go, args=(t,)) for t in ("acme", "globex")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(r.success for r in results.values())
        assert log["peak"]["acme"] <= 2 and log["peak"]["globex"] <= 2
        alone = self._log()
        pm.execute_pipeline(self._slow("solo", "acme", alone, n=6))
        assert alone["peak"]["acme"] == 4  # alone, a tenant uses every slot


class TestStoreReads:
    def test_reading_a_run_needs_read_data_on_its_tenant(self, tmp_path, capsys):
        """read_run and `runs show/list` apply the run's own policy to the reader."""
        db = tmp_path / "runs.sqlite"
        pm = PipelineManager({**rbac(), "store": {"path": str(db)}})
        result = pm.execute_pipeline(acme_pipeline(), principal="alice")
        assert result.success
        rec, tasks = pm.read_run(result.run_id, principal="bob")  # analyst: read_data
        assert rec.run_id == result.run_id and tasks["extract"].tenant == "acme"
        with pytest.raises(SecurityError, match="read_data") as info:
            pm.read_run(result.run_id, principal="mallory")
        assert info.value.tenant == "acme"
        pm.close()

        assert cli(["runs", "show", result.run_id, "--store", str(db), "--principal", "bob"]) == 0
        capsys.readouterr()
        code = cli(["runs", "show", result.run_id, "--store", str(db), "--principal", "mallory"])
        assert code == 2
        assert "access denied" in capsys.readouterr().err
        assert cli(["runs", "list", "--store", str(db), "--json", "--principal", "mallory"]) == 0
        assert json.loads(capsys.readouterr().out) == []
        assert cli(["runs", "list", "--store", str(db), "--json", "--principal", "alice"]) == 0
        assert [r["run_id"] for r in json.loads(capsys.readouterr().out)] == [result.run_id]
