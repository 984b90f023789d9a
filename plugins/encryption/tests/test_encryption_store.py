"""Encryption with the run store: nothing readable at rest, bound rows, rotation, CLI."""

from __future__ import annotations

import json
import sqlite3
import stat

import pytest
from xlib_pipeline_encryption import add_key, generate_key_file, key_id_of, rotate_store

from xlib_pipeline import ENCRYPTED_MAGIC, Pipeline, PipelineManager, SecurityError
from xlib_pipeline.cli import main as cli

MARKER = "MARKER-c0ffee-DO-NOT-STORE"


def config(tmp_path, keyfile=None, **security):
    cfg = {
        "store": {"path": str(tmp_path / "runs.sqlite")},
        "security": {"encryption_at_rest": True, **security},
    }
    if keyfile is not None:
        cfg["encryption"] = {"keyring": {"file": str(keyfile)}}
    return cfg


def build(flaky=None):
    p = Pipeline("secure")

    @p.task("extract", tenant_id="acme")
    def extract():
        return {"ssn": MARKER, "rows": list(range(100))}

    @p.task("report", tenant_id="globex")
    def report():
        return MARKER + "-globex"

    @p.task("combine", depends_on=["extract", "report"])
    def combine(a, b):
        if flaky is not None and flaky["fail"]:
            raise RuntimeError("transient")
        return {"n": len(a["rows"]), "b": b}

    return p


def raw_bytes(tmp_path) -> bytes:
    return b"".join(f.read_bytes() for f in tmp_path.glob("runs.sqlite*"))


def outputs(tmp_path):
    with sqlite3.connect(tmp_path / "runs.sqlite") as c:
        return c.execute(
            "SELECT run_id, task, tenant, output FROM tasks WHERE output IS NOT NULL"
        ).fetchall()


class TestAtRest:
    def test_store_file_holds_no_plaintext(self, tmp_path):
        """The SQLite file (and its WAL) never contains an encrypted output's plaintext."""
        with PipelineManager(config(tmp_path)) as pm:
            result = pm.execute_pipeline(build())
        assert result.success and result.final_result["b"] == MARKER + "-globex"
        assert MARKER.encode() not in raw_bytes(tmp_path)
        rows = outputs(tmp_path)
        assert len(rows) == 3 and all(bytes(r[3]).startswith(ENCRYPTED_MAGIC) for r in rows)

    def test_only_marked_tasks_without_at_rest(self, tmp_path):
        """Without at-rest, only pm.encrypt_data tasks are encrypted in the store."""
        cfg = {"store": {"path": str(tmp_path / "runs.sqlite")}}
        with PipelineManager(cfg) as pm:
            p = Pipeline("mixed")

            @p.task("secret")
            @pm.encrypt_data(tenant_id="acme")
            def secret():
                return MARKER

            @p.task("public")
            def public():
                return "PUBLIC-VALUE"

            assert pm.execute_pipeline(p).success
        data = raw_bytes(tmp_path)
        assert MARKER.encode() not in data
        assert b"PUBLIC-VALUE" in data

    def test_ciphertext_copied_to_another_row_fails(self, tmp_path):
        """A ciphertext copied into another task's or tenant's row is refused on resume."""
        flaky = {"fail": True}
        with PipelineManager(config(tmp_path)) as pm:
            first = pm.execute_pipeline(build(flaky))
        assert not first.success
        with sqlite3.connect(tmp_path / "runs.sqlite") as c:
            (blob,) = c.execute(
                "SELECT output FROM tasks WHERE task='extract' AND run_id=?", (first.run_id,)
            ).fetchone()
            c.execute(
                "UPDATE tasks SET output=? WHERE task='report' AND run_id=?",
                (blob, first.run_id),
            )
        flaky["fail"] = False
        with PipelineManager(config(tmp_path)) as pm, pytest.raises(SecurityError) as info:
            pm.execute_pipeline(build(flaky), resume=first.run_id)
        msg = str(info.value)
        assert "'report'" in msg and "'globex'" in msg and MARKER not in msg


class TestRotationWithStore:
    def test_rotate_rewraps_and_old_runs_resume(self, tmp_path, capsys):
        """After adding a key and rotating, every stored key is re-wrapped; resume works."""
        keyfile = tmp_path / "secrets" / "ring.json"
        first = generate_key_file(keyfile)
        flaky = {"fail": True}
        with PipelineManager(config(tmp_path, keyfile)) as pm:
            failed = pm.execute_pipeline(build(flaky))
        assert {key_id_of(bytes(r[3])) for r in outputs(tmp_path)} == {first.id}
        second = add_key(keyfile)
        with PipelineManager(config(tmp_path, keyfile)) as pm:
            report = rotate_store(pm)
        # 2 outputs, and the failed attempt's error, traceback and the run's error
        assert report.rewrapped == 5 and report.active_key_id == second.id
        assert {key_id_of(bytes(r[3])) for r in outputs(tmp_path)} == {second.id}
        # Retire the old key: the rotated run still resumes.
        ring = json.loads(keyfile.read_text())
        ring["keys"] = [k for k in ring["keys"] if k["id"] == second.id]
        keyfile.write_text(json.dumps(ring))
        flaky["fail"] = False
        with PipelineManager(config(tmp_path, keyfile)) as pm:
            resumed = pm.execute_pipeline(build(flaky), resume=failed.run_id)
            again = rotate_store(pm)
        assert resumed.success and resumed.final_result["n"] == 100
        assert again.rewrapped == 0 and again.current == 6  # carried rows share a blob
        # the failed run's error text still reads with only the new key
        capsys.readouterr()
        store = str(tmp_path / "runs.sqlite")
        assert cli(["runs", "show", failed.run_id, "--store", store, "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert "transient" in shown["tasks"]["combine"]["error"]

    def test_old_runs_resume_without_rotation(self, tmp_path):
        """Old keys keep decrypting after a new key is added (no rotation needed to read)."""
        keyfile = tmp_path / "secrets" / "ring.json"
        generate_key_file(keyfile)
        flaky = {"fail": True}
        with PipelineManager(config(tmp_path, keyfile)) as pm:
            failed = pm.execute_pipeline(build(flaky))
        second = add_key(keyfile)
        flaky["fail"] = False
        with PipelineManager(config(tmp_path, keyfile)) as pm:
            resumed = pm.execute_pipeline(build(flaky), resume=failed.run_id)
        assert resumed.success
        new_rows = [r for r in outputs(tmp_path) if r[0] == resumed.run_id and r[1] == "combine"]
        assert key_id_of(bytes(new_rows[0][3])) == second.id


class TestCli:
    def test_generate_list_add_rotate(self, tmp_path, capsys):
        """keys generate/list/add/rotate work end to end and never print key material."""
        keyfile = tmp_path / "secrets" / "ring.json"
        assert cli(["keys", "generate", str(keyfile)]) == 0
        assert stat.S_IMODE(keyfile.stat().st_mode) == 0o600
        assert cli(["keys", "generate", str(keyfile)]) == 2  # refuses to overwrite
        cfg = config(tmp_path, keyfile)
        with PipelineManager(cfg) as pm:
            assert pm.execute_pipeline(build()).success
        assert cli(["keys", "add", str(keyfile)]) == 0
        cfg_file = tmp_path / "cfg.json"
        cfg_file.write_text(json.dumps(cfg))
        capsys.readouterr()
        assert cli(["keys", "rotate", "--config", str(cfg_file), "--dry-run"]) == 0
        assert "would re-wrap 3" in capsys.readouterr().out
        assert cli(["keys", "rotate", "--config", str(cfg_file)]) == 0
        assert "re-wrapped 3" in capsys.readouterr().out
        assert cli(["keys", "list", str(keyfile), "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert len(listed["keys"]) == 2 and listed["active"] == listed["keys"][-1]
        material = [k["key"] for k in json.loads(keyfile.read_text())["keys"]]
        out = capsys.readouterr()
        assert not any(m in out.out + out.err for m in material)


class TestNoStoreConfigured:
    """Encryption at rest never does nothing silently: no store means the default store."""

    def _run(self, pm):
        p = Pipeline("no-store")

        @p.task("secret")
        def secret():
            return {"note": MARKER}

        result = pm.execute_pipeline(p)
        assert result.success, result.error
        return result

    def test_at_rest_without_store_uses_the_embedded_default(self, tmp_path):
        with PipelineManager({"security": {"encryption_at_rest": True}}) as pm:
            self._run(pm)
            path = pm.store.path
        assert path == tmp_path / "home" / "runs.sqlite"
        with sqlite3.connect(path) as conn:
            (blob,) = conn.execute("SELECT output FROM tasks WHERE task = 'secret'").fetchone()
        assert bytes(blob).startswith(ENCRYPTED_MAGIC)
        raw = b"".join(f.read_bytes() for f in path.parent.glob("runs.sqlite*"))
        assert MARKER.encode() not in raw
        (key,) = (tmp_path / "keys").glob("*.json")
        assert stat.S_IMODE(key.stat().st_mode) == 0o600

    def test_encrypt_data_without_store_uses_the_embedded_default(self, tmp_path):
        with PipelineManager() as pm:
            p = Pipeline("marked")

            @p.task("secret")
            @pm.encrypt_data(tenant_id="acme")
            def secret():
                return {"note": MARKER}

            assert pm.execute_pipeline(p).success
            assert pm.store is not None
        raw = (tmp_path / "home" / "runs.sqlite").read_bytes()
        assert MARKER.encode() not in raw

    def test_store_false_warns_once_naming_the_key(self):
        import warnings

        from xlib_pipeline import SettingWithoutEffectWarning

        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            with PipelineManager({"security": {"encryption_at_rest": True}, "store": False}) as pm:
                self._run(pm)
                self._run(pm)
                assert pm.store is None
        ours = [x for x in w if x.category is SettingWithoutEffectWarning]
        assert len(ours) == 1
        assert "security.encryption_at_rest" in str(ours[0].message)
        assert "store: false" in str(ours[0].message)


class TestErrorTexts:
    def test_error_message_and_traceback_are_encrypted_at_rest(self, tmp_path, capsys):
        """A failed attempt's message quotes data: only its class stays in clear, and
        `runs show` decrypts it for a reader who may see the run."""
        leak = "cy@example.net-" + MARKER
        p = Pipeline("leaky")

        @p.task("load")
        def load():
            raise ValueError(f"bad record {{'ssn': '{leak}'}}")

        with PipelineManager(config(tmp_path)) as pm:
            result = pm.execute_pipeline(p)
        assert not result.success
        assert leak.encode() not in raw_bytes(tmp_path), "an error text is stored in clear"
        with sqlite3.connect(tmp_path / "runs.sqlite") as c:
            error_type, error, tb = c.execute(
                "SELECT error_type, error, traceback FROM tasks WHERE task='load'"
            ).fetchone()
            (run_error,) = c.execute("SELECT error FROM runs").fetchone()
        assert error_type == "ValueError"
        assert isinstance(error, bytes) and error.startswith(ENCRYPTED_MAGIC)
        assert isinstance(tb, bytes) and isinstance(run_error, bytes)
        store = str(tmp_path / "runs.sqlite")
        assert cli(["runs", "show", result.run_id, "--store", store, "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert leak in shown["tasks"]["load"]["error"]
        assert shown["error"] is not None and leak in shown["error"]
        assert cli(["runs", "list", "--store", store, "--json"]) == 0
        assert leak not in capsys.readouterr().out
