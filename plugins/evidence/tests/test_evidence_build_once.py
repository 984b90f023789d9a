"""The pack build's shortcuts give the bytes the plain way gives: the pack statement and
``run.json`` reuse the run-end payload's JSON, the page escapes whole columns, and the run's
task rows are read from the store once per build."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from xlib_pipeline_evidence import build, load_private, verify
from xlib_pipeline_evidence._dsse import statement_bytes
from xlib_pipeline_evidence._html import escape_all
from xlib_pipeline_evidence._pack import _json, _payload_parts, _run_json_bytes

from xlib_pipeline import PipelineManager


def _pack(config: dict[str, Any], run_id: str, out: Path, key: Path, calls: list[str]) -> Path:
    cfg = dict(config)
    cfg["evidence"] = {**config["evidence"], "enabled": False}
    with PipelineManager(cfg) as pm:
        store = pm.store
        real = store.get_tasks

        def counted(rid: str) -> Any:
            calls.append(rid)
            return real(rid)

        store.get_tasks = counted  # type: ignore[method-assign]
        return build(pm, run_id, out, load_private(key))


def test_the_run_s_tasks_are_read_once_per_build(recorded, key_file, tmp_path) -> None:
    config, run_id = recorded
    calls: list[str] = []
    out = _pack(config, run_id, tmp_path / "pack", key_file, calls)
    assert calls == [run_id]
    assert verify(out, public_key=key_file.with_name("signing.pub.pem"))
    # encryption's section still read the stored outputs (through the build's rows)
    run_json = json.loads((out / "run.json").read_bytes())
    assert set(run_json["predicate"]["sections"]["encryption"]["keys"]) == {
        "extract",
        "clean",
        "report",
    }


def test_spliced_payload_and_run_json_equal_the_plain_serialisation(
    recorded, key_file, tmp_path
) -> None:
    config, run_id = recorded
    out = _pack(config, run_id, tmp_path / "pack", key_file, [])
    envelope = json.loads((out / "attestation.dsse.json").read_bytes())
    payload = base64.b64decode(envelope["payload"])
    statement = json.loads(payload)
    assert statement["subject"][-1]["name"] == "manifest.json"
    assert payload == statement_bytes(statement)  # byte for byte the canonical form
    run_json = json.loads((out / "run.json").read_bytes())
    assert list(run_json) == sorted(run_json)
    assert run_json["predicate"] == statement["predicate"]
    assert run_json["subjects"] == statement["subject"][:-1]
    # the same document the plain serialisation gives
    assert json.loads(_json(run_json)) == json.loads(_run_json_bytes(run_json, None))


@given(
    pred=st.dictionaries(
        st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=12)), max_size=5
    ),
    names=st.lists(st.text(max_size=10), max_size=4),
    extra=st.dictionaries(
        st.sampled_from(["runAttestation", "shredded", "signer"]), st.text(max_size=6)
    ),
)
def test_payload_parts_rebuild_the_same_documents(
    pred: dict[str, Any], names: list[str], extra: dict[str, Any]
) -> None:
    subject = [{"name": f"p/{n}", "digest": {"sha256": "ab" * 32}} for n in names]
    statement = {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": subject,
        "predicateType": "https://example/v1",
        "predicate": pred,
    }
    payload = statement_bytes(statement)
    parts = _payload_parts(payload)
    assert parts is not None
    head, p_json, s_json = parts
    assert json.loads(p_json) == pred and json.loads(s_json) == subject
    bound = {"digest": {"sha256": "cd" * 32}, "name": "manifest.json"}
    sep = b"," if s_json != b"[]" else b""
    spliced = head + s_json[:-1] + sep + statement_bytes(bound) + b"]}"
    assert spliced == statement_bytes({**statement, "subject": [*subject, bound]})
    run_json = {"predicate": pred, "predicateType": "https://example/v1", "subjects": subject}
    run_json.update(extra)
    got = _run_json_bytes(run_json, parts)
    assert json.loads(got) == run_json
    assert list(json.loads(got)) == sorted(run_json)  # members in sorted order
    assert got.endswith(b"}\n")


def test_payload_parts_refuse_another_form() -> None:
    assert _payload_parts(b'{"predicate":{},"_type":"x","subject":[]}') is None
    assert _payload_parts(json.dumps({"_type": "x"}).encode()) is None


@given(st.lists(st.text(max_size=12), max_size=20))
def test_escape_all_is_escape_of_each(texts: list[str]) -> None:
    assert escape_all(texts) == [html.escape(t) for t in texts]
