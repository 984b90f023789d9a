"""The content-addressed blob store: large outputs as files named by their sha256."""

from __future__ import annotations

import hashlib
import os
import pickle
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xlib_pipeline import ConfigError, Pipeline, PipelineManager, StoreError, _blobs
from xlib_pipeline.store import BlobRef, BlobStore


class Columns:
    """A value whose column buffers pickle out of band (as numpy arrays do)."""

    def __init__(self, *cols: bytearray) -> None:
        self.cols = list(cols)

    def __reduce_ex__(self, protocol: Any) -> Any:
        return (Columns, tuple(pickle.PickleBuffer(c) for c in self.cols))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Columns) and [bytes(c) for c in self.cols] == [
            bytes(c) for c in other.cols
        ]


def _manager(tmp_path: Path, **blobs: Any) -> PipelineManager:
    return PipelineManager(
        {"store": {"path": str(tmp_path / "runs.sqlite"), "blobs": {"threshold": 4096, **blobs}}},
        entry_points=False,
    )


def _big_pipeline(calls: list[str], payload: bytes, fail: list[bool]) -> Pipeline:
    p = Pipeline("big")

    @p.task("make")
    def make() -> bytes:
        calls.append("make")
        return payload

    @p.task("size", depends_on=["make"])
    def size(data: bytes) -> int:
        calls.append("size")
        if fail[0]:
            raise RuntimeError("boom")
        return len(data)

    return p


def test_a_large_output_goes_to_a_blob_named_by_its_sha256_and_resumes(tmp_path: Path) -> None:
    payload = os.urandom(50_000)
    calls: list[str] = []
    fail = [True]
    p = _big_pipeline(calls, payload, fail)
    with _manager(tmp_path) as pm:
        first = pm.execute_pipeline(p)
        assert first.status == "failed"
        store = pm.store
        assert store is not None
        names = list(store.blobs.names())
        assert len(names) == 1 and names[0].startswith("plain/")
        # The file holds the pickle stream; its name is the stream's sha256.
        blob = tmp_path / "runs.blobs" / names[0]
        assert oct(blob.stat().st_mode & 0o777) == "0o600"
        assert oct(blob.parent.parent.stat().st_mode & 0o777) == "0o700"
        assert payload in blob.read_bytes()
        # The store row holds only the reference.
        with sqlite3.connect(tmp_path / "runs.sqlite") as c:
            (out,) = c.execute("SELECT output FROM tasks WHERE task='make'").fetchone()
        assert len(out) < 200 and out.startswith(_blobs.REF_MAGIC)
        fail[0] = False
        second = pm.execute_pipeline(p, resume=first.run_id)
    assert second.status == "succeeded"
    assert second.tasks["size"].output == 50_000
    assert calls == ["make", "size", "size"]  # make's output came back from its blob


def test_identical_outputs_are_stored_once(tmp_path: Path) -> None:
    payload = os.urandom(20_000)
    p = Pipeline("dedup")
    p.add_task("a", lambda: payload)
    p.add_task("b", lambda: bytes(payload))
    with _manager(tmp_path) as pm:
        pm.execute_pipeline(p)
        pm.execute_pipeline(p)
        assert pm.store is not None
        assert len(list(pm.store.blobs.names())) == 1
        assert len(pm.store.blob_names()) == 1


def test_small_outputs_stay_inline(tmp_path: Path) -> None:
    p = Pipeline("small")
    p.add_task("a", lambda: b"x" * 100)
    with _manager(tmp_path) as pm:
        pm.execute_pipeline(p)
        assert pm.store is not None
        assert list(pm.store.blobs.names()) == []
    assert not (tmp_path / "runs.blobs").exists()


def test_out_of_band_buffers_round_trip(tmp_path: Path) -> None:
    blobs = BlobStore(str(tmp_path / "b"), threshold=1000, chunk_size=4096)
    value = Columns(bytearray(os.urandom(30_000)), bytearray(b"small"), bytearray(9_000))
    ref = blobs.dump({"frame": value, "n": 3}, lambda: None)
    assert isinstance(ref, BlobRef)
    raw = (tmp_path / "b" / ref.name).read_bytes()
    # The first column went out of band: a buffer record, not inside the pickle stream.
    assert _blobs._RECORD.pack(_blobs._BUFFER, 30_000) in raw
    back = blobs.load(ref, lambda header: None)
    assert back == {"frame": value, "n": 3}
    assert isinstance(back["frame"].cols[0], bytearray)  # writable, no copy needed


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sizes=st.lists(st.integers(0, 20_000), min_size=1, max_size=4),
    threshold=st.integers(0, 30_000),
    chunk=st.integers(4096, 9000),
)
def test_any_value_round_trips_inline_or_as_a_blob(
    tmp_path: Path, sizes: list[int], threshold: int, chunk: int
) -> None:
    blobs = BlobStore(
        str(tmp_path / f"h{threshold}-{chunk}"), threshold=threshold, chunk_size=chunk
    )
    value = [os.urandom(n) for n in sizes] + [Columns(bytearray(os.urandom(sizes[0])))]
    out = blobs.dump(value, lambda: None)
    assert out is not None
    if isinstance(out, BlobRef):
        assert out.name.split("/")[1] != hashlib.sha256(b"").hexdigest()
        assert blobs.load(out, lambda header: None) == value
    else:
        assert pickle.loads(out) == value
        assert len(out) <= threshold


def test_a_plaintext_blob_altered_on_disk_is_refused(tmp_path: Path) -> None:
    blobs = BlobStore(str(tmp_path), threshold=0)
    ref = blobs.dump(b"A" * 10_000, lambda: None)
    assert isinstance(ref, BlobRef)
    path = tmp_path / ref.name
    data = bytearray(path.read_bytes())
    data[-10] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="content address"):
        blobs.load(ref, lambda header: None)
    path.unlink()
    with pytest.raises(StoreError, match="missing from the blob store"):
        blobs.load(ref, lambda header: None)


def test_unpicklable_values_fall_back_to_cloudpickle(tmp_path: Path) -> None:
    blobs = BlobStore(str(tmp_path), threshold=10)
    big = os.urandom(5000)
    ref = blobs.dump(lambda: big, lambda: None)  # a lambda: pickle fails, cloudpickle works
    assert isinstance(ref, BlobRef)
    assert blobs.load(ref, lambda header: None)() == big
    assert [n for n in os.listdir(tmp_path / "plain") if n.startswith(".tmp")] == []


def test_fsspec_url(tmp_path: Path) -> None:
    pytest.importorskip("fsspec")
    blobs = BlobStore("memory://xlib-test-blobs", threshold=100)
    payload = os.urandom(10_000)
    ref = blobs.dump(payload, lambda: None)
    assert isinstance(ref, BlobRef)
    assert list(blobs.names()) == [ref.name]
    assert blobs.load(ref, lambda header: None) == payload
    again = blobs.dump(payload, lambda: None)
    assert again == ref and list(blobs.names()) == [ref.name]


def test_fsspec_file_url_in_a_pipeline(tmp_path: Path) -> None:
    pytest.importorskip("fsspec")
    url = (tmp_path / "remote").as_uri()
    payload = os.urandom(9000)
    p = Pipeline("remote")
    p.add_task("a", lambda: payload)
    with _manager(tmp_path, url=url) as pm:
        first = pm.execute_pipeline(p)
        assert pm.store is not None
        (name,) = pm.store.blob_names()
        assert (tmp_path / "remote" / name).exists()
        second = pm.execute_pipeline(p, resume=first.run_id)
        assert second.tasks["a"].output == payload


@pytest.mark.parametrize(
    ("blobs", "match"),
    [
        ({"threshold": -1}, "blobs.threshold"),
        ({"threshold": "big"}, "blobs.threshold"),
        ({"chunk_size": 10}, "blobs.chunk_size"),
        ({"url": 3}, "blobs.url"),
        ({"bucket": "x"}, "unknown key"),
        ("s3://x", "mapping"),
    ],
)
def test_bad_blob_settings_are_named(tmp_path: Path, blobs: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        PipelineManager(
            {"store": {"path": str(tmp_path / "r.sqlite"), "blobs": blobs}}, entry_points=False
        )


def test_an_unknown_fsspec_scheme_is_a_config_error(tmp_path: Path) -> None:
    pytest.importorskip("fsspec")
    with pytest.raises(ConfigError, match="nosuchfs"):
        BlobStore("nosuchfs://bucket/x")


def test_prune_removes_blobs_no_kept_run_references(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = os.urandom(10_000)
    p1 = Pipeline("one")
    p1.add_task("a", lambda: shared)
    p1.add_task("b", lambda: os.urandom(10_000))
    p2 = Pipeline("two")
    p2.add_task("a", lambda: shared)
    with _manager(tmp_path) as pm:
        pm.execute_pipeline(p1)
        kept = pm.execute_pipeline(p2)
        store = pm.store
        assert store is not None
        assert len(list(store.blobs.names())) == 2
        # Within the grace period nothing is removed (a run may be about to reference it).
        report = pm.prune_runs(keep=0, pipeline="one")
        assert report.blobs == () and len(list(store.blobs.names())) == 2
        pm.execute_pipeline(p1)
        monkeypatch.setattr(_blobs, "GRACE_S", -1.0)
        report = pm.prune_runs(keep=0, pipeline="one")
        # Both 'b' blobs go: this run's, and the first run's, left by the prune within grace.
        assert len(report.blobs) == 2 and report.reclaimed_bytes >= 20_000
        (left,) = store.blobs.names()
        assert store.blob_names() == [left]  # the shared blob, still used by run two
        again = pm.execute_pipeline(p2, resume=kept.run_id)
        assert again.tasks["a"].output == shared


def test_memory_stays_bounded_by_the_chunk(tmp_path: Path) -> None:
    import tracemalloc

    payload = os.urandom(16 << 20)
    blobs = BlobStore(str(tmp_path), threshold=1 << 20, chunk_size=1 << 20)
    tracemalloc.start()
    try:
        ref = blobs.dump(payload, lambda: None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(ref, BlobRef)
    assert peak < 4 << 20, f"writing a 16 MiB output peaked at {peak:,} bytes"
