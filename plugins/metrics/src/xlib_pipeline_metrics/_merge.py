"""Per-task stats of finished runs merged with those of runs under way (at scrape time)."""

from __future__ import annotations

from ._plugin import _PipelineStats, _TaskStats


def merged(st: _PipelineStats, live: _PipelineStats | None, n: int) -> list[tuple[str, _TaskStats]]:
    """Per-task stats of finished runs plus those of the runs under way, by task name."""
    if live is None:
        return sorted(st.tasks.items())
    out: dict[str, _TaskStats] = {}
    for name in set(st.tasks) | set(live.tasks):
        a, b = st.tasks.get(name), live.tasks.get(name)
        if a is None or b is None:
            out[name] = a or b  # type: ignore[assignment]
            continue
        m = _TaskStats(n)
        m.attempts = [x + y for x, y in zip(a.attempts, b.attempts)]
        m.statuses = dict(a.statuses)
        for k, v in b.statuses.items():
            m.statuses[k] = m.statuses.get(k, 0) + v
        m.hist.counts = [x + y for x, y in zip(a.hist.counts, b.hist.counts)]
        m.hist.sum = a.hist.sum + b.hist.sum
        m.hist.count = a.hist.count + b.hist.count
        out[name] = m
    return sorted(out.items())
