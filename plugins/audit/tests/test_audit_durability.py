"""Durability of the audit trail: written before the body runs, faults, mid-file damage."""

from __future__ import annotations

import errno
import json
import time
from pathlib import Path

import pytest
from xlib_pipeline_audit import AuditPlugin, AuditTrail, AuditTrailError, read, verify

from xlib_pipeline import Pipeline, PipelineManager


def started_records(path: Path) -> list[str]:
    """Tasks with a task.started record in the file right now (what reached the OS)."""
    if not path.exists():
        return []
    out = []
    data = path.read_bytes()
    # Other lanes may be writing their records while this body reads: a read concurrent with
    # a write(2) can see part of it. Only complete (newline-terminated) records count; the
    # reading task's own record was written whole before its body started.
    for line in data[: data.rfind(b"\n") + 1].splitlines():
        rec = json.loads(line)
        if rec.get("action") == "task.started":
            out.append(rec["task"])
    return out


class TestStartedBeforeBody:
    @pytest.mark.parametrize("parallel", [True, False])
    @pytest.mark.parametrize("fsync", ["batch", "never"])
    def test_started_record_is_in_the_file_when_the_body_runs(
        self, tmp_path: Path, parallel: bool, fsync: str
    ) -> None:
        """(a): before a task's body starts, its task.started record reached the OS."""
        trail = tmp_path / "audit.jsonl"
        seen: dict[str, list[str]] = {}
        p = Pipeline("a")

        def body(name: str):
            def run(*ups: object) -> str:
                seen[name] = started_records(trail)
                return name

            return run

        for k in range(12):
            p.add_task(f"t{k}", body(f"t{k}"), depends_on=[f"t{k - 3}"] if k >= 3 else [])
        pm = PipelineManager(
            {"audit": {"path": str(trail), "fsync": fsync}, "max_workers": 4},
            entry_points=False,
            plugins=[AuditPlugin()],
        )
        with pm:
            assert pm.execute_pipeline(p, parallel=parallel).success
        for name, found in seen.items():
            assert name in found, f"{name} ran before its task.started record was written"
        assert verify(trail).ok


class TestFaults:
    def test_eio_is_reported_and_nothing_is_dropped(self, tmp_path: Path) -> None:
        """A failed write raises naming file and errno; the records are kept and written
        first once the fault is gone; the chain verifies."""
        path = tmp_path / "a.jsonl"
        trail = AuditTrail(path, fsync="never", write_through=True)
        trail.append({"action": "test.before"})

        def eio(data: bytes) -> None:
            raise OSError(errno.EIO, "Input/output error")

        trail.write_hook = eio
        with pytest.raises(AuditTrailError, match=r"EIO") as info:
            trail.append({"action": "test.during"})
        assert str(path) in str(info.value)
        trail.write_hook = None
        trail.append({"action": "test.after"})
        trail.close()
        assert [r["action"] for r in read(path)] == ["test.before", "test.during", "test.after"]
        assert verify(path).ok

    def test_a_failed_background_sync_fails_every_later_sync(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """fsync: batch syncs on the flusher thread; its EIO must reach the run's end (the
        recorder's sync), naming the file and errno, and must not be forgotten later."""
        from xlib_pipeline_audit import _flusher

        real = _flusher.background_sync
        path = tmp_path / "a.jsonl"

        def eio(current: AuditTrail) -> None:
            # Only this test's trail: flushers of other tests' trails still alive in this
            # process keep syncing for real (an EIO there failed unrelated tests).
            if current.path != path:
                real(current)
                return
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(_flusher, "background_sync", eio)
        trail = AuditTrail(path, fsync="batch")
        trail.append({"action": "test.one"}, wait=True)
        deadline = time.monotonic() + 30
        while trail._error is None and time.monotonic() < deadline:
            trail._wake.set()
            time.sleep(0.01)
        for _ in range(2):
            with pytest.raises(AuditTrailError, match=r"fdatasync failed.*EIO") as info:
                trail.sync()
            assert str(path) in str(info.value)
        trail.close()
        assert [r["action"] for r in read(path)] == ["test.one"]
        assert verify(path).ok

    def test_group_commit_keeps_a_failed_batch(self, tmp_path: Path) -> None:
        path = tmp_path / "a.jsonl"
        trail = AuditTrail(path, fsync="never")
        fail = [True]

        def hook(data: bytes) -> None:
            if fail[0]:
                raise OSError(errno.ENOSPC, "No space left on device")

        trail.append({"action": "test.first"}, wait=True)
        trail.write_hook = hook
        with pytest.raises(AuditTrailError, match="ENOSPC"):
            trail.append({"action": "test.lost?"}, wait=True)
        fail[0] = False
        trail.append({"action": "test.later"}, wait=True)
        trail.close()
        assert [r["action"] for r in read(path)] == ["test.first", "test.lost?", "test.later"]
        assert verify(path).ok


class TestDamage:
    def _trail(self, tmp_path: Path, n: int = 5) -> Path:
        path = tmp_path / "a.jsonl"
        trail = AuditTrail(path, fsync="never")
        for i in range(n):
            trail.append({"action": "test.rec", "i": i})
        trail.close()
        return path

    def test_writer_refuses_after_mid_file_damage(self, tmp_path: Path) -> None:
        """An edit in the middle (not at the tail, head still matching) stops the writer."""
        path = self._trail(tmp_path)
        lines = path.read_bytes().split(b"\n")
        lines[1] = lines[1].replace(b'"i":1', b'"i":7')
        path.write_bytes(b"\n".join(lines))
        before = path.read_bytes()
        trail = AuditTrail(path, fsync="never")
        with pytest.raises(AuditTrailError, match=r"line 2 \(seq 2\).*refusing to append"):
            trail.append({"action": "test.more"}, wait=True)
        assert path.read_bytes() == before, "nothing was appended to a damaged trail"

    def test_writer_refuses_a_deleted_middle_record(self, tmp_path: Path) -> None:
        path = self._trail(tmp_path)
        lines = path.read_bytes().split(b"\n")
        del lines[2]
        path.write_bytes(b"\n".join(lines))
        with pytest.raises(AuditTrailError, match=r"line 3 \(seq 3\)"):
            AuditTrail(path, fsync="never").append({"action": "test.more"}, wait=True)

    def test_writer_and_verify_share_one_head_check(self, tmp_path: Path) -> None:
        """The head anchor check is one function: both report the same reason."""
        path = self._trail(tmp_path)
        head = path.with_name(path.name + ".head")
        doc = json.loads(head.read_bytes())
        doc["size"] += 1
        from xlib_pipeline_audit._head import head_document

        fixed = head_document(
            trail=doc["trail"], seq=doc["seq"], last_hash=doc["hash"], size=doc["size"], key=None
        )
        head.write_text(json.dumps(fixed))
        report = verify(path)
        assert not report.ok and "does not end at byte" in str(report.reason)
        with pytest.raises(AuditTrailError, match="does not end at byte"):
            AuditTrail(path, fsync="never").append({"action": "x"}, wait=True)
