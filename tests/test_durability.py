"""Durability of the run store: commit order, storage faults, leases, interrupted runs."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from xlib_pipeline import Pipeline, PipelineManager, StoreError
from xlib_pipeline._store import RunLeasedError, RunStore


def manager(path: Path, **store: Any) -> PipelineManager:
    return PipelineManager({"store": {"path": str(path), **store}}, entry_points=False)


def committed(db: Path, run_id: str) -> dict[str, str]:
    """Task statuses as another connection sees them (committed rows only)."""
    with sqlite3.connect(db) as c:
        return dict(c.execute("SELECT task, status FROM tasks WHERE run_id=?", (run_id,)))


def diamond(db: Path, seen: list[tuple[str, dict[str, str]]], calls: list[str]) -> Pipeline:
    """a -> (b, c) -> d; each body notes what the store had committed when it started."""
    p = Pipeline("diamond")

    def body(name: str):
        def run(*ups: int) -> int:
            calls.append(name)
            with sqlite3.connect(db) as c:
                rid = c.execute("SELECT run_id FROM runs ORDER BY started DESC").fetchone()[0]
            seen.append((name, committed(db, rid)))
            return sum(ups) + 1

        return run

    p.add_task("a", body("a"))
    p.add_task("b", body("b"), depends_on=["a"])
    p.add_task("c", body("c"), depends_on=["a"])
    p.add_task("d", body("d"), depends_on=["b", "c"])
    return p


class TestCommitOrder:
    @pytest.mark.parametrize("parallel", [True, False])
    def test_upstreams_are_committed_before_a_task_starts(
        self, tmp_path: Path, parallel: bool
    ) -> None:
        """(b): when a task's body starts, every upstream's outcome is committed."""
        db = tmp_path / "runs.sqlite"
        seen: list[tuple[str, dict[str, str]]] = []
        p = diamond(db, seen, [])
        with manager(db) as pm:
            result = pm.execute_pipeline(p, parallel=parallel)
        assert result.success
        ups = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}
        for name, rows in seen:
            for up in ups[name]:
                assert rows.get(up) == "succeeded", f"{name} started before {up} was committed"

    def test_everything_committed_when_execute_returns(self, tmp_path: Path) -> None:
        """(c): the run's final status and every task are committed on return."""
        db = tmp_path / "runs.sqlite"
        p = diamond(db, [], [])
        pm = manager(db)
        result = pm.execute_pipeline(p)
        with sqlite3.connect(db) as c:
            status = c.execute(
                "SELECT status FROM runs WHERE run_id=?", (result.run_id,)
            ).fetchone()[0]
        assert status == "succeeded"
        assert committed(db, result.run_id) == dict.fromkeys("abcd", "succeeded")
        pm.close()

    def test_removed_window_keys_are_refused(self, tmp_path: Path) -> None:
        """store.batch_ms no longer means anything: refused by name, not ignored."""
        with pytest.raises(Exception, match=r"store\.batch_ms"):
            manager(tmp_path / "x.sqlite", batch_ms=5)


def eio_after(n: int) -> Any:
    """A write hook failing every write after the first ``n`` with EIO."""
    count = [0]

    def hook(batch: list[Any]) -> None:
        count[0] += 1
        if count[0] > n:
            raise OSError(errno.EIO, "Input/output error (injected)")

    return hook


def chain(n: int, calls: list[str]) -> Pipeline:
    p = Pipeline("chain")
    prev: list[str] = []
    for k in range(n):
        name = f"t{k}"

        def run(*ups: int, _n: str = name) -> int:
            calls.append(_n)
            return sum(ups) + 1

        p.add_task(name, run, depends_on=prev)
        prev = [name]
    return p


class TestStorageFaults:
    def test_eio_fails_the_run_and_resume_finishes_it(self, tmp_path: Path) -> None:
        """EIO on a write: the run stops, returns a failed result naming file and errno;
        what was committed stays; after the fault is gone, resume runs only the rest."""
        db = tmp_path / "runs.sqlite"
        calls: list[str] = []
        p = chain(8, calls)
        with manager(db) as pm:
            store = pm.store
            assert store is not None
            store.flush()
            store.write_hook = eio_after(4)
            result = pm.execute_pipeline(p, parallel=False)
            assert not result.success
            assert result.status == "failed"
            assert isinstance(result.error, StoreError)
            assert str(db) in str(result.error) and "EIO" in str(result.error)
            store.write_hook = None
        done = {t for t, s in committed(db, result.run_id).items() if s == "succeeded"}
        assert done and len(done) < 8
        assert len(calls) < 8, "the run stopped scheduling after the fault"
        with sqlite3.connect(db) as c:
            assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        calls.clear()
        with manager(db) as pm:
            again = pm.execute_pipeline(p, resume=result.run_id)
        assert again.success and again.final_result == 8
        assert not done & set(calls), "a committed task ran again"

    def test_threads_eio_never_leaves_the_run_running(self, tmp_path: Path) -> None:
        """With threads, the failure stops the run too and execute_pipeline returns."""
        db = tmp_path / "runs.sqlite"
        calls: list[str] = []
        p = chain(20, calls)
        pm = manager(db)
        store = pm.store
        assert store is not None
        store.flush()
        store.write_hook = eio_after(3)
        result = pm.execute_pipeline(p)
        assert not result.success and isinstance(result.error, StoreError)
        store.write_hook = None
        pm.close()  # the statements kept after the fault are committed now
        with sqlite3.connect(db) as c:
            status = c.execute(
                "SELECT status FROM runs WHERE run_id=?", (result.run_id,)
            ).fetchone()[0]
        assert status == "failed"

    def test_locked_store_fails_clearly_then_resumes(self, tmp_path: Path) -> None:
        """Another process holds a write transaction longer than the busy timeout."""
        db = tmp_path / "runs.sqlite"
        calls: list[str] = []
        p = chain(5, calls)
        pm = manager(db, busy_timeout_ms=200)
        store = pm.store
        assert store is not None
        store.flush()
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                textwrap.dedent(
                    f"""
                    import sqlite3, sys, time
                    c = sqlite3.connect({str(db)!r}, isolation_level=None)
                    c.execute("BEGIN EXCLUSIVE")
                    print("locked", flush=True)
                    sys.stdin.readline()
                    c.execute("ROLLBACK")
                    """
                ),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            with pytest.raises(StoreError, match=r"SQLITE_BUSY|locked"):
                pm.execute_pipeline(p)  # the run row itself cannot be written: nothing ran
            assert calls == []
        finally:
            assert holder.stdin is not None
            holder.stdin.write("\n")
            holder.stdin.flush()
            holder.wait(timeout=30)
        result = pm.execute_pipeline(p)
        assert result.success
        pm.close()

    def test_lock_in_the_middle_of_a_run(self, tmp_path: Path) -> None:
        """The lock is taken while tasks run: the run fails with SQLITE_BUSY, returns a
        result, and resume finishes it once the lock is gone."""
        db = tmp_path / "runs.sqlite"
        locked = threading.Event()
        release = threading.Event()

        def hold() -> None:
            c = sqlite3.connect(db, isolation_level=None)
            c.execute("BEGIN EXCLUSIVE")
            locked.set()
            release.wait(30)
            c.execute("ROLLBACK")
            c.close()

        p = Pipeline("mid")
        p.add_task("a", lambda: 1)

        def b(x: int) -> int:
            threading.Thread(target=hold, daemon=True).start()
            locked.wait(10)
            return x + 1

        p.add_task("b", b, depends_on=["a"])
        p.add_task("c", lambda x: x + 1, depends_on=["b"])
        pm = manager(db, busy_timeout_ms=300)
        result = pm.execute_pipeline(p, parallel=False)
        release.set()
        assert not result.success and isinstance(result.error, StoreError)
        assert "SQLITE_BUSY" in str(result.error) and str(db) in str(result.error)
        assert result.tasks["c"].status.value == "cancelled"
        time.sleep(0.2)
        again = pm.execute_pipeline(p, resume=result.run_id)
        assert again.success and again.final_result == 3
        pm.close()

    def test_file_size_limit(self, tmp_path: Path) -> None:
        """EFBIG (RLIMIT_FSIZE): the run fails naming the file; resume finishes it."""
        db = tmp_path / "runs.sqlite"
        script = tmp_path / "big.py"
        script.write_text(
            textwrap.dedent(
                f"""
                import resource, signal, sys
                from xlib_pipeline import Pipeline, PipelineManager
                p = Pipeline("big")
                prev = []
                for k in range(12):
                    p.add_task(f"t{{k}}", lambda *u: b"x" * 200_000, depends_on=prev)
                    prev = [f"t{{k}}"]
                pm = PipelineManager({{"store": {{"path": {str(db)!r}}}}}, entry_points=False)
                pm.store.flush()
                if sys.argv[1] == "limit":
                    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                    resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))
                    r = pm.execute_pipeline(p, parallel=False)
                else:
                    r = pm.execute_pipeline(p, resume=sys.argv[2])
                print(r.run_id, r.status)
                print(r.error)
                """
            )
        )
        out = subprocess.run(
            [sys.executable, str(script), "limit"], capture_output=True, text=True, timeout=120
        )
        run_id, status = out.stdout.split("\n")[0].split()
        assert status == "failed", out.stdout + out.stderr
        assert str(db) in out.stdout and ("EFBIG" in out.stdout or "SQLITE_FULL" in out.stdout)
        with sqlite3.connect(db) as c:
            assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        out = subprocess.run(
            [sys.executable, str(script), "resume", run_id],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.stdout.split("\n")[0].split()[1] == "succeeded", out.stdout + out.stderr

    def test_disk_full(self, tmp_path: Path) -> None:
        """ENOSPC on a small filesystem: the run fails naming the file; once space is
        freed, resume finishes it with nothing committed re-run."""
        mnt = tmp_path / "small"
        mnt.mkdir()
        made = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True
        )
        if made.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here (needs root): {made.stderr!r}")
        try:
            db = mnt / "runs.sqlite"
            ballast = mnt / "ballast"
            calls: list[str] = []
            p = Pipeline("full")
            prev: list[str] = []
            for k in range(40):
                name = f"t{k}"

                def run(*u: Any, _n: str = name) -> bytes:
                    calls.append(_n)
                    return os.urandom(20_000)

                p.add_task(name, run, depends_on=prev)
                prev = [name]
            pm = manager(db)
            assert pm.store is not None
            pm.store.flush()
            ballast.write_bytes(b"\0" * 3_300_000)
            result = pm.execute_pipeline(p, parallel=False)
            assert not result.success and isinstance(result.error, StoreError)
            assert str(db) in str(result.error)
            assert "SQLITE_FULL" in str(result.error) or "ENOSPC" in str(result.error)
            done = {t for t, s in committed(db, result.run_id).items() if s == "succeeded"}
            ballast.unlink()
            pm.close()
            with sqlite3.connect(db) as c:
                assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            calls.clear()
            with manager(db) as pm2:
                again = pm2.execute_pipeline(p, resume=result.run_id)
            assert again.success
            assert not done & set(calls)
        finally:
            subprocess.run(["umount", "-l", str(mnt)], check=False)

    def test_two_processes_share_one_store(self, tmp_path: Path) -> None:
        """Two processes run pipelines against one store at once: both are recorded whole."""
        db = tmp_path / "runs.sqlite"
        RunStore(db).close()
        script = tmp_path / "many.py"
        script.write_text(
            textwrap.dedent(
                f"""
                from xlib_pipeline import Pipeline, PipelineManager
                p = Pipeline("many")
                for k in range(200):
                    p.add_task(f"t{{k}}", lambda *u: 1, depends_on=[f"t{{k - 1}}"] if k else [])
                pm = PipelineManager({{"store": {{"path": {str(db)!r}}}}}, entry_points=False)
                for _ in range(3):
                    assert pm.execute_pipeline(p).success
                pm.close()
                """
            )
        )
        procs = [subprocess.Popen([sys.executable, str(script)]) for _ in range(2)]
        assert [proc.wait(timeout=240) for proc in procs] == [0, 0]
        with sqlite3.connect(db) as c:
            runs = c.execute("SELECT run_id, status FROM runs").fetchall()
            assert len(runs) == 6 and {s for _, s in runs} == {"succeeded"}
            for rid, _ in runs:
                n = c.execute(
                    "SELECT COUNT(*) FROM tasks WHERE run_id=? AND status='succeeded'", (rid,)
                ).fetchone()[0]
                assert n == 200
            assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    def test_kill_9_during_wal_checkpoints(self, tmp_path: Path) -> None:
        """kill -9 while the WAL is being checkpointed (every tick, big outputs): the file
        opens cleanly, finished runs are whole, and the interrupted run resumes."""
        db = tmp_path / "runs.sqlite"
        script = tmp_path / "ckpt.py"
        script.write_text(
            textwrap.dedent(
                f"""
                import os, sys, time
                from xlib_pipeline import Pipeline, PipelineManager
                from xlib_pipeline import _commit
                _commit.Checkpointer.WAL_CHECKPOINT_BYTES = 0  # checkpoint at every tick
                p = Pipeline("ckpt")
                prev = []
                for k in range(60):
                    p.add_task(f"t{{k}}", lambda *u: os.urandom(50_000), depends_on=prev)
                    prev = [f"t{{k}}"]
                pm = PipelineManager({{"store": {{"path": {str(db)!r}}}}}, entry_points=False)
                for _ in range(3):  # finished runs, written while the WAL is checkpointed
                    pm.execute_pipeline(p, parallel=False)
                # The last run never ends by itself: the kill lands while its tasks are being
                # written and checkpointed, whatever the machine's speed.
                p.add_task("hold", lambda *u: time.sleep(600), depends_on=prev)
                print("slow", flush=True)
                pm.execute_pipeline(p, parallel=False)
                """
            )
        )
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "slow"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # kill once the last run has written some tasks
            with sqlite3.connect(db) as c:
                row = c.execute(
                    "SELECT COUNT(*) FROM tasks WHERE run_id IN "
                    "(SELECT run_id FROM runs WHERE status = 'running')"
                ).fetchone()
            if row and row[0] >= 20:
                break
            time.sleep(0.01)
        proc.kill()
        proc.wait(timeout=30)
        with sqlite3.connect(db) as c:
            assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            runs = c.execute("SELECT run_id, status FROM runs ORDER BY started").fetchall()
            for rid, status in runs:
                if status == "succeeded":
                    n = c.execute(
                        "SELECT COUNT(*) FROM tasks WHERE run_id=? AND output IS NOT NULL",
                        (rid,),
                    ).fetchone()[0]
                    assert n == 60
        assert runs and runs[-1][1] == "running"
        store = RunStore(db)
        assert store.get_run(runs[-1][0]).status == "interrupted"
        store.close()

    def test_output_too_large_is_a_failed_run_not_an_exception(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An output past what SQLite holds fails the run (result returned, not raised)."""
        from xlib_pipeline import _store_recorder as _recording

        monkeypatch.setattr(_recording, "MAX_BLOB", 1000)
        db = tmp_path / "runs.sqlite"
        p = Pipeline("big")
        p.add_task("a", lambda: b"x" * 5000)
        p.add_task("b", lambda x: len(x), depends_on=["a"])
        with manager(db) as pm:
            result = pm.execute_pipeline(p)
            rec = pm.store.get_run(result.run_id)  # type: ignore[union-attr]
        assert result.status == "failed" and isinstance(result.error, StoreError)
        assert "'a'" in str(result.error) and "bytes" in str(result.error)
        assert rec.status == "failed"


class TestLeases:
    def test_second_resume_of_a_leased_run_is_refused(self, tmp_path: Path) -> None:
        """Two concurrent resumes of one run: exactly one runs."""
        db = tmp_path / "runs.sqlite"
        gate = threading.Event()
        started = threading.Event()
        calls: list[str] = []
        fail = [True]

        p = Pipeline("lease")

        def a() -> int:
            calls.append("a")
            if fail[0]:
                raise RuntimeError("first attempt fails")
            started.set()
            gate.wait(10)
            return 1

        p.add_task("a", a)
        pm = manager(db)
        first = pm.execute_pipeline(p)
        assert not first.success
        fail[0] = False
        results: list[Any] = []
        t = threading.Thread(
            target=lambda: results.append(pm.execute_pipeline(p, resume=first.run_id))
        )
        t.start()
        assert started.wait(10)
        with pytest.raises(RunLeasedError, match="being executed right now"):
            pm.execute_pipeline(p, resume=first.run_id)
        gate.set()
        t.join(10)
        assert results[0].success
        assert calls == ["a", "a"]
        # once the first resume ended, its lease is gone
        assert pm.store.lease(first.run_id) is None  # type: ignore[union-attr]
        pm.close()

    def test_killed_run_reads_as_interrupted_and_its_lease_is_taken_over(
        self, tmp_path: Path
    ) -> None:
        db = tmp_path / "runs.sqlite"
        script = tmp_path / "slow.py"
        script.write_text(
            textwrap.dedent(
                f"""
                import time
                from xlib_pipeline import Pipeline, PipelineManager
                p = Pipeline("slow")
                p.add_task("a", lambda: 1)
                p.add_task("b", lambda x: time.sleep(60), depends_on=["a"])
                pm = PipelineManager({{"store": {{"path": {str(db)!r}}}}}, entry_points=False)
                pm.execute_pipeline(p)
                """
            )
        )
        proc = subprocess.Popen([sys.executable, str(script)])
        try:
            deadline = time.monotonic() + 60
            rid = None
            while time.monotonic() < deadline:
                if db.exists():
                    with sqlite3.connect(db) as c:
                        try:
                            row = c.execute("SELECT run_id FROM tasks WHERE task='a'").fetchone()
                        except sqlite3.OperationalError:  # the schema is being created
                            row = None
                    if row:
                        rid = row[0]
                        break
                time.sleep(0.05)
            assert rid is not None
            store = RunStore(db)
            assert store.get_run(rid).status == "running"
        finally:
            proc.kill()
            proc.wait()
        assert store.get_run(rid).status == "interrupted"
        assert [r.run_id for r in store.list_runs(status="interrupted")] == [rid]
        taken = store.acquire_leases("new-holder", [rid])
        assert [t.run_id for t in taken] == [rid]
        events = [e[2] for e in store.get_events(rid)]
        assert "lease.taken_over" in events
        store.close()


def test_store_files_are_private(tmp_path: Path) -> None:
    """The store and its WAL are created 0600, a new folder 0700."""
    db = tmp_path / "new" / "runs.sqlite"
    with manager(db) as pm:
        assert pm.execute_pipeline(chain(2, [])).success
        modes = {f.name: f.stat().st_mode & 0o777 for f in db.parent.iterdir()}
    assert (db.parent.stat().st_mode & 0o777) == 0o700
    assert modes["runs.sqlite"] == 0o600
    assert all(m == 0o600 for m in modes.values()), modes


class TestPrune:
    def test_keep_and_older_than_delete_whole_runs_and_reclaim_space(self, tmp_path: Path) -> None:
        from xlib_pipeline.cli import main as cli

        db = tmp_path / "runs.sqlite"
        p = Pipeline("big")
        p.add_task("a", lambda: os.urandom(200_000))
        with manager(db) as pm:
            ids = [pm.execute_pipeline(p).run_id for _ in range(5)]
        before = db.stat().st_size
        assert cli(["runs", "prune", "--keep", "2", "--dry-run", "--store", str(db)]) == 0
        assert len(RunStore(db).list_runs()) == 5
        assert cli(["runs", "prune", "--keep", "2", "--store", str(db)]) == 0
        store = RunStore(db)
        assert [r.run_id for r in store.list_runs()] == ids[:-3:-1]
        with sqlite3.connect(db) as c:
            for table in ("tasks", "events", "runs"):
                n = c.execute(
                    f"SELECT COUNT(*) FROM {table} WHERE run_id IN ({','.join('?' * 3)})", ids[:3]
                ).fetchone()[0]
                assert n == 0, table
            assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.stat().st_size < before - 400_000, "the space was not reclaimed"
        report = store.prune(older_than=0)
        assert sorted(report.runs) == sorted(ids[3:]) and report.rows > 0
        store.close()

    def test_a_run_resumed_from_is_kept_unless_forced(self, tmp_path: Path) -> None:
        db = tmp_path / "runs.sqlite"
        fail = [True]
        p = Pipeline("r")

        def a() -> int:
            if fail[0]:
                raise RuntimeError("first")
            return 1

        p.add_task("a", a)
        with manager(db) as pm:
            first = pm.execute_pipeline(p)
            fail[0] = False
            second = pm.execute_pipeline(p, resume=first.run_id)
            store = pm.store
            assert store is not None
            report = store.prune(older_than=0, keep=1)
            assert report.refused == (first.run_id,) and report.runs == ()
            forced = store.prune(older_than=0, keep=1, force=True)
            assert forced.runs == (first.run_id,)
            assert [r.run_id for r in store.list_runs()] == [second.run_id]

    def test_bad_duration_is_a_clear_error(self) -> None:
        from xlib_pipeline._prune import parse_duration

        assert parse_duration("2d") == 172800
        with pytest.raises(Exception, match="30d"):
            parse_duration("soon")


def test_the_wal_stays_bounded_while_runs_keep_committing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Back-to-back runs on one open store: the background checkpointer starts the WAL over
    (PASSIVE then TRUNCATE), so the -wal file never grows with the number of runs. With
    PASSIVE alone the WAL never restarted and grew by every run's writes."""
    from xlib_pipeline import _commit

    monkeypatch.setattr(_commit.Checkpointer, "WAL_CHECKPOINT_BYTES", 256 << 10)
    db = tmp_path / "runs.sqlite"
    wal = Path(str(db) + "-wal")
    p = Pipeline("wal")
    for k in range(200):
        p.add_task(f"t{k}", lambda: os.urandom(2_000))
    sizes = []
    runs = 0
    with manager(db) as pm:
        # A dozen checkpointer ticks, runs back to back, and at least 13 runs however slow
        # the machine is (under load 7 a run of 200 tasks can take over 0.25 s).
        end = time.monotonic() + 3
        while time.monotonic() < end or runs < 13:
            assert pm.execute_pipeline(p).success
            runs += 1
            sizes.append(wal.stat().st_size)
        deadline = time.monotonic() + 10
        while wal.stat().st_size >= 256 << 10 and time.monotonic() < deadline:
            time.sleep(0.05)  # idle: the next tick checkpoints and truncates
        idle = wal.stat().st_size
    # Never the sum of every run's writes (what PASSIVE alone let it become: the first
    # run's WAL times the runs), at most what a few ticks' runs add.
    assert max(sizes) < runs * sizes[0] / 3, (runs, sizes)
    assert idle < 256 << 10, (idle, sizes)
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT COUNT(*) FROM tasks").fetchone()[0] == runs * 200
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_the_wal_restarts_on_the_writers_connection_between_its_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The TRUNCATE checkpoint runs on the writer's own connection, queued between two of
    its commits: from another connection it took the write lock, and a commit arriving then
    slept in SQLite's busy handler (1, 2, 5, 10 ms ...: a stream batch waited 9-21 ms)."""
    from xlib_pipeline import _commit

    monkeypatch.setattr(_commit.Checkpointer, "WAL_CHECKPOINT_BYTES", 64 << 10)
    db = tmp_path / "runs.sqlite"
    wal = Path(str(db) + "-wal")
    p = Pipeline("wal")
    for k in range(50):
        p.add_task(f"t{k}", lambda: os.urandom(2_000))
    on_writer: list[str] = []
    with manager(db) as pm:
        store = pm.store
        assert isinstance(store, RunStore)
        conn = store._committer.connection()
        conn.set_trace_callback(lambda sql: on_writer.append(sql) if "TRUNCATE" in sql else None)
        end = time.monotonic() + 2
        runs = 0
        while time.monotonic() < end or (not on_writer and runs < 1000):
            assert pm.execute_pipeline(p).success
            runs += 1
        assert on_writer, "no TRUNCATE checkpoint ran on the writer's connection"
        deadline = time.monotonic() + 10
        while wal.stat().st_size >= 64 << 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert wal.stat().st_size < 64 << 10
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT COUNT(*) FROM tasks").fetchone()[0] == runs * 50
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_failed_wal_truncate_is_retried_at_the_next_tick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An SQLite error from the writer-side TRUNCATE (it is re-raised by the committer) must
    not end the checkpointer thread: the next tick truncates the WAL."""
    import sqlite3 as _sqlite3

    from xlib_pipeline import _commit

    monkeypatch.setattr(_commit.Checkpointer, "WAL_CHECKPOINT_BYTES", 64 << 10)
    real = _commit.Checkpointer._truncate
    failed: list[int] = []

    def flaky(self: Any, conn: Any) -> None:
        if not failed:
            failed.append(1)
            raise _sqlite3.OperationalError("disk I/O error (injected)")
        real(self, conn)

    monkeypatch.setattr(_commit.Checkpointer, "_truncate", flaky)
    db = tmp_path / "runs.sqlite"
    wal = Path(str(db) + "-wal")
    p = Pipeline("wal_retry")
    for k in range(50):
        p.add_task(f"t{k}", lambda: os.urandom(2_000))
    with manager(db) as pm:
        for _ in range(5):
            assert pm.execute_pipeline(p).success
        deadline = time.monotonic() + 10
        while (not failed or wal.stat().st_size >= 64 << 10) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert failed and wal.stat().st_size < 64 << 10
