"""Event-time windows against a brute-force model, with restarts from checkpointed state
(window state in the checkpoint of each run store backend: SQLite and PostgreSQL)."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xlib_pipeline import DefinitionError, Pipeline
from xlib_pipeline.streams import Window

_ids = itertools.count()


def model(
    times: list[int], size: int, slide: int, delay: int, lateness: int
) -> tuple[dict[float, list[int]], list[int]]:
    """Brute force: for each record in arrival order, the watermark before it is the largest
    earlier event time minus ``delay``; it lands in every window [k*slide, k*slide+size)
    holding its time unless that window's end + lateness is at or below the watermark."""
    windows: dict[float, list[int]] = {}
    late: list[int] = []
    for i, t in enumerate(times):
        wm = max((times[j] - delay for j in range(i)), default=-math.inf)
        missed = False
        for k in range(-100, 200):
            s = k * slide
            if s <= t < s + size:
                if s + size + lateness <= wm:
                    missed = True
                else:
                    windows.setdefault(float(s), []).append(i)
        if missed:
            late.append(i)
    return windows, late


def windowed(size: int, slide: int, delay: int, lateness: int) -> Pipeline:
    p = Pipeline("windows")

    @p.task(
        "agg",
        window={
            "size": size,
            "slide": slide,
            "field": "ts",
            "delay": delay,
            "allowed_lateness": lateness,
        },
    )
    def agg(w: Window) -> dict[str, Any]:
        return {"start": w.start, "end": w.end, "ids": [r["id"] for r in w]}

    return p


@given(
    times=st.lists(st.integers(0, 60), min_size=1, max_size=60),
    size=st.integers(1, 12),
    slide_div=st.integers(1, 4),
    delay=st.integers(0, 8),
    lateness=st.integers(0, 8),
    batch_size=st.integers(1, 17),
    stop_after=st.integers(1, 6),
)
def test_windows_match_the_model(
    store_backend: Any,
    times: list[int],
    size: int,
    slide_div: int,
    delay: int,
    lateness: int,
    batch_size: int,
    stop_after: int,
) -> None:
    slide = max(1, size // slide_div)
    records = [{"id": i, "ts": t} for i, t in enumerate(times)]
    name = f"w{next(_ids)}"
    out: list[dict[str, Any]] = []
    late: list[Any] = []
    p = windowed(size, slide, delay, lateness)
    with store_backend.manager() as pm:
        # Stop part-way, then restart: the open windows come back from the checkpoint.
        first = pm.stream(
            p,
            source=records,
            sink=out.extend,
            late_sink=late.extend,
            batch_size=batch_size,
            max_batches=stop_after,
            name=name,
        )
        assert first.status in ("stopped", "completed"), first.error
        if first.status == "stopped":
            rest = pm.stream(
                p,
                source=records,
                sink=out.extend,
                late_sink=late.extend,
                batch_size=batch_size,
                name=name,
            )
            assert rest.status == "completed", rest.error
            assert rest.late == len(late)
    want, want_late = model(times, size, slide, delay, lateness)
    got = {w["start"]: w["ids"] for w in out}
    assert len(got) == len(out), "a window was emitted twice"
    assert got == want
    assert all(w["end"] - w["start"] == size for w in out)
    assert sorted(r["id"] for r in late) == want_late


def test_late_records_are_counted_in_the_checkpoint(store_backend: Any) -> None:
    records = [{"id": 0, "ts": 50}, {"id": 1, "ts": 1}, {"id": 2, "ts": 55}]
    late: list[Any] = []
    with store_backend.manager() as pm:
        s = pm.stream(
            windowed(10, 10, 0, 0), source=records, sink=None, late_sink=late.extend, batch_size=1
        )
    assert s.late == 1 and late == [{"id": 1, "ts": 1}]


def test_bad_window_options_and_records_are_named(store_backend: Any) -> None:
    with store_backend.manager() as pm:
        p = Pipeline("bad")
        p.add_task("agg", lambda w: w, window={"size": 0, "field": "ts"})
        with pytest.raises(DefinitionError, match=r"task 'agg'.*'size' must be > 0"):
            pm.stream(p, source=[])
        s = pm.stream(windowed(5, 5, 0, 0), source=[{"id": 1}], name="missing")
        assert s.status == "failed" and "window field 'ts' is missing" in str(s.error)
        p2 = windowed(5, 5, 0, 0)
        with pytest.raises(Exception, match="max_in_flight=1"):
            pm.stream(p2, source=[], max_in_flight=2)
        with pytest.raises(Exception, match="'threads' or 'inline' executor"):
            pm.stream(p2, source=[], executor="processes")


def test_a_window_type_is_checked_against_its_slide(manager: Any) -> None:
    """docs/streams.md: ``type`` is checked against ``slide``; 'tumbling' with a smaller
    slide was refused, but 'sliding' without one (a tumbling window) was accepted."""
    for opts, why in (
        ({"size": 10, "field": "ts", "type": "sliding"}, "a sliding window has slide < size"),
        ({"size": 10, "field": "ts", "slide": 5, "type": "tumbling"}, "slide == size"),
    ):
        p = Pipeline("typed")
        with pytest.raises(DefinitionError, match=rf"task 'agg'.*{why}"):
            p.add_task("agg", lambda w: w, window=opts)
            manager.stream(p, source=[])
    ok = {"size": 10, "field": "ts", "slide": 5, "type": "sliding"}
    Pipeline("typed").add_task("agg", lambda w: w, window=ok)  # a smaller slide: fine
