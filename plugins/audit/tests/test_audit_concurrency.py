"""Many threads and several processes appending to one trail keep one valid chain."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections import Counter

import pytest
from xlib_pipeline_audit import AuditPlugin, AuditTrail, open_trail, read, verify

from xlib_pipeline import Pipeline, PipelineManager


class TestThreads:
    def test_eight_threads_one_trail(self, tmp_path):
        """8 threads appending at once never interleave bytes or fork the chain."""
        path = tmp_path / "a.jsonl"
        trail = AuditTrail(path, fsync="never")
        start = threading.Barrier(8)

        def work(k: int) -> None:
            start.wait()
            for i in range(150):
                trail.append({"action": "test.write", "task": f"w{k}", "attempt": i})

        threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        trail.close()
        report = verify(path)
        assert report.ok, str(report)
        assert report.records == 1200
        assert Counter(r["task"] for r in read(path)) == {f"w{k}": 150 for k in range(8)}

    def test_eight_lanes_and_two_managers_share_a_trail(self, tmp_path):
        """Two managers (8 lanes each) running at once on one path share one writer."""
        path = tmp_path / "a.jsonl"
        cfg = {"audit": {"path": str(path)}, "max_workers": 8}
        pms = [PipelineManager(cfg, entry_points=False, plugins=[AuditPlugin()]) for _ in range(2)]
        p = Pipeline("wide")
        for i in range(40):
            p.add_task(f"t{i}", lambda: 1)
        threads = [threading.Thread(target=pm.execute_pipeline, args=(p,)) for pm in pms]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert pms[0].get_plugin("audit").trail is pms[1].get_plugin("audit").trail
        finally:
            for pm in pms:
                pm.close()
        report = verify(path)
        assert report.ok, str(report)
        assert report.records == 2 * (40 * 2 + 2)

    def test_same_path_with_other_key_is_refused(self, tmp_path):
        """Two writers of one file in a process must agree on the HMAC key."""
        path = tmp_path / "a.jsonl"
        first = open_trail(path, key=None)
        try:
            with pytest.raises(Exception, match="HMAC key"):
                open_trail(path, key=b"k")
        finally:
            first.release()


WORKER = textwrap.dedent(
    """
    import sys
    from xlib_pipeline import Pipeline, PipelineManager
    from xlib_pipeline_audit import AuditPlugin

    path, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    pm = PipelineManager(
        {"audit": {"path": path, "multiprocess": True, "fsync": "never"}, "max_workers": 4},
        entry_points=False,
        plugins=[AuditPlugin()],
    )
    for r in range(n):
        p = Pipeline(f"{tag}_{r}")
        for i in range(25):
            p.add_task(f"t{i}", lambda: 1)
        assert pm.execute_pipeline(p).success
    pm.close()
    print("done", tag)
    """
)


class TestProcesses:
    def test_two_processes_multiprocess_mode(self, tmp_path):
        """Two processes running pipelines against one trail keep a valid chain (flock)."""
        path = tmp_path / "shared.jsonl"
        script = tmp_path / "worker.py"
        script.write_text(WORKER)
        procs = [
            subprocess.Popen(
                [sys.executable, str(script), str(path), tag, "6"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for tag in ("p1", "p2")
        ]
        for proc in procs:
            _out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
        report = verify(path)
        assert report.ok, str(report)
        assert report.records == 2 * 6 * (25 * 2 + 2)
        pipelines = Counter(r["pipeline"].split("_")[0] for r in read(path))
        assert pipelines == {"p1": 6 * 52, "p2": 6 * 52}

    @pytest.mark.parametrize("write_through", [True, False])
    def test_single_process_writer_notices_another_writer(self, tmp_path, write_through):
        """A writer not told about other processes re-reads the tail once the file grew."""
        path = tmp_path / "a.jsonl"
        mine = AuditTrail(path, fsync="never", write_through=write_through, batch_interval_ms=0)
        mine.append({"action": "test.mine"})
        script = tmp_path / "other.py"
        script.write_text(
            "import sys\n"
            "from xlib_pipeline_audit import AuditTrail\n"
            "t = AuditTrail(sys.argv[1], fsync='never', multiprocess=True)\n"
            "for i in range(3):\n"
            "    t.append({'action': 'test.other'})\n"
            "t.close()\n"
        )
        subprocess.run([sys.executable, str(script), str(path)], check=True, timeout=120)
        mine.append({"action": "test.mine"})
        mine.close()
        report = verify(path)
        assert report.ok, str(report)
        actions = [r["action"] for r in read(path)]
        # Group commit has no window: both write paths put a record in the file at once.
        assert actions == ["test.mine", "test.other", "test.other", "test.other", "test.mine"]
