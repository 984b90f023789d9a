"""``map_over`` in runs that are not distributed: items in parallel on the run's executor
(issue 17: "map_over without Dask is a for-loop"), ordered, under ``max_workers``."""

from __future__ import annotations

import os
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xlib_pipeline import Pipeline, PipelineManager, TaskContext, TaskFailedError


class Gauge:
    """Counts calls in flight and remembers the most seen at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0
        self.threads: set[int] = set()

    def __enter__(self) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.threads.add(threading.get_ident())

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.now -= 1


def mapped(fn, items, **options) -> Pipeline:
    p = Pipeline("mapped")
    p.add_task("items", lambda: list(items))
    p.add_task("each", fn, depends_on=["items"], map_over=0, **options)
    return p


@pytest.fixture
def pm():
    with PipelineManager({"store": False}) as m:
        yield m


def test_items_run_at_once_on_threads(pm):
    """Four items meet at a barrier of four: they can only pass it running together."""
    barrier = threading.Barrier(4, timeout=30)

    def each(x):
        barrier.wait()
        return x * 10

    r = pm.execute_pipeline(mapped(each, range(8)), max_workers=4)
    assert r.success, r.error
    assert r.final_result == [x * 10 for x in range(8)]


def test_results_keep_the_order_of_the_items(pm):
    """Later items finishing first changes nothing in the order of the results."""
    events = {k: threading.Event() for k in range(6)}

    def each(x):
        if x + 1 in events:  # each item waits until the next one finished
            events[x + 1].wait(30)
        events[x].set()
        return x

    r = pm.execute_pipeline(mapped(each, range(6)), max_workers=6)
    assert r.final_result == list(range(6))


@settings(max_examples=15, deadline=None)
@given(workers=st.integers(1, 4), n=st.integers(0, 9))
def test_never_more_than_max_workers_at_once(workers, n):
    gauge = Gauge()

    def each(x):
        with gauge:
            time.sleep(0.002)
        return -x

    with PipelineManager({"store": False}) as pm:
        r = pm.execute_pipeline(mapped(each, range(n)), max_workers=workers)
    assert r.final_result == [-x for x in range(n)]
    assert gauge.most <= workers


def test_parallelism_caps_the_items_in_flight(pm):
    gauge = Gauge()

    def each(x):
        with gauge:
            time.sleep(0.01)
        return x

    p = Pipeline("capped")
    p.add_task("items", lambda: list(range(8)))
    p.add_task("each", each, depends_on=["items"], distribute={"map_over": 0, "parallelism": 2})
    assert pm.execute_pipeline(p, max_workers=4, distributed=False).success
    assert gauge.most <= 2


def test_inline_runs_items_one_by_one_in_the_driver(pm):
    gauge = Gauge()

    def each(x):
        with gauge:
            return x + 1

    r = pm.execute_pipeline(mapped(each, range(5)), parallel=False)
    assert r.final_result == [1, 2, 3, 4, 5]
    assert gauge.most == 1 and gauge.threads == {threading.get_ident()}


@pytest.mark.slow
def test_processes_run_items_in_worker_processes(pm):
    def each(x):
        return x * x, os.getpid()

    r = pm.execute_pipeline(mapped(each, range(6)), executor="processes", max_workers=3)
    assert r.success, r.error
    assert [v for v, _ in r.final_result] == [x * x for x in range(6)]
    assert os.getpid() not in {pid for _, pid in r.final_result}


def test_first_failure_fails_the_task_and_names_the_item(pm):
    started: list[int] = []

    def each(x):
        started.append(x)
        if x == 2:
            raise ValueError("bad partition")
        return x

    r = pm.execute_pipeline(mapped(each, range(10)), parallel=False)
    assert not r.success
    assert isinstance(r.error, TaskFailedError)
    cause = r.error.cause
    assert isinstance(cause, ValueError)
    assert "map_over: item 2 of 10 of task 'each' failed" in cause.__notes__
    assert started == [0, 1, 2]  # nothing starts after the failure
    assert "item 2 of 10" in (r.tasks["each"].traceback or "")


def test_failure_on_threads_stops_new_items(pm):
    started: list[int] = []
    lock = threading.Lock()

    def each(x):
        with lock:
            started.append(x)
        if x == 0:
            raise KeyError("first")
        time.sleep(0.01)
        return x

    r = pm.execute_pipeline(mapped(each, range(50)), max_workers=3)
    assert isinstance(r.error.cause, KeyError)
    assert len(started) < 50


def test_items_see_params_and_context(pm):
    def each(x, scale=1, *, context: TaskContext):
        return x * scale, context.task

    r = pm.execute_pipeline(mapped(each, range(3)), params={"scale": 3}, max_workers=2)
    assert r.final_result == [(0, "each"), (3, "each"), (6, "each")]


def test_not_a_list_is_refused_by_name(pm):
    r = pm.execute_pipeline(_dict_items())
    assert not r.success
    assert "expects upstream argument 0" in str(r.error) and "'items'" in str(r.error)


def _dict_items() -> Pipeline:
    p = Pipeline("not_a_list")
    p.add_task("items", lambda: {"a": 1})
    p.add_task("each", lambda x: x, depends_on=["items"], map_over=0)
    return p


def _gauged(gauge: Gauge):
    def each(x):
        with gauge:
            time.sleep(0.05)
        return x

    return each


def test_items_in_flight_stay_under_the_resource_budget():
    """Each item holds the task's resources=: with a budget of 2 GPUs and 1 GPU per item,
    at most 2 items run at once though max_workers is 4; a task without resources= is not
    bounded by the budget (issue 17: map_over under max_workers and the resource budget)."""
    gauge = Gauge()
    with PipelineManager({"store": False, "resources": {"gpu": 2}}) as m:
        r = m.execute_pipeline(
            mapped(_gauged(gauge), range(12), resources={"gpu": 1}), max_workers=4
        )
        assert r.success, r.error
        assert r.final_result == list(range(12))
        assert 1 <= gauge.most <= 2
        free = Gauge()
        r = m.execute_pipeline(mapped(_gauged(free), range(12)), max_workers=4)
        assert r.success, r.error
        assert free.most > 2


def test_a_mapped_task_takes_only_what_other_tasks_leave_free():
    """A task holding 2 of 3 GPUs while the mapped task starts leaves room for one item at
    a time; the budget is never exceeded (counted across both tasks)."""
    gpus = Gauge()
    started = threading.Event()

    def hog():
        with gpus:
            started.set()
            time.sleep(0.5)
        return "done"

    def each(x):
        with gpus:
            time.sleep(0.02)
        return x

    def items():
        started.wait(30)
        return list(range(10))

    p = Pipeline("shared")
    p.add_task("hog", hog, resources={"gpu": 2})
    p.add_task("items", items)
    p.add_task("each", each, depends_on=["items"], map_over=0, resources={"gpu": 1})
    with PipelineManager({"store": False, "resources": {"gpu": 3}}) as m:
        r = m.execute_pipeline(p, max_workers=4)
    assert r.success, r.error
    assert r.final_result["each"] == list(range(10))
    # hog counts once in the gauge but holds 2 GPUs: 2 + (items in flight) <= 3
    assert gpus.most <= 2
