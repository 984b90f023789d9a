"""The collect_evidence hook through the core's typed facade."""

from __future__ import annotations

from typing import Any

import pytest

from xlib_pipeline import EvidenceSection, PipelineManager, PluginError, hookimpl


class _Section:
    def __init__(self, name: str, answer: Any = None) -> None:
        self.section = name
        self.name = f"{type(self).__name__}-{name}"
        self.answer = answer

    @hookimpl
    def collect_evidence(self, manager: Any, run_id: str, run: Any) -> Any:
        if self.answer is not None:
            return self.answer
        return EvidenceSection(name=self.section, facts={"run": run_id, "live": run is not None})


def _manager(*plugins: object) -> PipelineManager:
    return PipelineManager({}, plugins=list(plugins), entry_points=False)


def test_sections_come_back_sorted_by_name() -> None:
    with _manager(_Section("zeta"), _Section("alpha")) as pm:
        got = pm.hooks.collect_evidence(manager=pm, run_id="r1", run=None)
    assert [s.name for s in got] == ["alpha", "zeta"]
    assert got[0].facts == {"run": "r1", "live": False}


def test_no_implementation_means_no_sections() -> None:
    with _manager() as pm:
        assert pm.hooks.collect_evidence(manager=pm, run_id="r1", run=None) == []


def test_two_plugins_answering_one_section_are_named() -> None:
    class Other(_Section):
        pass

    with (
        _manager(_Section("audit"), Other("audit")) as pm,
        pytest.raises(PluginError, match="section 'audit' is answered by both"),
    ):
        pm.hooks.collect_evidence(manager=pm, run_id="r1", run=None)


def test_an_answer_that_is_no_section_is_refused() -> None:
    with (
        _manager(_Section("x", answer={"facts": 1})) as pm,
        pytest.raises(PluginError, match="expected an EvidenceSection or None"),
    ):
        pm.hooks.collect_evidence(manager=pm, run_id="r1", run=None)
