"""What a small run computes once instead of on every run keeps the behaviour it had: the
run's lazy flags, the run id's layout, the logger lookup, the params encoder, the
``encrypt`` check per hooks facade, the pipeline's start and end events."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xlib_pipeline import Pipeline, PipelineManager, _outcomes, hookimpl
from xlib_pipeline._events import _stdlib_logger, events_enabled
from xlib_pipeline._lanes import Flag
from xlib_pipeline._outcomes import Columns, new_run_id
from xlib_pipeline._records import Status
from xlib_pipeline._results import TaskResults
from xlib_pipeline._store_recorder import _jsonable, _sealing
from xlib_pipeline.exceptions import ConfigError, DefinitionError

# -- Flag: threading.Event's is_set / set / wait -------------------------------------------


def test_flag_is_an_event_for_its_users() -> None:
    f = Flag()
    assert not f.is_set()
    assert f.wait(0) is False
    t0 = time.monotonic()
    assert f.wait(0.05) is False  # times out like Event.wait
    assert time.monotonic() - t0 >= 0.04
    f.set()
    assert f.is_set() and f.wait() is True and f.wait(0) is True
    f.set()  # twice is harmless
    assert f.is_set()


def test_flag_set_before_any_wait_releases_later_waiters() -> None:
    f = Flag()
    f.set()
    assert f.wait(5) is True  # made after set: must not block


@pytest.mark.parametrize("waiters", [1, 4])
def test_flag_releases_waiting_threads(waiters: int) -> None:
    """Threads waiting (on the Event made by the first wait) wake when another sets it."""
    f = Flag()
    woke: list[bool] = []
    started = threading.Barrier(waiters + 1)

    def wait() -> None:
        started.wait()
        woke.append(f.wait(10))

    threads = [threading.Thread(target=wait) for _ in range(waiters)]
    for t in threads:
        t.start()
    started.wait()
    time.sleep(0.02)  # most are inside wait now; a late one sees the flag
    f.set()
    for t in threads:
        t.join(10)
    assert woke == [True] * waiters


def test_flag_set_racing_the_first_wait_is_never_lost() -> None:
    """set() and the wait() that makes the Event, started together many times: every waiter
    returns True well before its timeout."""
    for _ in range(200):
        f = Flag()
        out: list[bool] = []
        go = threading.Barrier(2)

        def wait(flag: Flag = f, result: list[bool] = out, barrier: threading.Barrier = go) -> None:
            barrier.wait()
            result.append(flag.wait(5))

        t = threading.Thread(target=wait)
        t.start()
        go.wait()
        f.set()
        t.join(10)
        assert out == [True]


def test_a_run_cancelled_from_another_thread_still_ends() -> None:
    """cancel_run waits on the run's finished flag in its grace thread."""
    gate = threading.Event()
    p = Pipeline("cancel")
    p.add_task("slow", lambda: gate.wait(5))
    p.add_task("after", lambda x: x, depends_on=["slow"])
    rid = "run-cancel-flag"
    with PipelineManager({"cancel_grace_seconds": 5}) as pm:
        box: list = []
        t = threading.Thread(
            target=lambda: box.append(pm.execute_pipeline(p, run_id=rid, parallel=False))
        )
        t.start()
        while not pm.cancel_run(rid, reason="test"):
            time.sleep(0.001)
        gate.set()
        t.join(10)
    assert box and box[0].status == "cancelled"
    assert box[0].tasks.get("after").status == "cancelled"


# -- the run id ---------------------------------------------------------------------------


@given(st.binary(min_size=10, max_size=10), st.floats(0, 2**47 / 1000))
@settings(max_examples=200, deadline=None)
def test_run_id_layout(monkeypatch_bytes: bytes, now: float) -> None:
    """48 bits of milliseconds, version 7, the RFC 4122 variant, the other 74 bits random
    (as the UUIDv7 built by masking the random bits one field at a time)."""
    real_random, real_time = _outcomes.random_bytes, time.time
    _outcomes.random_bytes = lambda n: monkeypatch_bytes[:n]
    time.time = lambda: now  # type: ignore[assignment]
    try:
        rid = new_run_id()
    finally:
        _outcomes.random_bytes, time.time = real_random, real_time
    ms = int(now * 1000)
    rand = int.from_bytes(monkeypatch_bytes, "big")
    want = (ms & ((1 << 48) - 1)) << 80 | rand & ((1 << 80) - 1)
    want = (want & ~(0xF << 76)) | (0x7 << 76)
    want = (want & ~(0x3 << 62)) | (0x2 << 62)
    u = uuid.UUID(rid)
    assert u.int == want and u.version == 7 and u.variant == uuid.RFC_4122
    assert rid == str(u)


def test_run_ids_draw_random_bytes_in_blocks_never_twice(monkeypatch) -> None:
    """One os.urandom call per _POOL run ids; the bytes of each id are the next ones of the
    block, so ids minted by threads at once are all distinct."""
    import os

    calls: list[int] = []
    real = os.urandom

    def counting(n: int) -> bytes:
        calls.append(n)
        return real(n)

    monkeypatch.setattr(os, "urandom", counting)
    monkeypatch.setattr(_outcomes, "_random", [b"", 0])
    first = [_outcomes.random_bytes(10) for _ in range(_outcomes._POOL)]
    assert calls == [10 * _outcomes._POOL]
    assert b"".join(first) == _outcomes._random[0]
    ids: list[str] = []

    def mint() -> None:
        ids.extend(new_run_id() for _ in range(2000))

    threads = [threading.Thread(target=mint) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == len(ids) == 8000
    assert len(calls) == 1 + -(-8000 // _outcomes._POOL)


# Forked in a fresh interpreter: the suite's process may hold other tests' threads (a lease
# heartbeat lingers up to HEARTBEAT_S), and since 3.12 ``os.fork`` in a multi-threaded
# process warns (DeprecationWarning) and can deadlock the child.
_FORK_RUN_IDS = """
import os
import threading

from xlib_pipeline._outcomes import new_run_id

new_run_id()  # a block is drawn, most of it unused
assert threading.active_count() == 1, threading.enumerate()  # a clean fork
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    try:
        os.write(w, "".join(new_run_id()[-20:] for _ in range(5)).encode())
    finally:
        os._exit(0)
os.close(w)
os.waitpid(pid, 0)
with os.fdopen(r, "rb") as fh:
    print(fh.read().decode())
print("".join(new_run_id()[-20:] for _ in range(5)))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_draws_its_own_random_block() -> None:
    """A child forked with part of a block left does not mint the parent's next ids."""
    done = subprocess.run(
        [sys.executable, "-c", _FORK_RUN_IDS],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    child, mine = done.stdout.split()
    assert len(child) == len(mine) == 100 and child != mine


# -- the logger ---------------------------------------------------------------------------


def test_stdlib_logger_is_getlogger() -> None:
    """Existing loggers, placeholders (a child exists, the parent not yet), new names, the
    root: the same object ``logging.getLogger`` returns."""
    name = f"xlib_test_{uuid.uuid4().hex}"
    logging.getLogger(name + ".child")  # the parent is a PlaceHolder now
    assert isinstance(logging.Logger.manager.loggerDict[name], logging.PlaceHolder)
    parent = _stdlib_logger(name)
    assert parent is logging.getLogger(name)
    assert logging.getLogger(name + ".child").parent is parent
    fresh = name + "_fresh"
    assert _stdlib_logger(fresh) is logging.getLogger(fresh)
    assert _stdlib_logger("") is logging.getLogger() and _stdlib_logger("root") is logging.root
    with pytest.raises(TypeError):
        _stdlib_logger(1)  # type: ignore[arg-type]


def test_events_follow_the_level_set_after_import() -> None:
    log = logging.getLogger("xlib_pipeline")
    old = log.level
    try:
        log.setLevel(logging.WARNING)
        assert not events_enabled()
        log.setLevel(logging.INFO)
        assert events_enabled()
    finally:
        log.setLevel(old)


def test_pipeline_start_and_end_events_when_info_is_on(caplog) -> None:
    p = Pipeline("events")
    p.add_task("a", lambda: 1)
    with PipelineManager() as pm:
        with caplog.at_level(logging.WARNING, logger="xlib_pipeline"):
            pm.execute_pipeline(p, parallel=False)
        assert not [r for r in caplog.records if r.getMessage().startswith("event='pipeline.")]
        with caplog.at_level(logging.INFO, logger="xlib_pipeline"):
            pm.execute_pipeline(p, parallel=False)
    events = [r.event for r in caplog.records if getattr(r, "event", "").startswith("pipeline.")]
    assert events == ["pipeline.started", "pipeline.succeeded"]


# -- the run row's params -----------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=20,
)


@given(_json)
@settings(max_examples=200, deadline=None)
def test_jsonable_is_json_dumps(value: object) -> None:
    assert _jsonable(value) == json.dumps(value, default=repr, sort_keys=True)


def test_jsonable_reprs_what_json_cannot_hold() -> None:
    value = {"b": {1, 2}, "a": object}
    assert _jsonable(value) == json.dumps(value, default=repr, sort_keys=True)


# -- encrypt: asked once per hooks facade -------------------------------------------------


class _Sealer:
    @hookimpl
    def encrypt(self, data: bytes, ref: object) -> bytes:
        return data[::-1]


def test_sealing_is_asked_once_per_facade_and_again_after_a_registration() -> None:
    with PipelineManager() as pm:
        first = pm.hooks
        assert _sealing(first) is False
        assert first.memo == {"sealing": False}
        pm.register(_Sealer(), "sealer")
        assert pm.hooks is not first and _sealing(pm.hooks) is True
        assert _sealing(first) is False  # a run keeps the facade it started with


def test_sealing_of_something_not_a_facade_asks_each_time() -> None:
    class Bare:
        pass

    assert _sealing(Bare()) is True


# -- TaskResults.counts -------------------------------------------------------------------


@given(st.lists(st.sampled_from([None, *Status]), max_size=80))
@settings(max_examples=300, deadline=None)
def test_counts_is_the_counter_of_the_statuses(statuses: list[Status | None]) -> None:
    """Small runs count in a loop, large ones with Counter: the same dict, same order."""
    cols = Columns(len(statuses))
    cols.status = list(statuses)
    names = tuple(f"t{i}" for i in range(len(statuses)))
    got = TaskResults(names, {n: i for i, n in enumerate(names)}, cols).counts()
    want = Counter(statuses)
    want.pop(None, None)
    assert got == dict(want) and list(got) == list(want)


# -- params: checked unless only reserved ones meet a plan without params --------------------


def test_reserved_params_alone_skip_the_check_and_others_are_still_refused(monkeypatch) -> None:
    import xlib_pipeline._running as running

    calls: list[dict] = []
    real = running.check_params

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(dict(args[3]))
        return real(*args, **kwargs)

    monkeypatch.setattr(running, "check_params", spy)
    plain = Pipeline("plain")
    plain.add_task("a", lambda: 1)
    takes = Pipeline("takes")
    takes.add_task("a", lambda n: n)
    stream = {"stream": {"batch": 1}}
    with PipelineManager() as pm:
        assert pm.execute_pipeline(plain, params=stream, parallel=False).success
        assert pm.execute_pipeline(plain, params={"logical_date": "2024-05-01"}).success
        assert calls == []  # reserved names only, no task takes params: nothing to check
        with pytest.raises(ConfigError, match="has no param 'n'"):
            pm.execute_pipeline(plain, params={**stream, "n": 1})
        with pytest.raises(ConfigError, match="param names are Python identifiers"):
            pm.execute_pipeline(plain, params={"not one": 1})
        assert pm.execute_pipeline(takes, params={"n": 2, **stream}).final_result == 2
        with pytest.raises(DefinitionError, match="needs the run param 'n'"):
            pm.execute_pipeline(takes, params=stream)
    assert len(calls) == 4
