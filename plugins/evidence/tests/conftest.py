"""Fixtures: an isolated data folder and key folder, a signing key, a recorded run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from xlib_pipeline_evidence import generate

from xlib_pipeline import Pipeline, PipelineManager


@pytest.fixture(autouse=True)
def _homes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XLIB_PIPELINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XLIB_PIPELINE_KEYS_DIR", str(tmp_path / "keys"))
    return tmp_path / "home"


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    priv, _pub, _kid = generate(tmp_path / "keys" / "signing.pem")
    return priv


def make_pipeline(flaky: dict[str, int] | None = None) -> Pipeline:
    for other in ("lineage", "classification", "retries"):  # its task options' owners
        pytest.importorskip(f"xlib_pipeline_{other}", reason=f"needs xlib-pipeline-{other}")
    p = Pipeline("claims")
    state = dict(flaky or {})

    @p.task(outputs=["warehouse.claims_raw"])
    def extract() -> list[dict[str, Any]]:
        return [{"id": 1, "amount": 10.0}, {"id": 2, "amount": 5.5}]

    @p.task(depends_on=["extract"], retries=2, inputs=["warehouse.claims_raw"])
    def clean(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if state.get("clean", 0) > 0:
            state["clean"] -= 1
            raise ValueError("transient")
        return [r for r in rows if r["amount"] > 0]

    @p.task(depends_on=["clean"], classification="confidential")
    def report(rows: list[dict[str, Any]]) -> float:
        return sum(r["amount"] for r in rows)

    return p


def full_config(tmp_path: Path, key: Path, **extra: Any) -> dict[str, Any]:
    """Every compliance plugin on (the tests skip when one is not installed: ``nox -s
    plugins`` runs this suite with the core alone)."""
    for other in ("audit", "lineage", "classification", "encryption"):
        pytest.importorskip(f"xlib_pipeline_{other}", reason=f"needs xlib-pipeline-{other}")
    home = tmp_path / "home"
    return {
        "store": {"path": str(home / "runs.sqlite")},
        "audit": {"path": str(home / "audit.jsonl")},
        "lineage": {"transport": {"type": "file", "path": str(home / "lineage.jsonl")}},
        "classification": {"detect_pii": True},
        "security": {"encryption_at_rest": True},
        "evidence": {"signing_key_file": str(key)},
        **extra,
    }


@pytest.fixture(name="make_pipeline")
def _make_pipeline_fixture() -> Any:
    """``make_pipeline(flaky=None)``: the claims pipeline (a fixture: tests import nothing)."""
    return make_pipeline


@pytest.fixture(name="full_config")
def _full_config_fixture() -> Any:
    """``full_config(tmp_path, key)``: every compliance plugin on, evidence signed by key."""
    return full_config


@pytest.fixture
def recorded(tmp_path: Path, key_file: Path) -> tuple[dict[str, Any], str]:
    """A run of the claims pipeline with every compliance plugin on, one retry."""
    config = full_config(tmp_path, key_file)
    with PipelineManager(config) as pm:
        result = pm.execute_pipeline(make_pipeline({"clean": 1}), principal="alice")
    assert result.success
    return config, result.run_id
