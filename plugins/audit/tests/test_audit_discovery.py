"""The installed plugin is discovered, listed, and its CLI and guide usage work."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import xlib_pipeline_audit
from xlib_pipeline_audit import read, verify

from xlib_pipeline import Pipeline, PipelineManager

GUIDE = Path("/work/shared/seed/pipeline-manager-user-guide.md")


class TestDiscovery:
    def test_listed_with_version_and_hooks(self):
        """PipelineManager().plugins lists the installed audit plugin with version and hooks."""
        pm = PipelineManager()
        info = next(i for i in pm.plugins if i.name == "audit")
        assert info.dist == "xlib-pipeline-audit"
        assert info.version == xlib_pipeline_audit.__version__
        for hook in ("configure", "register_config_keys", "register_cli_commands"):
            assert hook in info.hooks
        assert pm.has_plugin("audit")
        assert pm.get_plugin("audit").path is None  # inert without config

    def test_cli_show(self, tmp_path, capsys):
        """`audit show` filters records and prints JSON lines or a table."""
        from xlib_pipeline.cli import main

        path = tmp_path / "a.jsonl"
        pm = PipelineManager({"audit": {"path": str(path)}})
        p = Pipeline("shown")
        p.add_task("a", lambda: 1)
        p.add_task("b", lambda x: x, depends_on=["a"])
        run_id = pm.execute_pipeline(p).run_id
        pm.close()
        capsys.readouterr()
        assert main(["audit", "show", str(path), "--task", "b", "--json"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert [json.loads(x)["action"] for x in lines] == ["task.started", "task.finished"]
        assert main(["audit", "show", str(path), "--action", "run.", "--json"]) == 0
        assert len(capsys.readouterr().out.splitlines()) == 2
        assert main(["audit", "show", str(path), "--run", run_id[:8], "--json"]) == 0
        assert len(capsys.readouterr().out.splitlines()) == 6
        assert main(["audit", "show", str(path), "--since", "2999-01-01", "--json"]) == 0
        assert capsys.readouterr().out == ""
        assert main(["audit", "show", str(path), "--until", "2999-01-01T00:00:00"]) == 0
        assert "(6 record(s))" in capsys.readouterr().out
        now = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 3600))
        assert len(list(read(path, until=now, tenant=None))) == 6


@pytest.mark.skipif(not GUIDE.exists(), reason="user guide not available")
class TestGuideMultiTenant:
    def test_audit_part_of_enterprise_example(self, tmp_path, request):
        """The guide's multi-tenant pattern (pm.audit_log under @task) with audit keys only."""
        text = GUIDE.read_text()
        assert "@self.pm.audit_log(tenant_id=tenant_id)" in text
        assert re.search(r'audit_log\(tenant_id=tenant_id, operation="data_storage"\)', text)

        class Enterprise:
            def __init__(self) -> None:
                self.pm = PipelineManager({"audit_logging": True})

            def build(self, tenant_id: str) -> Pipeline:
                p = Pipeline(f"{tenant_id}_data_processing")

                @p.task("validate_tenant_access")
                @self.pm.audit_log(tenant_id=tenant_id)
                def validate_tenant_access():
                    return {"tenant_id": tenant_id, "access_granted": True}

                @p.task("store_tenant_results", depends_on=["validate_tenant_access"])
                @self.pm.audit_log(tenant_id=tenant_id, operation="data_storage")
                def store_tenant_results(v):
                    return {"stored_records": 1, "tenant": v["tenant_id"]}

                return p

        ent = Enterprise()
        request.addfinalizer(ent.pm.close)  # its trail and the trail's flusher thread
        results = {t: ent.pm.execute_pipeline(ent.build(t)) for t in ("corp_a", "startup_b")}
        assert all(r["success"] for r in results.values())
        path = ent.pm.get_plugin("audit").path
        assert verify(path).ok
        stored = list(read(path, task="store_tenant_results", action="task.finished"))
        assert {(r["tenant"], r["operation"]) for r in stored} == {
            ("corp_a", "data_storage"),
            ("startup_b", "data_storage"),
        }
        assert {r["tenant"] for r in read(path, task="validate_tenant_access")} == {
            "corp_a",
            "startup_b",
        }
