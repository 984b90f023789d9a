"""General records (run.started, run.finished, stream.*) pre-rendered with the general
encoder's very bytes: a stream writes three per micro-batch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from xlib_pipeline_audit import AuditPlugin, _general, _recorder, verify
from xlib_pipeline_audit._canonical import CHAIN_VERSION, GENESIS, canonical
from xlib_pipeline_audit._general import RunRecords
from xlib_pipeline_audit._render import body_of

from xlib_pipeline import Pipeline, PipelineManager

_strings = st.text(st.characters(codec=None, exclude_categories=()), max_size=8) | st.sampled_from(
    ["", '"', "\x00\x1f", "é😀", "%s%%", "\ud800", "v", "prev"]
)
_ints = st.integers(-(2**60), 2**60) | st.sampled_from([2**53, -(2**53), 2**53 - 1, 1 - 2**53])
_scalars = (
    st.none() | st.booleans() | _ints | st.floats() | _strings | st.sampled_from([5.0, 1e16, 1e-5])
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(_strings, inner, max_size=3)
        | st.tuples(inner)
    ),
    max_leaves=10,
)
_keys = st.sampled_from(
    ["action", "actor", "counts", "duration_ms", "offsets", "prev", "run_id", "seqq", "stream",
     "ts", "u", "v", "zz", "A", "_", "é"]
)  # fmt: skip


def _reference(record: dict[str, Any], seq: int, prev: str) -> bytes | None:
    try:
        return canonical({**record, "seq": seq, "prev": prev, "v": CHAIN_VERSION}).encode()
    except (TypeError, ValueError):
        return None


@settings(max_examples=600, deadline=None)
@given(
    record=st.dictionaries(_keys, _values, max_size=8),
    seq=st.integers(1, 2**40),
    prev=st.text("0123456789abcdef", min_size=64, max_size=64),
)
@example(record={"counts": {"succeeded": 4}, "duration_ms": 1.234}, seq=1, prev=GENESIS)
@example(record={"stream": {"offsets": [1, "a"], "é": 1}}, seq=1, prev=GENESIS)
@example(record={"n": {"b": 2.0, "a": [1e16, 0.1]}}, seq=3, prev=GENESIS)
def test_a_pre_rendered_general_record_is_the_canonical_encoders_bytes(
    record: dict[str, Any], seq: int, prev: str
) -> None:
    """Pre-rendered, a record is byte-identical to the general encoder; or it stays a dict
    (the general encoder decides); or both refuse it (a lone surrogate)."""
    rendered = _general.prerender(record, {})
    if rendered is None:
        return
    want = _reference(record, seq, prev)
    try:
        got: bytes | None = body_of(rendered, seq, prev).encode()
    except UnicodeEncodeError:
        got = None
    assert got == want


def test_a_streams_records_are_pre_rendered() -> None:
    shapes: dict[Any, Any] = {}
    batch = {
        "ts": "2026-12-03T09:00:00.000000Z",
        "actor": "alice",
        "tenant": None,
        "pipeline": "p",
        "run_id": "r1",
        "task": None,
        "action": "stream.batch",
        "outcome": "committed",
        "error_class": None,
        "stream": "s",
        "seq": 3,
        "offsets": ["10", "20"],
        "records": 10,
        "outputs": 10,
        "late": 0,
        "dead": 0,
        "lag": None,
    }
    # "seq" is the batch's own key here, not the chain's: the chain's "seq" is added.
    assert _general.prerender(batch, shapes) is None  # a key a shape cannot hold
    del batch["seq"]
    finished = {**batch, "action": "run.finished", "counts": {"succeeded": 4}, "duration_ms": 0.9}
    started = {**batch, "action": "run.started", "stream": {"name": "s", "offsets": [1, 2]}}
    for rec in (batch, finished, started):
        rendered = _general.prerender(rec, shapes)
        assert isinstance(rendered, list), rec
        assert body_of(rendered, 5, GENESIS) == canonical(
            {**rec, "seq": 5, "prev": GENESIS, "v": CHAIN_VERSION}
        )
    assert len(shapes) == 2  # batch and started have the same keys: one shape


def _double(batch: list[int]) -> list[int]:
    return [x * 2 for x in batch]


def test_a_streams_trail_verifies_and_holds_every_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every run.started, run.finished and stream.* record of a stream takes the fast path;
    the trail verifies (each line is the general encoder's bytes of what it holds)."""
    seen: list[tuple[str, bool]] = []

    def spy(record: Any, shapes: Any) -> Any:
        out = _general.prerender(record, shapes)
        seen.append((record["action"], out is not None))
        return out

    monkeypatch.setattr(_recorder, "prerender", spy)
    baked: list[tuple[str, bool]] = []
    for name in ("started", "finished", "batch"):

        def spy_baked(self: Any, *args: Any, _real: Any = getattr(RunRecords, name)) -> Any:
            out = _real(self, *args)
            baked.append((_real.__name__, out is not None))
            return out

        monkeypatch.setattr(RunRecords, name, spy_baked)
    path = tmp_path / "audit.jsonl"
    p = Pipeline("s")
    p.add_task("double", _double)
    config = {"store": {"path": str(tmp_path / "runs.sqlite")}, "audit": {"path": str(path)}}
    with PipelineManager(config, entry_points=False, plugins=[AuditPlugin()]) as pm:
        s = pm.stream(p, source=list(range(25)), batch_size=10)
        assert s.status == "completed", s.error
    report = verify(path)
    assert report.ok, str(report)
    lines = [json.loads(line) for line in path.read_text("utf-8").splitlines()]
    batches = [r for r in lines if r["action"] == "stream.batch"]
    assert len(batches) == 3 and all(b["records"] in (10, 5) for b in batches)
    started = [r for r in lines if r["action"] == "run.started"]
    finished = [r for r in lines if r["action"] == "run.finished"]
    assert len(started) == len(finished) == 3
    assert [r["stream"]["batch"] for r in started] == [1, 2, 3]
    assert all(r["counts"] and r["duration_ms"] >= 0 for r in finished)
    # A batch's three records take the shapes with the run's constants baked in (one each
    # per batch), the stream's ends the general shapes: all pre-rendered.
    assert sorted(baked) == sorted([(n, True) for n in ("started", "finished", "batch")] * 3)
    assert {a for a, _ in seen} == {"stream.started", "stream.completed"}
    assert all(fast for _, fast in seen), seen


_consts = st.none() | _strings | st.sampled_from([1, True, 0.0, -0.0, ["a"], "None"])


@settings(max_examples=400, deadline=None)
@given(
    actor=_consts,
    tenant=_consts,
    pipeline=_consts,
    tasks=st.sampled_from([0, 1, 4, True, 2**53, 1.0]),
    run_id=_values,
    stream=_values,
    outcome=_values,
    error=_values,
    counts=_values,
    duration=_values,
    info=st.dictionaries(_keys | st.sampled_from(["seq", "error", "records"]), _values, max_size=5),
    seq=st.integers(1, 2**40),
)
@example(actor="a", tenant=None, pipeline="p", tasks=4, run_id="r", stream={"batch": 1},
         outcome="succeeded", error=None, counts={"succeeded": 4}, duration=1.25,
         info={"seq": 1, "run_id": "r", "offsets": [0, 10], "records": 10}, seq=2)  # fmt: skip
def test_a_batchs_records_from_baked_shapes_are_the_general_encoders_bytes(
    actor: Any, tenant: Any, pipeline: Any, tasks: Any, run_id: Any, stream: Any,
    outcome: Any, error: Any, counts: Any, duration: Any, info: dict[str, Any], seq: int,
) -> None:  # fmt: skip
    """run.started, run.finished and stream.batch rendered from a shape with the run's
    constants baked in are byte-identical to the general encoder (or take the general path:
    None), whatever the shapes cached before (every record twice, through one cache, with
    constants that compare equal but render differently: 1 and True, 0.0 and -0.0)."""
    ts = "2026-12-03T09:00:00.000000+00:00"
    base = {"ts": ts, "actor": actor, "tenant": tenant, "pipeline": pipeline, "run_id": run_id,
            "task": None, "error_class": None}  # fmt: skip
    started = {**base, "action": "run.started", "outcome": "started", "tasks": tasks,
               "stream": stream}  # fmt: skip
    finished = {**base, "action": "run.finished", "outcome": outcome, "error_class": error,
                "counts": counts, "duration_ms": duration}  # fmt: skip
    batch = {**base, "run_id": info.get("run_id"), "action": "stream.batch",
             "outcome": "committed", "stream": "s",
             **{k: v for k, v in info.items() if k not in ("run_id", "error", "seq")}}  # fmt: skip
    runs = RunRecords()
    for other in (1, True, 0.0, -0.0, "x"):  # shapes of other constants in the same cache
        runs.started(ts, other, other, other, 1, "r", None)
        runs.finished(ts, other, other, other, "r", "s", None, {}, 1.5)
        runs.batch(ts, other, other, other, other, {"records": 1})
    for _ in range(2):
        for rendered, record in (
            (runs.started(ts, actor, tenant, pipeline, run_id, tasks, stream), started),
            (
                runs.finished(
                    ts, actor, tenant, pipeline, run_id, outcome, error, counts, duration
                ),
                finished,
            ),
            (runs.batch(ts, actor, tenant, pipeline, "s", info), batch),
        ):
            if rendered is None:
                continue
            assert "error" not in info or record is not batch
            want = _reference(record, seq, GENESIS)
            try:
                got: bytes | None = body_of(rendered, seq, GENESIS).encode()
            except UnicodeEncodeError:
                got = None
            assert got == want, record


def test_a_batchs_common_records_take_the_baked_shapes() -> None:
    """The records a stream's batches write do take them (the test above checks bytes)."""
    runs = RunRecords()
    ts = "2026-12-03T09:00:00.000000+00:00"
    assert runs.started(ts, "a", None, "p", "r", 4, {"batch": 1, "offsets": [0, 9]})
    assert runs.finished(ts, "a", "t", "p", "r", "succeeded", None, {"succeeded": 4}, 0.5)
    info = {"seq": 1, "run_id": "r", "offsets": [0, 9], "records": 10, "outputs": 10,
            "late": 0, "dead": 0, "lag": None}  # fmt: skip
    assert runs.batch(ts, "a", None, "p", "s", info)
    assert runs.batch(ts, "a", None, "p", "s", {**info, "error": "x"}) is None
    assert runs.started(ts, "a", None, "p", "r", True, {}) is None  # True is not the int 1


def test_a_runs_params_are_recorded_and_a_batchs_are_not_walked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run.started holds a run's params (recorded_params), a stream batch's none: its only
    param is the reserved ``stream``, which recorded_params leaves out, so it is not called."""
    from xlib_pipeline import RunContext

    calls: list[dict[str, Any]] = []
    real = RunContext.recorded_params

    def spy(self: Any) -> dict[str, Any]:
        calls.append(dict(self.params))
        return real(self)

    monkeypatch.setattr(RunContext, "recorded_params", spy)
    path = tmp_path / "audit.jsonl"
    p = Pipeline("s")
    p.add_task("double", _double)
    config = {"store": {"path": str(tmp_path / "runs.sqlite")}, "audit": {"path": str(path)}}
    with PipelineManager(config, entry_points=False, plugins=[AuditPlugin()]) as pm:
        s = pm.stream(p, source=list(range(20)), batch_size=10)
        assert s.status == "completed", s.error
        q = Pipeline("q", params=["region"])
        q.add_task("one", lambda: 1)
        pm.execute_pipeline(q, params={"region": "eu"})
        pm.execute_pipeline(q)
    lines = [json.loads(line) for line in path.read_text("utf-8").splitlines()]
    started = [r for r in lines if r["action"] == "run.started"]
    assert [("params" in r, "stream" in r) for r in started] == [
        (False, True), (False, True), (True, False), (False, False)
    ]  # fmt: skip
    assert started[2]["params"] == {"region": "eu"}
    assert calls == [{"region": "eu"}]
    assert verify(path).ok


def test_a_stream_batch_holds_its_run_finished_for_the_streams_next_write(
    tmp_path: Path,
) -> None:
    """A batch that succeeded does not write its run.finished by itself: it rides with the
    stream's next write (its stream.batch record, after the checkpoint). Nothing is lost:
    every batch's run.finished precedes its stream.batch, a failed batch's run.finished is
    written, and the trail verifies."""
    path = tmp_path / "audit.jsonl"
    at_sink: list[list[str]] = []

    def sink(records: list[int]) -> None:
        lines = [json.loads(x) for x in path.read_text("utf-8").splitlines()]
        at_sink.append([r["action"] for r in lines])

    def double_or_fail(batch: list[int]) -> list[int]:
        if 25 in batch:
            raise ValueError("bad record 25")
        return [x * 2 for x in batch]

    p = Pipeline("s")
    p.add_task("double", double_or_fail)
    config = {"store": {"path": str(tmp_path / "runs.sqlite")}, "audit": {"path": str(path)}}
    with PipelineManager(config, entry_points=False, plugins=[AuditPlugin()]) as pm:
        s = pm.stream(p, source=list(range(30)), sink=sink, batch_size=10)
        assert s.status == "failed" and "bad record 25" in str(s.error)
    # At the sink's write of batch 1 its task.started is in the file, its task.finished and
    # run.finished are held (old behaviour: written when the run returned, before the sink).
    assert at_sink[0][-1] == "task.started" and "run.finished" not in at_sink[0]
    assert at_sink[1].count("run.finished") == 1  # batch 1's, carried by its stream.batch
    assert verify(path).ok
    lines = [json.loads(x) for x in path.read_text("utf-8").splitlines()]
    actions = [r["action"] for r in lines]
    assert actions.count("run.finished") == 3 and actions.count("stream.batch") == 2
    for b in (r for r in lines if r["action"] == "stream.batch"):
        fin = next(i for i, r in enumerate(lines) if r["action"] == "run.finished"
                   and r["run_id"] == b["run_id"])  # fmt: skip
        assert fin < lines.index(b)
    failed = [r for r in lines if r["action"] == "run.finished" and r["outcome"] == "failed"]
    assert len(failed) == 1 and actions[-1] == "stream.failed"


def test_a_committed_batchs_stream_batch_is_held_for_the_trails_next_write(
    tmp_path: Path,
) -> None:
    """A committed batch's stream.batch record is not written by itself: the next batch's
    first task.started carries it (before that body runs), the stream's end record carries
    the last one, and an idle trail's flusher tick writes one that waits. Every batch's
    stream.batch follows its run.finished; the trail verifies."""
    path = tmp_path / "audit.jsonl"
    at_batch: list[list[str]] = []
    at_body: list[list[str]] = []

    def actions() -> list[str]:
        return [json.loads(x)["action"] for x in path.read_text("utf-8").splitlines()]

    def double(batch: list[int]) -> list[int]:
        at_body.append(actions())
        return [x * 2 for x in batch]

    p = Pipeline("s")
    p.add_task("double", double)
    audit = {"path": str(path), "batch_interval_ms": 600_000}  # no tick in this stream
    config = {"store": {"path": str(tmp_path / "runs.sqlite")}, "audit": audit}
    with PipelineManager(config, entry_points=False, plugins=[AuditPlugin()]) as pm:
        s = pm.stream(
            p, source=list(range(30)), sink=lambda r: None, batch_size=10,
            on_batch=lambda st: at_batch.append(actions()),
        )  # fmt: skip
        assert s.status == "completed", s.error
    # Old behaviour: the stream.batch record was in the file when on_batch ran.
    assert [a.count("stream.batch") for a in at_batch] == [0, 1, 2]
    assert at_batch[0][-1] == "task.started"
    # The next batch's first task.started carried it, before that body ran.
    assert [a.count("stream.batch") for a in at_body] == [0, 1, 2]
    assert verify(path).ok
    lines = [json.loads(x) for x in path.read_text("utf-8").splitlines()]
    names = [r["action"] for r in lines]
    assert names.count("stream.batch") == 3 and names[-1] == "stream.completed"
    assert names[-2] == "stream.batch"  # the last one, carried by the stream's end record
    # What a kill -9 at batch 1's on_batch would lose: its records after its last
    # task.started, never more (docs/plugins/audit.md).
    assert names[: len(at_batch[0])] == at_batch[0]
    assert names[len(at_batch[0]) : len(at_batch[0]) + 3] == [
        "task.finished", "run.finished", "stream.batch"
    ]  # fmt: skip
    for b in (r for r in lines if r["action"] == "stream.batch"):
        fin = next(i for i, r in enumerate(lines) if r["action"] == "run.finished"
                   and r["run_id"] == b["run_id"])  # fmt: skip
        assert fin < lines.index(b)


def test_a_held_stream_batch_record_is_written_by_the_flushers_tick(tmp_path: Path) -> None:
    """With nothing else to write (an idle stream), the trail's flusher writes a held
    stream.batch record within batch_interval_ms."""
    import time
    from types import SimpleNamespace

    path = tmp_path / "audit.jsonl"
    config = {"audit": {"path": str(path), "batch_interval_ms": 20}}
    plugin = AuditPlugin()
    with PipelineManager(config, entry_points=False, plugins=[plugin]):
        recorder = plugin._recorder
        assert recorder is not None
        stream = SimpleNamespace(run_kwargs={}, pipeline=SimpleNamespace(name="p"), name="s")
        info = {"seq": 1, "run_id": "r1", "offsets": [0, 10], "records": 10, "outputs": 10,
                "late": 0, "dead": 0, "lag": 0}  # fmt: skip
        recorder.stream_event(stream=stream, event="batch", info=info)
        deadline = time.monotonic() + 10
        while "stream.batch" not in path.read_text("utf-8") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [json.loads(x)["action"] for x in path.read_text("utf-8").splitlines()] == [
            "stream.batch"
        ]
    assert verify(path).ok


def _run_records(tmp_path: Path, source: list[int]) -> list[dict[str, Any]]:
    """A stream's run.started and run.finished records, without what differs between two
    streams (times, chain fields, run ids, the stream run's id)."""
    path = tmp_path / "audit.jsonl"
    p = Pipeline("s")
    p.add_task("double", _double_or_fail_on_7)
    config = {"store": {"path": str(tmp_path / "runs.sqlite")}, "audit": {"path": str(path)}}
    with PipelineManager(config, entry_points=False, plugins=[AuditPlugin()]) as pm:
        pm.stream(p, source=source, batch_size=3)
    assert verify(path).ok
    out = []
    for line in path.read_text("utf-8").splitlines():
        rec = json.loads(line)
        if rec["action"] in ("run.started", "run.finished"):
            for k in ("ts", "prev", "hash", "seq", "run_id", "duration_ms"):
                rec.pop(k, None)
            if "stream" in rec:
                rec["stream"].pop("run")
            out.append(rec)
    return out


def _double_or_fail_on_7(batch: list[int]) -> list[int]:
    if 7 in batch:
        raise ValueError("7")
    return [x * 2 for x in batch]


def test_a_stream_batchs_run_records_are_those_of_the_general_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """before_pipeline and after_pipeline render a stream batch's run.started and
    run.finished from the stream's shapes without building the record as a dict: the same
    records (keys and values) as the dict-built general path, for succeeded and failed
    batches."""
    fast = _run_records(tmp_path / "fast", list(range(12)))
    assert len(fast) == 6 and {r["outcome"] for r in fast} == {"started", "succeeded", "failed"}
    for name in ("started", "finished"):
        monkeypatch.setattr(RunRecords, name, lambda self, *args: None)
    general = _run_records(tmp_path / "general", list(range(12)))
    assert fast == general
