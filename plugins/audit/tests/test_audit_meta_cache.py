"""Per-task record metadata kept across runs of one plan (``AuditRun``'s cache).

Runs of the same pipeline on one manager reuse every task's pre-cut records; what differs
between runs (run id, tenant, actor) must still be each run's own, byte for byte the
general encoder's.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import example, given, settings
from hypothesis import strategies as st
from xlib_pipeline_audit import AuditPlugin, verify
from xlib_pipeline_audit._canonical import canonical
from xlib_pipeline_audit._recorder import AUDIT_RUN

from xlib_pipeline import Pipeline, PipelineManager, hookimpl


def _pipelines() -> tuple[Pipeline, Pipeline]:
    plain = Pipeline("plain")
    plain.add_task("a", lambda: 1)
    plain.add_task("b", lambda a: a + 1, depends_on=["a"])
    plain.add_task("c", lambda a: a, depends_on=["a"], tenant_id="fixed")
    labelled = Pipeline("labelled")
    labelled.add_task("x", lambda: 1, audit={"operation": "export"})
    labelled.add_task("y", lambda x: x, depends_on=["x"])
    return plain, labelled


class _Keep:
    """Keeps each run's AuditRun (to see whether its metadata was reused)."""

    name = "keep-audit-run"

    def __init__(self) -> None:
        self.runs: list[object] = []

    @hookimpl
    def after_pipeline(self, run: object, result: object) -> None:
        self.runs.append(run.stash.get(AUDIT_RUN, None))  # type: ignore[attr-defined]


_runs = st.lists(
    st.tuples(
        st.sampled_from([0, 1]),  # which pipeline
        st.sampled_from([None, "t1"]),  # tenant
        st.sampled_from([None, 'bo"b']),  # principal
    ),
    min_size=2,
    max_size=4,
)


@settings(max_examples=12, deadline=None)
@given(_runs)
@example([(0, None, None), (0, None, None), (0, "t1", 'bo"b'), (0, "t1", 'bo"b'), (1, None, None)])
@example([(1, "t2", "alice"), (1, "t2", "alice"), (0, "t2", "alice"), (0, "t2", "alice")])
def test_each_run_records_its_own_run_id_tenant_and_actor(runs):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.jsonl"
        keep, audit = _Keep(), AuditPlugin()
        pm = PipelineManager(
            {"audit": {"path": str(path)}, "max_workers": 2},
            entry_points=False,
            plugins=[audit, keep],
        )
        pipelines = _pipelines()
        expected: dict[str, tuple[str | None, str]] = {}
        tenants_of = {"c": "fixed"}
        for which, tenant, principal in runs:
            result = pm.execute_pipeline(pipelines[which], tenant_id=tenant, principal=principal)
            assert result.success
            expected[result.run_id] = (tenant, principal or audit.actor)
        pm.close()
        assert verify(path).ok
        seen = []
        current: str | None = None
        tasks = 0
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            body = canonical({k: v for k, v in rec.items() if k != "hash"})
            assert line == body[:-1] + ',"hash":"' + rec["hash"] + '"}'  # the general bytes
            if rec["action"] == "run.started":  # the runs ran one after the other
                current = rec["run_id"]
                seen.append(current)
                tasks = rec["tasks"]
            elif rec["action"] == "run.finished":  # every task succeeded
                assert rec["counts"] == {"succeeded": tasks}, rec
            elif rec["action"].startswith("task."):
                assert rec["run_id"] == current, rec
                tenant, actor = expected[current]
                assert rec["tenant"] == tenants_of.get(rec["task"], tenant), rec
                assert rec["actor"] == actor, rec
        assert seen == list(expected)
        # A plan run again with the same actor and tenant reuses the per-task metadata,
        # unless one of its tasks has an audit option (a mapping that could change).
        first: dict[tuple[object, ...], object] = {}
        for (which, tenant, principal), st_run in zip(runs, keep.runs, strict=True):
            k = (which, tenant, principal)
            meta = st_run.meta  # type: ignore[attr-defined]
            if k in first:
                assert (meta is first[k]) == (which == 0), k
            first.setdefault(k, meta)
