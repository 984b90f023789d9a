"""Output and input contracts: pydantic models, pandera schemas and callables."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from xlib_pipeline import (
    ContractError,
    DefinitionError,
    MissingExtraError,
    Pipeline,
    PipelineManager,
    Status,
)

pydantic = pytest.importorskip("pydantic", reason="needs the [contracts] extra (pydantic)")


class Payment(pydantic.BaseModel):
    id: int
    amount: float


def payments(rows: list[dict[str, Any]], contract: Any, **extra: Any) -> Pipeline:
    p = Pipeline("payments")

    @p.task("load", contract=contract, **extra)
    def load() -> list[dict[str, Any]]:
        return rows

    @p.task("total", depends_on=["load"])
    def total(rs: list[dict[str, Any]]) -> float:
        return sum(float(r["amount"]) for r in rs)

    return p


GOOD = [{"id": 1, "amount": 10.0}, {"id": 2, "amount": 5.5}]
BAD = [{"id": 1, "amount": 10.0}, {"id": 2, "amount": 3.0}, {"id": 3, "amount": "lots"}]


def test_pydantic_list_contract_passes_and_fails(manager: PipelineManager) -> None:
    ok = manager.execute_pipeline(payments(GOOD, list[Payment]))
    assert ok.success and ok.final_result == 15.5

    r = manager.execute_pipeline(payments(BAD, list[Payment]))
    assert not r.success
    err = r.tasks["load"].error
    assert isinstance(err, ContractError) and err.task == "load"
    assert err.location == "row 2, field 'amount'" and err.where == "output"
    assert "'load'" in str(err) and "row 2, field 'amount'" in str(err)
    assert "'lots'" in str(err) and not err.redacted  # unclassified data may be quoted
    # Dependents never saw the bad output.
    assert r.tasks["total"].status is Status.UPSTREAM_FAILED


def test_single_model_and_field_mapping(manager: PipelineManager) -> None:
    p = Pipeline("one")
    p.add_task("make", lambda: {"id": "x", "amount": 1}, contract=Payment)
    r = manager.execute_pipeline(p)
    assert r.tasks["make"].error.location == "field 'id'"

    q = Pipeline("mapping")
    q.add_task("make", lambda: {"id": 1}, contract={"id": int, "amount": float})
    r = manager.execute_pipeline(q)
    err = r.tasks["make"].error
    assert isinstance(err, ContractError) and err.location == "field 'amount'"
    assert "Field required" in str(err)


def test_callable_contracts(manager: PipelineManager) -> None:
    def positive(rows: list[dict[str, Any]]) -> bool:
        return all(float(r["amount"]) > 0 for r in rows)

    assert manager.execute_pipeline(payments(GOOD, positive)).success
    neg = [{"id": 1, "amount": -1}]
    r = manager.execute_pipeline(payments(neg, positive))
    assert "positive returned False" in str(r.tasks["load"].error)

    def asserting(rows: list[dict[str, Any]]) -> None:
        assert len(rows) < 2, f"too many rows: {len(rows)}"

    r = manager.execute_pipeline(payments(GOOD, asserting))
    assert "AssertionError: too many rows: 2" in str(r.tasks["load"].error)


def test_violation_is_retried_then_falls_back() -> None:
    pytest.importorskip("xlib_pipeline_retries", reason="needs xlib-pipeline-retries")
    calls: list[int] = []
    p = Pipeline("retry-contract")

    @p.task(
        "flaky",
        contract=lambda v: v > 0,
        retries={"max_attempts": 3, "initial_delay": 0},
        fallback=1,
    )
    def flaky() -> int:
        calls.append(1)
        return -1 if len(calls) < 3 else 5

    with PipelineManager() as pm:
        r = pm.execute_pipeline(p)
    assert r.success and r.final_result == 5 and len(calls) == 3
    assert r.tasks["flaky"].attempts == 3 and r.tasks["flaky"].status is Status.SUCCEEDED

    calls.clear()
    q = Pipeline("always-bad")
    q.add_task("bad", lambda: -1, contract=lambda v: v > 0, fallback=0)
    with PipelineManager(entry_points=False) as pm:
        r = pm.execute_pipeline(q)
    assert r.tasks["bad"].status is Status.FALLBACK and r.final_result == 0
    assert isinstance(r.tasks["bad"].error, ContractError)


def test_input_contracts(manager: PipelineManager) -> None:
    ran: list[str] = []
    p = Pipeline("inputs")
    p.add_task("a", lambda: [{"id": 1, "amount": "bad"}])
    p.add_task("b", lambda: 2)

    def use(rows: Any, n: int) -> int:
        ran.append("use")
        return n

    p.add_task(
        "use",
        use,
        depends_on=["a", "b"],
        input_contract={"a": list[Payment], "b": lambda n: isinstance(n, int)},
    )
    r = manager.execute_pipeline(p)
    err = r.tasks["use"].error
    assert isinstance(err, ContractError) and err.where == "input a"
    assert "input from 'a'" in str(err) and ran == []
    assert r.tasks["use"].attempts == 0

    q = Pipeline("inputs2")
    q.add_task("a", lambda: 1)
    q.add_task("b", lambda: 2)
    q.add_task("use", lambda x, y: x, depends_on=["a", "b"], input_contract=Payment)
    with pytest.raises(DefinitionError, match=r"'use'.*mapping of upstream name"):
        manager.execute_pipeline(q)


def test_not_a_contract(manager: PipelineManager) -> None:
    p = Pipeline("bad")
    p.add_task("a", lambda: 1, contract=42)
    with pytest.raises(DefinitionError, match=r"task 'a'.*not a pydantic model"):
        manager.execute_pipeline(p)


def test_missing_extra_names_it(manager: PipelineManager, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pydantic", None)  # as if not installed
    p = Pipeline("no-pydantic")
    p.add_task("a", lambda: {"id": 1}, contract={"id": int})
    with pytest.raises(MissingExtraError) as info:
        manager.execute_pipeline(p)
    assert "task 'a'" in str(info.value)
    assert "pip install 'xlib-pipeline[contracts]'" in str(info.value)
    assert info.value.extra == "contracts"


def test_pandera_schema(manager: PipelineManager) -> None:
    pa = pytest.importorskip("pandera.pandas", reason="needs the [contracts] extra (pandera)")
    pd = pytest.importorskip("pandas")
    schema = pa.DataFrameSchema({"id": pa.Column(int), "amount": pa.Column(float, pa.Check.ge(0))})
    p = Pipeline("frames")
    p.add_task("ok", lambda: pd.DataFrame({"id": [1, 2], "amount": [1.0, 2.0]}), contract=schema)
    p.add_task(
        "bad", lambda: pd.DataFrame({"id": [1, 2, 3], "amount": [1.0, -5.0, 2.0]}), contract=schema
    )
    r = manager.execute_pipeline(p)
    assert r.tasks["ok"].status is Status.SUCCEEDED
    err = r.tasks["bad"].error
    assert isinstance(err, ContractError)
    assert err.location == "row 1, column 'amount'", str(err)
    assert "greater_than_or_equal_to" in str(err) and "-5.0" in str(err)


def test_classified_values_are_never_printed(tmp_path: Path) -> None:
    pytest.importorskip("xlib_pipeline_classification", reason="needs classification")
    secret = [{"id": 1, "amount": "ssn 078-05-1120"}]
    config = {"classification": {"detect_pii": True}}
    p = payments(secret, list[Payment], classification="confidential")
    with PipelineManager(config) as pm:
        r = pm.execute_pipeline(p)
    err = r.tasks["load"].error
    assert isinstance(err, ContractError) and err.redacted
    assert "078-05-1120" not in str(err) and "withheld" in str(err)
    assert "row 0, field 'amount'" in str(err)
    assert "078-05-1120" not in (r.tasks["load"].traceback or "")

    # Not declared, but PII detection raises it above internal: still withheld.
    p2 = payments([{"id": 1, "amount": "mail jane.doe@example.com"}], list[Payment])
    with PipelineManager(config) as pm:
        r = pm.execute_pipeline(p2)
    assert "jane.doe" not in str(r.tasks["load"].error)

    # A callable contract's own message may carry values: withheld too.
    def check(rows: Any) -> None:
        raise ValueError(f"bad row {rows[0]}")

    p3 = payments(secret, check, classification="restricted")
    with PipelineManager(config) as pm:
        r = pm.execute_pipeline(p3)
    assert "078-05-1120" not in str(r.tasks["load"].error)
    assert "ValueError: (message withheld)" in str(r.tasks["load"].error)

    # Internal data is quoted.
    p4 = payments(BAD, list[Payment], classification="internal")
    with PipelineManager(config) as pm:
        r = pm.execute_pipeline(p4)
    assert "'lots'" in str(r.tasks["load"].error)


def test_store_never_sees_a_broken_output(tmp_path: Path) -> None:
    audit = pytest.importorskip("xlib_pipeline_audit", reason="needs xlib-pipeline-audit")
    config = {
        "store": {"path": str(tmp_path / "runs.sqlite")},
        "audit": {"path": str(tmp_path / "audit.jsonl"), "digests": True},
    }
    with PipelineManager(config) as pm:
        r = pm.execute_pipeline(payments(BAD, list[Payment]))
        stored = pm.store.get_tasks(r.run_id)  # type: ignore[union-attr]
    assert stored["load"].status == "failed" and stored["load"].output is None
    assert audit.verify(tmp_path / "audit.jsonl").ok
    records = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    load = next(x for x in records if x["task"] == "load" and x["action"] == "task.finished")
    assert load["error_class"].endswith("ContractError") and "output_digest" not in load
