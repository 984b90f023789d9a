"""The run store: recording, encryption hooks, resume, and refusing bad files."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xlib_pipeline
from xlib_pipeline import (
    PayloadRef,
    Pipeline,
    PipelineManager,
    ResumeError,
    RetryDecision,
    StoreError,
    hookimpl,
)
from xlib_pipeline._store import RunStore


def manager(path: Path, *plugins: object, **config: object) -> PipelineManager:
    return PipelineManager(
        {"store": {"path": str(path)}, **config}, plugins=plugins, entry_points=False
    )


class XorCipher:
    """A toy cipher plugin: enough to see that the store only writes what encrypt returns."""

    name = "xor"

    def __init__(self) -> None:
        self.refs: list[PayloadRef] = []

    @hookimpl
    def encrypt(self, data: bytes, ref: PayloadRef) -> bytes:
        self.refs.append(ref)
        return b"XOR" + bytes(b ^ 0x5A for b in data)

    @hookimpl
    def decrypt(self, data: bytes, ref: PayloadRef) -> bytes:
        assert data.startswith(b"XOR")
        return bytes(b ^ 0x5A for b in data[3:])


def flaky_pipeline(flag: Path, calls: list[str]) -> Pipeline:
    p = Pipeline("flaky")

    @p.task("load")
    def load():
        calls.append("load")
        return {"rows": [1, 2, 3], "marker": "PLAINTEXT-MARKER-7731"}

    @p.task("transform", depends_on=["load"])
    def transform(data):
        calls.append("transform")
        if not flag.exists():
            raise RuntimeError("upstream system unavailable")
        return sum(data["rows"])

    @p.task("side", depends_on=["load"])
    def side(data):
        calls.append("side")
        return len(data["rows"])

    @p.task("report", depends_on=["transform", "side"])
    def report(total, n):
        calls.append("report")
        return {"total": total, "n": n}

    return p


class TestRecording:
    def test_run_tasks_and_events_are_recorded(self, tmp_path: Path) -> None:
        """A run, each task's status, attempts and output, and its events are stored."""
        calls: list[str] = []
        (tmp_path / "ok").touch()
        with manager(tmp_path / "runs.sqlite") as pm:
            result = pm.execute_pipeline(flaky_pipeline(tmp_path / "ok", calls))
            store = pm.store
            assert store is not None
            run = store.get_run(result.run_id)
            tasks = store.get_tasks(result.run_id)
            events = [e[2] for e in store.get_events(result.run_id)]
        assert run.status == "succeeded" and run.pipeline == "flaky"
        assert {n: t.status for n, t in tasks.items()} == dict.fromkeys(
            ["load", "transform", "side", "report"], "succeeded"
        )
        assert all(t.attempts == 1 and t.output for t in tasks.values())
        assert events.count("running") == 4 and events[-1] == "run.succeeded"

    def test_outputs_pass_through_the_encrypt_hook(self, tmp_path: Path) -> None:
        """The raw store file never holds an output's plaintext when a cipher plugin answers."""
        cipher = XorCipher()
        (tmp_path / "ok").touch()
        db = tmp_path / "runs.sqlite"
        with manager(db, cipher) as pm:
            result = pm.execute_pipeline(flaky_pipeline(tmp_path / "ok", []))
        assert result.success
        assert {r.task for r in cipher.refs} == {"load", "transform", "side", "report"}
        assert all(r.run_id == result.run_id for r in cipher.refs)
        raw = b"".join(p.read_bytes() for p in tmp_path.glob("runs.sqlite*"))
        assert b"PLAINTEXT-MARKER-7731" not in raw

    def test_failed_attempts_are_recorded(self, tmp_path: Path) -> None:
        """Every failed attempt of a retried task appears in the events with its error."""

        class RetryTwice:
            name = "retry-twice"

            @hookimpl
            def on_task_error(self, task, run, outcome):
                return RetryDecision(delay=0) if outcome.attempt < 3 else None

        state = {"n": 0}
        p = Pipeline("retry")

        @p.task("flaky")
        def flaky():
            state["n"] += 1
            if state["n"] < 3:
                raise ConnectionError(f"try {state['n']}")
            return "ok"

        with manager(tmp_path / "r.sqlite", RetryTwice()) as pm:
            result = pm.execute_pipeline(p)
            events = pm.store.get_events(result.run_id)
            tasks = pm.store.get_tasks(result.run_id)
        assert result.tasks["flaky"].attempts == 3
        assert tasks["flaky"].attempts == 3
        failed = [e for e in events if e[2] == "attempt_failed"]
        assert [(e[3], e[4]) for e in failed] == [(1, "ConnectionError"), (2, "ConnectionError")]


class TestResume:
    def test_resume_reruns_only_what_did_not_finish(self, tmp_path: Path) -> None:
        """Finished tasks are loaded from the store; the failed one and its dependents re-run."""
        calls: list[str] = []
        flag = tmp_path / "ok"
        p = flaky_pipeline(flag, calls)
        with manager(tmp_path / "runs.sqlite") as pm:
            first = pm.execute_pipeline(p)
            assert not first.success and first.failed_task == "transform"
            assert first.tasks["report"].status == "upstream_failed"
            calls.clear()
            flag.touch()
            second = pm.execute_pipeline(p, resume=first.run_id)
        assert second.success and second.resumed_from == first.run_id
        assert sorted(calls) == ["report", "transform"]
        assert second.final_result == {"total": 6, "n": 3}

    def test_resume_of_a_resumed_run_loads_carried_outputs(self, tmp_path: Path) -> None:
        """Outputs carried into a resumed run stay loadable when that run is resumed again."""
        calls: list[str] = []
        cipher = XorCipher()
        flag = tmp_path / "ok"
        p = flaky_pipeline(flag, calls)
        with manager(tmp_path / "runs.sqlite", cipher) as pm:
            first = pm.execute_pipeline(p)
            second = pm.execute_pipeline(p, resume=first.run_id)  # still failing
            flag.touch()
            calls.clear()
            third = pm.execute_pipeline(p, resume=second.run_id)
        assert third.success and sorted(calls) == ["report", "transform"]

    def test_changed_structure_is_refused_with_what_changed(self, tmp_path: Path) -> None:
        """Adding a task after a run makes resume refuse and name the added task."""
        p = flaky_pipeline(tmp_path / "ok", [])
        with manager(tmp_path / "runs.sqlite") as pm:
            first = pm.execute_pipeline(p)
            p.add_task("extra", lambda r: r, depends_on=["report"])
            with pytest.raises(ResumeError, match="tasks added: extra"):
                pm.execute_pipeline(p, resume=first.run_id)
            (tmp_path / "ok").touch()
            forced = pm.execute_pipeline(p, resume=first.run_id, force=True)
        assert forced.success

    def test_resume_without_store_or_unknown_run(self, tmp_path: Path) -> None:
        """Resume needs a store, and an unknown run id is named in the error."""
        p = flaky_pipeline(tmp_path / "ok", [])
        with pytest.raises(Exception, match="store"):
            PipelineManager(entry_points=False).execute_pipeline(p, resume="abc")
        with manager(tmp_path / "runs.sqlite") as pm, pytest.raises(StoreError, match="nope"):
            pm.execute_pipeline(p, resume="nope")

    def test_unpicklable_output_reruns_on_resume(self, tmp_path: Path) -> None:
        """An output the store could not pickle is not lost silently: its task runs again."""
        calls: list[str] = []
        flag = tmp_path / "ok"
        p = Pipeline("gen")

        @p.task("make")
        def make():
            calls.append("make")
            return (threading.Lock(), [0, 1, 2])  # locks cannot be pickled

        @p.task("use", depends_on=["make"])
        def use(gen):
            calls.append("use")
            if not flag.exists():
                raise RuntimeError("not yet")
            return sum(gen[1])

        with manager(tmp_path / "runs.sqlite") as pm:
            first = pm.execute_pipeline(p)
            flag.touch()
            calls.clear()
            second = pm.execute_pipeline(p, resume=first.run_id)
        assert second.final_result == 3 and calls == ["make", "use"]


@st.composite
def dags_with_failures(draw):
    n = draw(st.integers(2, 12))
    deps = {i: draw(st.sets(st.integers(0, i - 1), max_size=3)) if i else set() for i in range(n)}
    failing = draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=3))
    return n, deps, failing


class TestResumeProperty:
    @settings(
        max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(case=dags_with_failures())
    def test_resume_equals_uninterrupted_run(self, tmp_path: Path, case) -> None:
        """Once fixed, resume gives the uninterrupted result and re-runs no succeeded task."""
        n, deps, failing = case
        broken = set(failing)
        ran: list[int] = []

        def build() -> Pipeline:
            p = Pipeline("prop")
            for i in range(n):

                def fn(*ups, i=i):
                    ran.append(i)
                    if i in broken:
                        raise ValueError(f"task {i} broken")
                    return i + sum(ups)

                p.add_task(f"t{i}", fn, depends_on=[f"t{j}" for j in sorted(deps[i])])
            return p

        db = tmp_path / f"prop-{hashlib.md5(repr(case).encode()).hexdigest()}.sqlite"
        p = build()
        with manager(db) as pm:
            first = pm.execute_pipeline(p)
            done = {name for name, t in first.tasks.items() if t.status == "succeeded"}
            broken.clear()
            ran.clear()
            second = pm.execute_pipeline(p, resume=first.run_id)
        resumed_ran = list(ran)
        reference = PipelineManager(entry_points=False).execute_pipeline(build())
        ran[:] = resumed_ran
        assert second.success
        assert second.final_result == reference.final_result
        assert not {f"t{i}" for i in ran} & done
        assert len(ran) == len(set(ran))


class TestBadFiles:
    def test_corrupt_file_is_refused_and_left_untouched(self, tmp_path: Path) -> None:
        """A file that is not SQLite gives StoreError naming it; its bytes do not change."""
        bad = tmp_path / "runs.sqlite"
        bad.write_bytes(b"this is not a database" * 100)
        before = bad.read_bytes()
        with pytest.raises(StoreError, match=r"runs\.sqlite") as info:
            RunStore(bad)
        assert info.value.path == str(bad)
        assert bad.read_bytes() == before

    def test_foreign_sqlite_file_is_refused(self, tmp_path: Path) -> None:
        """Another application's SQLite database is not adopted as a run store."""
        other = tmp_path / "app.db"
        with sqlite3.connect(other) as c:
            c.execute("CREATE TABLE customers (id INTEGER, name TEXT)")
        before = other.read_bytes()
        with pytest.raises(StoreError, match="another application"):
            PipelineManager({"store": {"path": str(other)}}, entry_points=False).execute_pipeline(
                flaky_pipeline(tmp_path / "x", [])
            )
        assert other.read_bytes() == before

    def test_bad_store_config_names_the_key(self) -> None:
        """A bad store section is a config error naming 'store' and the bad key; a section
        without a path means the embedded default file."""
        with pytest.raises(xlib_pipeline.ConfigError, match=r"store.*'pth'"):
            PipelineManager({"store": {"pth": "runs.sqlite"}}, entry_points=False)
        with PipelineManager({"store": {"synchronous": "full"}}, entry_points=False) as pm:
            assert pm.store is not None and pm.store.path.name == "runs.sqlite"

    def test_integrity_after_runs(self, tmp_path: Path) -> None:
        """The store passes SQLite's integrity check after several runs."""
        db = tmp_path / "runs.sqlite"
        (tmp_path / "ok").touch()
        with manager(db) as pm:
            for _ in range(3):
                pm.execute_pipeline(flaky_pipeline(tmp_path / "ok", []))
        with sqlite3.connect(db) as c:
            assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


class BrokenCipher:
    """A cipher plugin whose encrypt fails (a keyring gone missing, say)."""

    name = "broken-cipher"

    @hookimpl
    def encrypt(self, data: bytes, ref: PayloadRef) -> bytes:
        raise OSError("key file vanished")


class TestStoreFailures:
    def test_failing_encrypt_fails_the_run_and_stores_no_plaintext(self, tmp_path: Path) -> None:
        """If an output cannot be encrypted, the run fails naming the plugin; nothing leaks."""
        (tmp_path / "ok").touch()
        db = tmp_path / "runs.sqlite"
        for parallel in (False, True):
            with manager(db, BrokenCipher()) as pm:
                result = pm.execute_pipeline(flaky_pipeline(tmp_path / "ok", []), parallel=parallel)
                run = pm.store.get_run(result.run_id)
            assert not result.success and result.status == "failed"
            assert getattr(result.error, "plugin", None) == "broken-cipher"
            assert "key file vanished" in str(result.error)
            assert run.status == "failed"
        raw = b"".join(p.read_bytes() for p in tmp_path.glob("runs.sqlite*"))
        assert b"PLAINTEXT-MARKER-7731" not in raw


def test_a_version_2_store_is_migrated_to_folded_running_events(tmp_path: Path) -> None:
    """A store written before tasks.ran existed (schema version 2) gains the columns when
    opened; its old runs read back as before and new runs fold their starts."""
    path = tmp_path / "runs.sqlite"
    p = Pipeline("old")
    p.add_task("a", lambda: 1)
    p.add_task("b", lambda a: a + 1, depends_on=["a"])
    with manager(path) as pm:
        old = pm.execute_pipeline(p)
        before = pm.store.get_events(old.run_id)  # type: ignore[union-attr]
    with sqlite3.connect(path) as conn:  # back to version 2: unfold, drop the columns
        conn.execute(
            "INSERT INTO events (run_id, task, ts, event, attempt) SELECT run_id, task, ran, "
            "'running', ran_attempt FROM tasks WHERE ran IS NOT NULL"
        )
        conn.execute("ALTER TABLE tasks DROP COLUMN ran")
        conn.execute("ALTER TABLE tasks DROP COLUMN ran_attempt")
        conn.execute("PRAGMA user_version = 2")
    with manager(path) as pm:
        assert pm.store.get_events(old.run_id) == before  # type: ignore[union-attr]
        new = pm.execute_pipeline(p)
        events = pm.store.get_events(new.run_id)  # type: ignore[union-attr]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
        folded = conn.execute(
            "SELECT count(*) FROM tasks WHERE run_id = ? AND ran IS NOT NULL", (new.run_id,)
        ).fetchone()[0]
    assert [e[2] for e in events] == [e[2] for e in before]
    assert folded >= 1


# -- reads on the writer's connection (a result-cache hit reads right after a commit) -------


_ROW = "INSERT OR REPLACE INTO cache_entries VALUES ('{key}', NULL, 'p', 't', 0, NULL, 'r2', x'00')"


def _cache_with_entry(tmp_path: Path) -> tuple[RunStore, object]:
    store = RunStore(tmp_path / "runs.sqlite")
    cache = store.open_cache()
    cache.put("k1", tenant=None, pipeline="p", task="t", ttl=None, run_id="r", output=b"v1")
    assert cache.get("k1", None, 0.0) == (b"v1", "r")  # commits the queued entry
    return store, cache


def test_an_idle_writer_lends_its_connection_and_a_busy_one_does_not_wait(
    tmp_path: Path,
) -> None:
    store, cache = _cache_with_entry(tmp_path)
    try:
        seen: list[object] = []
        assert store.read_if_idle(lambda c: seen.append(c) or "read", "busy") == "read"
        assert len(seen) == 1
        # A commit in flight: the writer is blocked inside its write.
        entered, release = threading.Event(), threading.Event()

        def block(batch: object) -> None:
            entered.set()
            assert release.wait(10)

        store.write_hook = block
        store.submit(_ROW.format(key="x"), ())
        assert entered.wait(10)
        called: list[object] = []
        assert store.read_if_idle(called.append, "busy") == "busy"
        assert called == []
        # The cache reads on a connection of its own meanwhile: it still sees the entry.
        found = cache.get("k1", None, 0.0)  # type: ignore[attr-defined]
        assert found == (b"v1", "r")
        release.set()
        store.write_hook = None
        store.flush()
    finally:
        store.close()


def test_a_commit_asked_for_during_a_read_is_handed_to_the_writer(tmp_path: Path) -> None:
    store, _ = _cache_with_entry(tmp_path)
    try:
        done = threading.Event()
        errors: list[object] = []

        def read_and_commit(conn: sqlite3.Connection) -> object:
            store.add(_ROW.format(key="during"), ())
            store.commit(lambda err: (errors.append(err), done.set()))
            return conn.execute("SELECT output FROM cache_entries WHERE key = 'k1'").fetchone()

        assert store.read_if_idle(read_and_commit, None) == (b"v1",)
        assert done.wait(10), "the commit asked for during the read never ran"
        assert errors == [None]
        check = sqlite3.connect(tmp_path / "runs.sqlite")
        try:
            row = check.execute("SELECT run_id FROM cache_entries WHERE key = 'during'").fetchone()
        finally:
            check.close()
        assert row == ("r2",)
    finally:
        store.close()


def test_a_commit_callback_runs_after_what_its_thread_queued_is_committed(
    tmp_path: Path,
) -> None:
    """Issue 10 (b) at the committer: statements are queued without a lock, yet the callback
    of ``commit(then)`` runs only once every statement its thread queued before asking is
    committed (read back by another connection inside the callback), with four threads
    queueing and asking at once."""
    store = RunStore(tmp_path / "runs.sqlite")
    reader = sqlite3.connect(tmp_path / "runs.sqlite", check_same_thread=False)
    seen: list[tuple[str, object, bool]] = []
    lock = threading.Lock()

    def worker(t: int) -> None:
        for k in range(250):
            name = f"w{t}-{k}"
            store.add(
                "INSERT INTO blob_refs (run_id, task, name) VALUES (?, ?, ?)", ("r", name, "b")
            )

            def then(err: BaseException | None, name: str = name) -> None:
                row = reader.execute(
                    "SELECT 1 FROM blob_refs WHERE run_id = 'r' AND task = ?", (name,)
                ).fetchone()
                with lock:
                    seen.append((name, err, row is not None))

            store.commit(then)

    try:
        threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        store.flush()
    finally:
        store.close()
        reader.close()
    assert len(seen) == 1000
    missing = [(name, err) for name, err, ok in seen if err is not None or not ok]
    assert not missing, f"callbacks ran before their rows were committed: {missing[:5]}"


def test_connections_creating_one_new_store_at_once_all_open_it(tmp_path: Path) -> None:
    """Several openers of a new file at once (two processes' first runs): each must see a
    store, never "a database of another application" (the id and tables read apart used to
    straddle another opener's creation: 74 of 100 rounds refused one) nor "locked"."""
    for rnd in range(30):
        path = tmp_path / f"r{rnd}" / "runs.sqlite"
        errors: list[BaseException] = []
        start = threading.Barrier(6)

        def open_store(
            path: Path = path,
            start: threading.Barrier = start,
            errors: list[BaseException] = errors,
        ) -> None:
            start.wait()
            try:
                RunStore(path).close()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=open_store) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [], errors[0]


def test_runs_record_their_managers_config_encoded_once_per_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every run of a manager records the same validated config: encoded once (a stream
    records it for every micro-batch); another manager's runs record their own."""
    from xlib_pipeline import _store_recorder

    encoded: list[Any] = []
    real = _store_recorder._jsonable

    def spy(value: Any) -> str:
        encoded.append(value)
        return real(value)

    monkeypatch.setattr(_store_recorder, "_jsonable", spy)
    p = Pipeline("cfg")
    p.add_task("a", lambda: 1)
    stores = [tmp_path / "one.sqlite", tmp_path / "two.sqlite"]
    ids: list[list[str]] = [[], []]
    for i, db in enumerate(stores):
        with PipelineManager({"store": {"path": str(db)}, "max_workers": i + 1}) as pm:
            for _ in range(3):
                ids[i].append(pm.execute_pipeline(p).run_id)
            configs = [c for c in encoded if isinstance(c, dict) and "store" in c]
            assert len(configs) == i + 1, configs  # once per manager's config
            for rid in ids[i]:
                rec = pm.store.get_run(rid)
                assert rec.config["store"]["path"] == str(db)
                assert rec.config.get("max_workers") == i + 1


def test_a_commit_writes_only_what_was_queued_before_it_was_asked_for() -> None:
    """The cut: statements queued while a commit is in flight, with no commit asked for yet
    (the first half of a stream batch's unit), are not swept into the next transaction; the
    commit asked for after them writes them together."""
    from xlib_pipeline.store import GroupCommitter

    entered, release = threading.Event(), threading.Event()
    written: list[list[str]] = []

    class Slow(GroupCommitter):
        def write(self, batch: list[Any]) -> None:
            written.append([sql for sql, _ in batch])
            entered.set()
            release.wait(10)

    c = Slow()
    done: list[BaseException | None] = []
    c.add("a1", ())
    c.add("a2", ())
    c.commit(done.append)  # the writer thread takes a1, a2 and blocks in write
    assert entered.wait(10)
    c.add("b1", ())  # queued while a1, a2 commit; no commit asked for yet
    release.set()
    for _ in range(1000):
        with c._lock:
            if not c._busy:
                break
        threading.Event().wait(0.01)
    assert done == [None]
    assert written == [["a1", "a2"]], "b1 was swept into a commit nobody asked for"
    c.add("b2", ())
    c.flush()
    assert written == [["a1", "a2"], ["b1", "b2"]]
    c.close()


def test_a_writer_thread_bug_answers_the_waiters_instead_of_hanging_them() -> None:
    """A write on the writer thread that raises something that is not a storage fault (a
    bug) used to be swallowed with the callbacks requeued: a waiter hung until some other
    commit came. Now the waiters get a StoreError naming it, nothing queued is dropped, and
    the next flush retries it."""
    from xlib_pipeline.exceptions import StoreError
    from xlib_pipeline.store import GroupCommitter

    written: list[list[str]] = []
    calls = [0]

    class Buggy(GroupCommitter):
        def write(self, batch: list[Any]) -> None:
            calls[0] += 1
            if calls[0] == 1:
                raise RuntimeError("a bug in write")
            written.append([sql for sql, _ in batch])

    c = Buggy()
    got: list[BaseException | None] = []
    done = threading.Event()
    c.add("a1", ())
    c.commit(lambda err: (got.append(err), done.set()))  # taken by the writer thread
    assert done.wait(10), "the waiter was left hanging"
    err = got[0]
    assert isinstance(err, StoreError) and "RuntimeError: a bug in write" in str(err)
    assert isinstance(err.__cause__, RuntimeError)
    later: list[BaseException | None] = []
    c.commit(later.append)  # fails fast meanwhile, as after a failed write
    assert later and isinstance(later[0], StoreError)
    c.flush()  # retries: nothing was dropped
    assert written == [["a1"]]
    c.close()
