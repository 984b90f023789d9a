"""Classification: levels, propagation, PII detection and clearance enforcement."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from xlib_pipeline_classification import (
    LEVELS,
    RANK,
    ClassificationPlugin,
    RegexDetector,
    builtin_detectors,
    gather_text,
    luhn_valid,
    output_level,
    static_levels,
)

from xlib_pipeline import (
    CLASSIFICATION,
    ComplianceError,
    ConfigError,
    DefinitionError,
    OutputLevel,
    Pipeline,
    PipelineManager,
    hookimpl,
    plan,
)


def make(config=None, *plugins):
    return PipelineManager(config, entry_points=False, plugins=[ClassificationPlugin(), *plugins])


class Capture:
    """Keeps the classification stash of the last run."""

    name = "capture"

    def __init__(self):
        self.stash = None

    @hookimpl(trylast=True)
    def after_pipeline(self, run, result):
        self.stash = run.stash.get(CLASSIFICATION, None)


class TestPolicy:
    def test_declared_flow_above_clearance_is_refused_before_running(self):
        """Confidential data routed to a task cleared for internal: refused, no task ran."""
        ran = []
        p = Pipeline("refused")

        @p.task("load", classification="confidential")
        def load():
            ran.append("load")
            return 1

        @p.task("report", depends_on=["load"], clearance="internal")
        def report(x):
            ran.append("report")
            return x

        with pytest.raises(ComplianceError, match=r"load -> report \(confidential > clearance"):
            make().execute_pipeline(p)
        assert ran == []

    def test_propagated_level_is_refused_too(self):
        """A confidential source two hops upstream still refuses the cleared task."""
        ran = []
        p = Pipeline("hops")
        p.add_task("src", lambda: ran.append(1), classification="restricted")
        p.add_task("mid", lambda x: ran.append(2), depends_on=["src"])
        p.add_task("sink", lambda x: ran.append(3), depends_on=["mid"], clearance="confidential")
        with pytest.raises(ComplianceError, match="mid -> sink"):
            make().execute_pipeline(p)
        assert ran == []

    def test_the_clearance_check_is_a_per_task_hook_only_once_a_run_declares_one(self):
        """Runs without clearances pay no before_task; the first clearance registers it,
        in time for that run."""
        p = Pipeline("plain")
        p.add_task("a", lambda: 1)
        p.add_task("b", lambda x: x, depends_on=["a"])
        pm = make({"classification": {"detect_pii": True}})
        assert pm.execute_pipeline(p).success
        assert not pm.hooks.has["before_task"] and pm.hooks.has["after_task"]
        ran = []
        cleared = Pipeline("cleared")
        cleared.add_task("src", lambda: "ann.smith@example.org")
        cleared.add_task("sink", ran.append, depends_on=["src"], clearance="internal")
        r = pm.execute_pipeline(cleared)
        assert not r.success and ran == []
        assert isinstance(r.tasks["sink"].error, ComplianceError)
        assert "src -> sink" in str(r.tasks["sink"].error)
        assert pm.hooks.has["before_task"]

    def test_flows_within_clearance_run(self):
        """Declared levels at or below the clearance run normally."""
        p = Pipeline("ok")
        p.add_task("a", lambda: 1, classification="public")
        p.add_task("b", lambda x: x + 1, depends_on=["a"], clearance="internal")
        r = make().execute_pipeline(p)
        assert r.success and r.final_result == 2

    def test_detected_email_blocks_the_downstream_task(self):
        """An undeclared email in an output fails the cleared downstream before it runs."""
        ran = []
        p = Pipeline("pii")

        @p.task("extract")
        def extract():
            return {"customer": {"name": "Ann", "contact": "ann.smith@example.org"}}

        @p.task("publish", depends_on=["extract"], clearance="internal")
        def publish(rows):
            ran.append("publish")
            return rows

        cap = Capture()
        r = make({"security_scanning": True}, cap).execute_pipeline(p)
        assert ran == []
        assert not r.success
        t = r.tasks["publish"]
        assert t.status == "failed"
        assert isinstance(t.error, ComplianceError)
        msg = str(t.error)
        assert "extract -> publish" in msg and "confidential" in msg and "email" in msg
        assert "ann.smith" not in msg  # never the value itself
        assert cap.stash.outputs["extract"].level == "confidential"
        assert cap.stash.outputs["extract"].detected == ("email",)

    def test_without_scanning_the_email_is_not_detected(self):
        """detect_pii off: outputs keep their declared/default level."""
        p = Pipeline("noscan")
        p.add_task("a", lambda: "ann@example.org")
        p.add_task("b", lambda x: x, depends_on=["a"], clearance="internal")
        cap = Capture()
        r = make({"classification": {"detect_pii": False}}, cap).execute_pipeline(p)
        assert r.success
        assert cap.stash.outputs["a"] == OutputLevel(level="internal")

    def test_default_level_is_configurable(self):
        """default_level=public lets undeclared data reach a public-cleared task."""
        p = Pipeline("dflt")
        p.add_task("a", lambda: 1)
        p.add_task("b", lambda x: x, depends_on=["a"], clearance="public")
        with pytest.raises(ComplianceError):
            make({"classification": {}}).execute_pipeline(p)
        assert make({"classification": {"default_level": "public"}}).execute_pipeline(p).success

    def test_inert_without_config_or_options(self):
        """No config and no options: no stash, PII passes untouched."""
        p = Pipeline("plain")
        p.add_task("a", lambda: "ann@example.org")
        cap = Capture()
        assert make(None, cap).execute_pipeline(p).success
        assert cap.stash is None

    def test_stash_contract_levels_propagate(self):
        """The stash lists each output's level, declaration and where it was inherited from."""
        p = Pipeline("contract")
        p.add_task("a", lambda: 1, classification="restricted")
        p.add_task("b", lambda x: x, depends_on=["a"])
        cap = Capture()
        make({"classification": {}}, cap).execute_pipeline(p)
        assert cap.stash.levels == LEVELS
        assert cap.stash.outputs["a"].declared == "restricted"
        assert cap.stash.outputs["b"].level == "restricted"
        assert cap.stash.outputs["b"].inherited_from == "a"

    def test_runs_of_one_version_share_its_declarations_not_their_levels(self):
        """Each run gets its own levels (PII found in one run does not leak into the
        next); what the tasks declare is read once per pipeline version and default."""
        p = Pipeline("shared")
        data = {"v": "ann@example.org"}
        p.add_task("a", lambda: data["v"])
        p.add_task("b", lambda x: x, depends_on=["a"], classification="public")
        cap = Capture()
        plugin = ClassificationPlugin()
        pm = PipelineManager(
            {"classification": {"detect_pii": True}}, entry_points=False, plugins=[plugin, cap]
        )
        pm.execute_pipeline(p)
        first, plan = cap.stash, plugin.plans._last
        assert first.outputs["b"].level == "confidential"
        assert first.outputs["b"].inherited_from == "a"
        data["v"] = "nothing here"
        pm.execute_pipeline(p)
        assert cap.stash is not first
        assert cap.stash.outputs["a"] == OutputLevel(level="internal")
        assert cap.stash.outputs["b"] == OutputLevel(
            level="internal", declared="public", inherited_from="a"
        )
        assert first.outputs["b"].level == "confidential"  # the first run's, unchanged
        assert plan is not None and plugin.plans._last is plan  # read once, for both runs
        other = plugin.plans.plan(plan.tasks, "public")  # another default: read again
        assert other is not plan and other.declared["a"][0] == RANK["public"]

    def test_level_is_there_for_other_plugins_after_task(self):
        """Another plugin's after_task already sees the level (classification is tryfirst)."""
        seen = {}

        class Reader:
            name = "reader"

            @hookimpl
            def after_task(self, task, run, outcome):
                seen[task.name] = output_level(run, task.name)

        p = Pipeline("order")
        p.add_task("a", lambda: 1, classification="confidential")
        make({"classification": {}}, Reader()).execute_pipeline(p)
        assert seen == {"a": "confidential"}

    def test_bad_level_option_is_refused(self):
        """An unknown level in a task option fails validation naming the task."""
        p = Pipeline("badopt")
        p.add_task("a", lambda: 1, classification="secret")
        with pytest.raises(DefinitionError, match="'a'"):
            make().execute_pipeline(p)

    def test_config_errors_name_the_key(self):
        """Typos and bad detector names are ConfigErrors."""
        with pytest.raises(ConfigError, match="detect_pii"):
            make({"classification": {"detect_pi": True}})
        with pytest.raises(ConfigError, match="unknown detector"):
            make({"classification": {"detectors": ["emial"]}})


class TestDetectors:
    @pytest.mark.parametrize(
        "number", ["4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005"]
    )
    def test_luhn_valid_card_numbers_are_detected(self, number):
        """Card numbers passing the Luhn check are payment_card data."""
        assert luhn_valid(number)
        assert builtin_detectors()["payment_card"].detect(f"paid with {number} today")

    @pytest.mark.parametrize("number", ["4111 1111 1111 1112", "1234567890123", "5500000000000005"])
    def test_luhn_invalid_numbers_are_not(self, number):
        """Digit runs failing Luhn are not cards."""
        assert not luhn_valid(number)
        assert not builtin_detectors()["payment_card"].detect(f"ref {number}")

    def test_integer_card_numbers_are_scanned(self):
        """A card number stored as an int is found too."""
        plugin = ClassificationPlugin()
        plugin.detectors = list(builtin_detectors().values())
        assert plugin.classify({"card": 4111111111111111}) == ("confidential", ("payment_card",))

    @pytest.mark.parametrize(
        ("name", "text"),
        [
            ("email", "write to a.b+c@mail.example.co.uk"),
            ("phone", "call +44 20 7946 0958"),
            ("phone", "call (202) 555-0143"),
            ("phone", "call 202-555-0143"),
            ("us_ssn", "ssn 123-45-6789"),
            ("uk_nino", "NI number AB 12 34 56 C"),
        ],
    )
    def test_detectors_find_their_kind(self, name, text):
        """Each built-in detector recognises a typical value."""
        assert builtin_detectors()[name].detect(text)

    @pytest.mark.parametrize(
        "text",
        [
            "2024-05-01T12:34:56.123456",
            "key_12345",
            "records_count 10000",
            "ssn 000-12-3456",
            "retention 2555 days",
            "data_governance_team",
            "restricted",
        ],
    )
    def test_no_false_positives_on_ordinary_values(self, text):
        """Timestamps, ids and counts trigger no detector."""
        assert not [n for n, d in builtin_detectors().items() if d.detect(text)]

    def test_custom_detector_registration(self):
        """A registered detector raises the level it declares."""
        plugin = ClassificationPlugin(
            detectors=[RegexDetector("iban", r"\bGB\d{2}[A-Z]{4}\d{14}\b", level="restricted")]
        )
        cap = Capture()
        p = Pipeline("iban")
        p.add_task("a", lambda: {"acct": "GB29NWBK60161331926819"})
        pm = PipelineManager(
            {"classification": {"detect_pii": True}}, entry_points=False, plugins=[plugin, cap]
        )
        pm.execute_pipeline(p)
        assert cap.stash.outputs["a"].level == "restricted"
        assert cap.stash.outputs["a"].detected == ("iban",)

    def test_detectors_by_import_path(self):
        """classification.detectors accepts 'module:attribute'."""
        pm = make(
            {"classification": {"detect_pii": True, "detectors": ["email", f"{__name__}:SECRET"]}}
        )
        names = [d.name for d in pm.get_plugin("classification").detectors]
        assert names == ["email", "secret_word"]


SECRET = RegexDetector("secret_word", r"\bswordfish\b")


class TestScan:
    def test_scan_is_bounded(self):
        """gather_text stops at the limit, whatever the output size."""
        big = ["x" * 1000] * 10_000
        assert len(gather_text(big, 4096)) <= 4096 + 10

    def test_email_beyond_the_limit_is_not_scanned(self):
        """Data past scan_limit_bytes is not looked at (documented bound)."""
        plugin = ClassificationPlugin()
        plugin.detectors = [builtin_detectors()["email"]]
        plugin.scan_limit = 100
        assert plugin.classify("a" * 500 + " ann@example.org")[0] is None
        assert plugin.classify("ann@example.org " + "a" * 500)[0] == "confidential"

    def test_nested_keys_and_values(self):
        """Dict keys and nested values are gathered."""
        text = gather_text({"ann@example.org": [{"x": ("deep value",)}]}, 1000)
        assert "ann@example.org" in text and "deep value" in text


@st.composite
def dags(draw):
    n = draw(st.integers(1, 12))
    p = Pipeline("prop")
    for i in range(n):
        deps = draw(st.lists(st.integers(0, max(i - 1, 0)), unique=True, max_size=3)) if i else []
        lvl = draw(st.sampled_from([None, *LEVELS]))
        opts = {"classification": lvl} if lvl else {}
        p.add_task(f"t{i}", lambda *a: None, depends_on=[f"t{d}" for d in deps], **opts)
    return p


class TestPropagation:
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(dags(), st.sampled_from(LEVELS))
    def test_static_levels_are_monotone_along_edges(self, pipeline, default):
        """A task's propagated level is at least every upstream's and its own declaration."""
        pl = plan(pipeline)
        levels = static_levels([pl.tasks[i] for i in pl.order], default)
        for t in pl.tasks:
            own = t.options.get("classification") or default
            assert levels[t.name] >= RANK[own]
            for up in t.depends_on:
                assert levels[t.name] >= levels[up]

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(dags())
    def test_runtime_levels_are_monotone_along_edges(self, pipeline):
        """Levels recorded at run time never decrease along an edge."""
        cap = Capture()
        r = make({"classification": {}}, cap).execute_pipeline(pipeline, parallel=False)
        assert r.success
        pl = plan(pipeline)
        out = cap.stash.outputs
        for i, name in enumerate(pl.names):
            for p in pl.preds[i]:
                assert RANK[out[name].level] >= RANK[out[pl.names[p]].level]


GUIDE = Path("/work/shared/seed/pipeline-manager-user-guide.md")


@pytest.mark.guide
@pytest.mark.skipif(not GUIDE.exists(), reason="user guide not available")
def test_guide_compliance_example_runs(tmp_path, monkeypatch, capsys):
    """The guide's compliance example runs with classification on and prints its claims."""
    # Its config also turns on audit (compliance_mode) and lineage (data_lineage).
    pytest.importorskip("xlib_pipeline_audit", reason="the example needs xlib-pipeline-audit")
    pytest.importorskip("xlib_pipeline_lineage", reason="the example needs xlib-pipeline-lineage")
    monkeypatch.setenv("XLIB_PIPELINE_HOME", str(tmp_path))
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)
    code = next(b for b in blocks if "CompliancePipelineManager" in b)
    prelude = "from xlibrary.pipeline import *\nfrom typing import Dict, List, Any\n"
    exec(compile(prelude + code, "guide_compliance", "exec"), {"__name__": "guide_compliance"})
    out = capsys.readouterr().out
    assert "Compliance pipeline completed successfully!" in out
    assert "All validations passed: True" in out
