"""Compliance on streams: audit per batch, OpenLineage STREAMING run, PII to a dead-letter
sink, encrypted checkpoints, a tenant and principal on every batch run: on each run store
backend (SQLite and PostgreSQL, tests/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from xlib_pipeline import Pipeline, PipelineManager

audit = pytest.importorskip("xlib_pipeline_audit", reason="needs xlib-pipeline-audit")
pytest.importorskip("xlib_pipeline_lineage", reason="needs xlib-pipeline-lineage")
pytest.importorskip("xlib_pipeline_classification", reason="needs xlib-pipeline-classification")
pytest.importorskip("xlib_pipeline_encryption", reason="needs xlib-pipeline-encryption")


def contacts() -> Pipeline:
    p = Pipeline("contacts")

    @p.task("parse")
    def parse(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return batch

    @p.task("publish", depends_on=["parse"], clearance="internal")
    def publish(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"id": r["id"], "ok": True} for r in rows]

    return p


def test_every_compliance_plugin_applies_per_batch(tmp_path: Path, store_backend: Any) -> None:
    rows = [{"id": i, "note": "hello"} for i in range(30)]
    rows[7]["note"] = "write to jane.doe@example.com"
    rows[22]["note"] = "mail bob@example.org"
    config = {
        "store": store_backend.section,
        "audit": {"path": str(tmp_path / "audit.jsonl")},
        "lineage": {"transport": {"type": "file", "path": str(tmp_path / "lineage.jsonl")}},
        "classification": {"detect_pii": True},
        "security": {"encryption_at_rest": True},
    }
    out: list[Any] = []
    dead: list[Any] = []
    with PipelineManager(config) as pm:
        s = pm.stream(
            contacts(),
            source=rows,
            sink=out.extend,
            dead_letter=dead.extend,
            batch_size=10,
            tenant_id="acme",
            principal="stream-bot",
        )
    assert s.status == "completed", s.error
    assert [r["id"] for r in out] == [i for i in range(30) if i not in (7, 22)]
    assert [d["record"]["id"] for d in dead] == [7, 22] and s.dead == 2
    assert all("clearance" in d["error"] and d["batch"] in (1, 3) for d in dead)

    # Audit: a verified trail with a record per committed batch carrying its offsets.
    assert audit.verify(tmp_path / "audit.jsonl").ok
    records = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    batches = [r for r in records if r["action"] == "stream.batch"]
    assert [b["offsets"] for b in batches] == [[0, 10], [10, 20], [20, 30]]
    assert [b["dead"] for b in batches] == [1, 0, 1]
    assert {b["actor"] for b in batches} == {"stream-bot"}
    assert {b["tenant"] for b in batches} == {"acme"}
    assert "jane.doe" not in (tmp_path / "audit.jsonl").read_text()
    started = [r for r in records if r["action"] == "run.started"]
    assert all(r["stream"]["name"] == "contacts" and r["tenant"] == "acme" for r in started)

    # Lineage: one STREAMING run, START, a RUNNING event per batch, COMPLETE.
    events = [json.loads(x) for x in (tmp_path / "lineage.jsonl").read_text().splitlines()]
    assert {e["run"]["runId"] for e in events} == {s.stream_run_id}
    assert [e["eventType"] for e in events] == [
        "START",
        "RUNNING",
        "RUNNING",
        "RUNNING",
        "COMPLETE",
    ]
    assert all(e["job"]["facets"]["jobType"]["processingType"] == "STREAMING" for e in events)
    assert events[2]["run"]["facets"]["xlibPipeline_stream"]["offsets"] == [10, 20]

    # Encryption: checkpointed outputs are ciphertext, under the stream's tenant.
    from xlib_pipeline import ENCRYPTED_MAGIC

    with PipelineManager(config) as pm:
        store: Any = pm.store
        ckpt = store.open_checkpoints()
        try:
            blobs = [b.output for b in ckpt.batches("contacts")]
        finally:
            ckpt.close()
        tenants = {r.tenant for r in store.list_runs()}
    assert blobs and all(b.startswith(ENCRYPTED_MAGIC) for b in blobs)
    assert tenants == {"acme"}


def test_without_a_dead_letter_sink_pii_stops_the_stream(
    tmp_path: Path, store_backend: Any
) -> None:
    rows = [{"id": 1, "note": "a@example.com"}]
    config = {
        "store": store_backend.section,
        "classification": {"detect_pii": True},
    }
    with PipelineManager(config) as pm:
        s = pm.stream(contacts(), source=rows, sink=None)
    assert s.status == "failed" and "clearance" in str(s.error) and s.batches == 0


def test_window_state_is_encrypted_in_the_checkpoint(tmp_path: Path, store_backend: Any) -> None:
    p = Pipeline("win")
    p.add_task("agg", lambda w: {"n": len(w)}, window={"size": 10, "field": "ts"})
    config = {
        "store": store_backend.section,
        "security": {"encryption_at_rest": True},
    }
    rows = [{"ts": t, "secret": "s3cr3t"} for t in (1, 2, 3)]
    with PipelineManager(config) as pm:
        pm.stream(p, source=rows, sink=None, max_batches=1, batch_size=3)
        ckpt = pm.store.open_checkpoints()  # type: ignore[union-attr]
        try:
            rec = ckpt.load("win")
        finally:
            ckpt.close()
    assert rec is not None
    state = rec.window_state
    assert state and b"s3cr3t" not in state
    out: list[Any] = []
    with PipelineManager(config) as pm:  # restored (decrypted) on restart
        s = pm.stream(p, source=rows, sink=out.extend, batch_size=3)
    assert s.status == "completed" and out == [{"n": 3}]


def test_a_stream_runs_as_a_principal_for_a_tenant(tmp_path: Path, store_backend: Any) -> None:
    pytest.importorskip("xlib_pipeline_tenancy", reason="needs xlib-pipeline-tenancy")
    config = {
        "store": store_backend.section,
        "security": {"access_control": "rbac"},
        "tenancy": {"bindings": {"alice": {"acme": ["operator"]}}},
    }
    rows = [{"id": i, "note": "x"} for i in range(5)]
    out: list[Any] = []
    with PipelineManager(config) as pm:
        ok = pm.stream(contacts(), source=rows, sink=out.extend, tenant_id="acme",
                       principal="alice", name="alice-acme")  # fmt: skip
        refused = pm.stream(contacts(), source=rows, sink=out.extend, tenant_id="globex",
                            principal="alice", name="alice-globex")  # fmt: skip
    assert ok.status == "completed" and len(out) == 5
    assert refused.status == "failed" and refused.batches == 0
    assert "alice" in str(refused.error) and "globex" in str(refused.error)


def _cli(*args: str) -> tuple[int, str]:
    import contextlib
    import io

    from xlib_pipeline.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue() + err.getvalue()


def test_cli_dead_letter_redaction_and_runs_show_access(tmp_path: Path) -> None:
    """The CLI quarantines PII with --dead-letter; a failed stream's error leaves (stderr,
    the store, runs show) redacted, shown as text (not rich markup); and runs show of a
    tenant's stream whose first batch failed (no committed batch) still applies the
    tenant's access policy, which it skipped."""
    pytest.importorskip("xlib_pipeline_tenancy", reason="needs xlib-pipeline-tenancy")
    (tmp_path / "pipe.py").write_text(
        "from xlib_pipeline import Pipeline\n"
        "p = Pipeline('contacts')\n"
        "@p.task('parse')\n"
        "def parse(batch):\n"
        "    return [r if isinstance(r['who'], list) else {}['who: ' + r['who']] for r in batch]\n"
        "@p.task('publish', depends_on=['parse'], clearance='internal')\n"
        "def publish(rows):\n"
        "    return [{'id': r['id'], 'who': r['who'][0]} for r in rows]\n"
    )
    (tmp_path / "cfg.json").write_text(
        json.dumps(
            {
                "classification": {"detect_pii": True},
                "security": {"access_control": "rbac"},
                "tenancy": {"bindings": {"alice": {"acme": ["operator"]}}},
            }
        )
    )
    rows = [{"id": 0, "who": ["x"]}, {"id": 1, "who": ["jane.doe@example.com"]}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "bad.jsonl").write_text('{"id": 2, "who": "jane.doe@example.com"}\n')
    store, common = str(tmp_path / "runs.sqlite"), ("--tenant", "acme", "--principal", "alice")
    base = ("stream", str(tmp_path / "pipe.py"), "--config", str(tmp_path / "cfg.json"))
    code, text = _cli(*base, "--source", f"jsonl:{tmp_path / 'in.jsonl'}", "--store", store,
                      "--dead-letter", f"jsonl:{tmp_path / 'dead.jsonl'}", *common)  # fmt: skip
    assert code == 0, text
    dead = [json.loads(x) for x in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert [d["record"]["id"] for d in dead] == [1]

    # A task error quoting the record (a KeyError naming it): redacted wherever it goes.
    code, text = _cli(*base, "--source", f"jsonl:{tmp_path / 'bad.jsonl'}", "--store", store,
                      "--name", "bad", *common)  # fmt: skip
    assert code == 1 and "jane.doe" not in text and "[redacted" in text, text
    code, text = _cli("runs", "show", "bad", "--store", store, "--principal", "alice")
    assert code == 0 and "jane.doe" not in text and "[redacted" in text, text
    code, text = _cli("runs", "show", "bad", "--store", store, "--principal", "mallory")
    assert code != 0 and "mallory" in text and "acme" in text, text


def test_a_failed_batchs_error_is_not_stored_in_clear_when_errors_are_sealed(
    store_backend: Any,
) -> None:
    """With encryption at rest a batch run's error is stored sealed; the stream's error
    (the streams row, runs show STREAM) quoted the same text in clear, a record's values
    included. It now points to the run; the Python caller still gets the whole text."""
    p = Pipeline("leaky")

    @p.task("check")
    def check(batch: list[dict[str, Any]]) -> list[Any]:
        raise ValueError(f"bad record {batch[0]}")

    config = {"store": store_backend.section, "security": {"encryption_at_rest": True}}
    with PipelineManager(config) as pm:
        s = pm.stream(p, source=[{"card": "4111-1111"}], sink=None)
        ckpt = pm.store.open_checkpoints()  # type: ignore[union-attr]
        try:
            rec = ckpt.load("leaky")
        finally:
            ckpt.close()
    assert s.status == "failed" and "4111-1111" in str(s.error)
    assert rec is not None and rec.error is not None
    assert "4111-1111" not in rec.error
    assert f"runs show {s.last_run_id}" in rec.error and "batch 1" in rec.error


def test_a_stream_of_one_tenant_is_neither_continued_nor_wiped_by_another(
    store_backend: Any,
) -> None:
    """The stream row kept its first tenant while a restart under another tenant continued
    its checkpoint, and from_start=True under another tenant deleted it (its batches and
    counters). Both are refused, naming the tenants; a name's pipeline check said
    from_start=True would help, which it never did."""
    rows = [{"id": i, "note": "x"} for i in range(5)]
    config = {"store": store_backend.section}
    with PipelineManager(config) as pm:
        s = pm.stream(contacts(), source=rows, sink=None, tenant_id="acme", name="feed")
        assert s.status == "completed"
        for kwargs in ({}, {"from_start": True}, {"tenant_id": "globex", "from_start": True}):
            other = pm.stream(contacts(), source=rows, sink=None, name="feed", **kwargs)
            assert other.status == "failed", kwargs
            assert "runs for tenant 'acme'" in str(other.error), other.error
        again = pm.stream(contacts(), source=rows + rows, sink=None, tenant_id="acme",
                          name="feed")  # fmt: skip
        assert again.status == "completed" and again.records == 10 and again.batches == 2
        other_pipeline = Pipeline("other")
        other_pipeline.add_task("x", lambda b: b)
        s = pm.stream(other_pipeline, source=rows, sink=None, tenant_id="acme", name="feed",
                      from_start=True)  # fmt: skip
        assert "belongs to pipeline 'contacts'" in str(s.error)
        assert "from_start" not in str(s.error)


def test_a_sink_error_quoting_pii_is_stored_redacted(store_backend: Any) -> None:
    """A sink's error (here a callback's) is the stream's error, stored in the streams row
    and recorded by the 'failed' event in clear; with PII detection on it was kept as
    raised, an e-mail address and all. It goes through the redaction first."""

    def deliver(records: list[Any]) -> None:
        raise OSError("mailbox jane.doe@example.com is full")

    config = {"store": store_backend.section, "classification": {"detect_pii": True}}
    with PipelineManager(config) as pm:
        p = Pipeline("notify")
        p.add_task("keep", lambda batch: [{"id": r["id"]} for r in batch])
        s = pm.stream(p, source=[{"id": 1}], sink=deliver)
        ckpt = pm.store.open_checkpoints()  # type: ignore[union-attr]
        try:
            rec = ckpt.load("notify")
        finally:
            ckpt.close()
    assert s.status == "failed" and "jane.doe" in str(s.error)  # the caller's own error
    assert rec is not None and rec.error and "jane.doe" not in rec.error
    assert "redacted" in rec.error


def test_a_refused_start_leaves_the_streams_row_as_it_was(store_backend: Any) -> None:
    """A start refused before the stream opens (another pipeline's or tenant's name, or a
    principal without read_data on the stream's tenant) wrote its own status and error
    over the rightful stream's row ('failed'), and a principal of another tenant reopened
    it (status running, its source and sink URLs) before its first batch was refused.
    Continuing a tenant's stream now needs read_data on it, as resuming a run does, and
    a refused start writes nothing."""
    pytest.importorskip("xlib_pipeline_tenancy", reason="needs xlib-pipeline-tenancy")
    config = {
        "store": store_backend.section,
        "security": {"access_control": "rbac"},
        "tenancy": {"bindings": {"alice": {"acme": ["operator"]}, "bob": {"globex": ["operator"]}}},
    }
    rows = [{"id": i, "note": "x"} for i in range(5)]
    with PipelineManager(config) as pm:
        ok = pm.stream(contacts(), source=rows, sink=None, tenant_id="acme", principal="alice",
                       name="feed")  # fmt: skip
        assert ok.status == "completed", ok.error
        other = Pipeline("other")
        other.add_task("x", lambda b: b)
        refused = [
            pm.stream(contacts(), source=rows, sink=None, tenant_id="acme", principal="bob",
                      name="feed"),
            pm.stream(other, source=rows, sink=None, tenant_id="acme", principal="alice",
                      name="feed"),
            pm.stream(contacts(), source=rows, sink=None, tenant_id="globex", principal="bob",
                      name="feed"),
        ]  # fmt: skip
        assert [s.status for s in refused] == ["failed"] * 3
        assert "bob" in str(refused[0].error) and "read_data" in str(refused[0].error)
        ckpt = pm.store.open_checkpoints()  # type: ignore[union-attr]
        try:
            rec = ckpt.load("feed")
        finally:
            ckpt.close()
    assert rec is not None and rec.status == "completed" and rec.error is None
    assert rec.records == 5 and rec.tenant == "acme"
