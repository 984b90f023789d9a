"""``monitor=True``: live progress on a terminal (rich), plain lines otherwise, and a
closing summary with per-task durations, the critical path and the achieved parallelism.

The monitor is one consumer of the progress API (:class:`~xlib_pipeline.ProgressEvent`):
it is called with each event like any ``on_event`` callback. Both renderers show a retried
task's attempt (``attempt 2/3``) and the wait before its next attempt, and tell tasks a
resumed run reused, and result-cache hits, apart from tasks that ran.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping
from itertools import islice
from typing import IO, Any

from ._graph import Plan, critical_path
from ._progress import ProgressEvent
from ._records import Status
from ._results import PipelineResult

#: The order of the summary's counts: what ran, what was taken over, what went wrong.
COUNT_ORDER = (
    "succeeded",
    "reused",
    "cached",
    "fallback",
    "failed",
    "upstream_failed",
    "skipped",
    "cancelled",
)


def summarize(
    plan: Plan, result: PipelineResult, reused: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Durations, critical path (by measured durations), achieved parallelism and counts of
    a run. ``reused`` (task -> the run it was reused from) counts those tasks as ``reused``
    rather than by their status; ``retried`` maps each task called more than once to its
    number of attempts."""
    tasks = result.tasks
    reused = reused or {}

    def dur(i: int) -> float:
        r = tasks[plan.names[i]]
        s, f = r.started, r.finished
        return (f - s) if (s is not None and f is not None) else 0.0

    durations = [dur(i) for i in range(len(plan))]
    busy = sum(durations)
    length, path = critical_path(plan, durations.__getitem__)
    makespan = result.duration
    counts: dict[str, int] = {}
    retried: dict[str, int] = {}
    for name in plan.names:
        r = tasks[name]
        key = "reused" if name in reused else str(r.status.value)
        counts[key] = counts.get(key, 0) + 1
        if r.attempts > 1:
            retried[name] = r.attempts
    return {
        "makespan": makespan,
        "busy": busy,
        "parallelism": (busy / makespan) if makespan > 0 else 0.0,
        "critical_path": path,
        "critical_path_seconds": length,
        "counts": counts,
        "retried": retried,
        "reused": dict(reused),
        "durations": {plan.names[i]: durations[i] for i in range(len(plan))},
    }


def counts_line(info: Mapping[str, Any]) -> str:
    """``4 tasks: 1 succeeded, 2 reused, 1 cached; 1 retried (3 attempts in all)``."""
    counts: dict[str, int] = info["counts"]
    order = [k for k in COUNT_ORDER if k in counts] + sorted(set(counts) - set(COUNT_ORDER))
    total = sum(counts.values())
    line = f"{total} task{'s' if total != 1 else ''}: " + ", ".join(
        f"{counts[k]} {k}" for k in order
    )
    retried: dict[str, int] = info["retried"]
    if retried:
        line += f"; {len(retried)} retried ({sum(retried.values())} attempts in all)"
    return line


def attempt_text(attempt: int, max_attempts: int | None) -> str:
    """``attempt 2/3``, or ``attempt 2`` when no policy gave a bound."""
    return f"attempt {attempt}/{max_attempts}" if max_attempts else f"attempt {attempt}"


def delay_text(delay: float | None) -> str:
    """``retrying in 1.5 s`` (``retrying now`` without a wait)."""
    if not delay or delay <= 0:
        return "retrying now"
    return f"retrying in {format(round(delay, 2), 'g')} s"


def _note(name: str, info: Mapping[str, Any]) -> str:
    """What a summary row adds to a task's name: ``(reused)``, ``(3 attempts)``."""
    if name in info["reused"]:
        return " (reused)"
    n = info["retried"].get(name)
    return f" ({n} attempts)" if n else ""


class Monitor:
    """Progress display fed with :class:`ProgressEvent`; rich live display on a terminal.

    ``plan`` (the run's compiled plan) is used for the closing summary's critical path.
    """

    def __init__(self, plan: Plan, stream: IO[str] | None = None, *, max_rows: int = 25) -> None:
        self.plan = plan
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self._running: dict[str, str] = {}  # rich: task -> its label while it runs
        self._done = 0
        self._reused: dict[str, str] = {}  # task -> the run a resume reused it from
        self._stats = {"retries": 0, "reused": 0, "cached": 0, "failed": 0}
        self._progress: Any = None
        self._bar: Any = None

    def __call__(self, event: ProgressEvent) -> None:
        kind = event.kind
        if kind == "task_started":
            self.task_started(event)
        elif kind == "task_finished":
            self.task_finished(event)
        elif kind == "task_retrying":
            self.task_retrying(event)
        elif kind == "run_started":
            self.start(event)
        elif kind == "run_finished" and event.result is not None:
            self.run_finished(event.result)

    def start(self, event: ProgressEvent) -> None:
        """The run started: open the display."""
        n = event.total
        if self.tty:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            console = Console(file=self.stream)
            self._progress = Progress(
                # markup=False: pipeline and task names are data, never rich markup
                TextColumn("{task.description}", style="bold", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[stats]}", markup=False),
                TextColumn("{task.fields[running]}", markup=False),
                console=console,
                transient=False,
            )
            self._bar = self._progress.add_task(event.pipeline, total=n, running="", stats="")
            self._progress.start()
        else:
            self._print(f"[{event.pipeline}] run {event.run_id}: {n} tasks")

    def _print(self, line: str) -> None:
        with self._lock:
            print(line, file=self.stream, flush=True)

    def _line(self, line: str) -> None:
        """A line above the live display (rich), or on its own (plain)."""
        if self._progress is not None:
            from rich.text import Text

            # soft_wrap: the terminal wraps a long line; rich would cut "1.5 s" in two
            self._progress.console.print(Text(line), highlight=False, soft_wrap=True)
        else:
            self._print(line)

    def _stats_text(self) -> str:
        s = self._stats
        return " · ".join(f"{s[k]} {k}" for k in ("retries", "reused", "cached", "failed") if s[k])

    def task_started(self, event: ProgressEvent) -> None:
        name = event.task or "?"
        attempt = event.attempt
        if self._progress is None:
            if attempt > 1:
                self._print(f"  started   {name} ({attempt_text(attempt, event.max_attempts)})")
            else:
                self._print(f"  started   {name}")
            return
        label = name
        if attempt > 1:
            label = f"{name} ({attempt_text(attempt, event.max_attempts)})"
        with self._lock:
            self._running[name] = label
            names = ", ".join(islice(self._running.values(), 3))
        self._progress.update(self._bar, running=names)

    def task_retrying(self, event: ProgressEvent) -> None:
        """An attempt failed and another follows: say which, why, and when the next starts."""
        name = event.task or "?"
        with self._lock:
            self._stats["retries"] += 1
            stats = self._stats_text()
        what = attempt_text(event.attempt, event.max_attempts)
        if self._progress is not None:
            self._progress.update(self._bar, stats=stats)
            self._line(f"↻ {name}: {what} failed: {event.error}; {delay_text(event.delay)}")
        else:
            self._print(
                f"  retrying  {name} ({what} failed: {event.error}; {delay_text(event.delay)})"
            )

    def task_finished(self, event: ProgressEvent) -> None:
        name = event.task or "?"
        status = event.status or "?"
        source = event.reused_from
        stats: str | None = None  # the live counters, when they changed
        if source is not None or status == "cached" or status == "failed":
            with self._lock:
                if source is not None:
                    self._reused[name] = source
                    self._stats["reused"] += 1
                elif status == "cached":
                    self._stats["cached"] += 1
                else:
                    self._stats["failed"] += 1
                stats = self._stats_text()
        if self._progress is not None:
            with self._lock:
                self._running.pop(name, None)
                self._done += 1
                names = ", ".join(islice(self._running.values(), 3))
            if stats is None:
                self._progress.update(self._bar, completed=self._done, running=names)
            else:
                self._progress.update(self._bar, completed=self._done, running=names, stats=stats)
            return
        if source is not None:
            self._print(f"  reused    {name} ({status} in run {source})")
            return
        d = event.duration
        took = f" in {d:.2f}s" if d is not None else ""
        if status == "cached":
            took += " (from the result cache)"
        if event.attempt > 1:
            took += f" ({attempt_text(event.attempt, event.max_attempts)})"
        self._print(f"  {status:<9} {name}{took}")

    def run_finished(self, result: PipelineResult) -> None:
        if self._progress is not None:
            self._progress.stop()
        with self._lock:
            reused = dict(self._reused)
        info = summarize(self.plan, result, reused)
        if self.tty:
            self._rich_summary(result, info)
            return
        self._print(
            f"[{result.pipeline}] {result.status} in {info['makespan']:.2f}s; "
            f"critical path {info['critical_path_seconds']:.2f}s: "
            f"{' -> '.join(info['critical_path'])}; parallelism {info['parallelism']:.2f}x"
        )
        self._print(f"  {counts_line(info)}")
        rows = sorted(info["durations"].items(), key=lambda kv: -kv[1])[: self.max_rows]
        for name, d in rows:
            self._print(f"    {d:8.3f}s  {name}{_note(name, info)}")

    def _rich_summary(self, result: PipelineResult, info: dict[str, Any]) -> None:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table(title=Text(f"{result.pipeline} · {result.status} · run {result.run_id}"))
        table.add_column("task")
        table.add_column("status")
        table.add_column("attempts", justify="right")
        table.add_column("seconds", justify="right")
        table.add_column("critical", justify="center")
        crit = set(info["critical_path"])
        rows = sorted(info["durations"].items(), key=lambda kv: -kv[1])[: self.max_rows]
        for name, d in rows:
            r = result.tasks[name]
            status = r.status.value
            attempts = str(r.attempts)
            if name in info["reused"]:
                status = "reused" if r.status is Status.SUCCEEDED else f"{status} (reused)"
                attempts = "-"  # it did not run in this run
            table.add_row(Text(name), status, attempts, f"{d:.3f}", "●" if name in crit else "")
        console = Console(file=self.stream)
        console.print(table)
        console.print(Text(counts_line(info)), highlight=False)
        if info["reused"]:
            sources = sorted(set(info["reused"].values()))
            console.print(Text(f"reused from run {', '.join(sources)}"), highlight=False)
        console.print(
            Text(
                f"makespan {info['makespan']:.2f}s · critical path "
                f"{info['critical_path_seconds']:.2f}s ({' → '.join(info['critical_path'])}) · "
                f"achieved parallelism {info['parallelism']:.2f}×"
            ),
            highlight=False,
        )


__all__ = ["Monitor", "Status", "attempt_text", "counts_line", "delay_text", "summarize"]
