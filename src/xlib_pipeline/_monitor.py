"""``monitor=True``: live progress on a terminal (rich), plain lines otherwise, and a
closing summary with per-task durations, the critical path and the achieved parallelism.

The monitor is one consumer of the progress API (:class:`~xlib_pipeline.ProgressEvent`):
it is called with each event like any ``on_event`` callback."""

from __future__ import annotations

import sys
import threading
import time
from typing import IO, Any

from ._graph import Plan, critical_path
from ._progress import ProgressEvent
from ._records import Status
from ._results import PipelineResult


def summarize(plan: Plan, result: PipelineResult) -> dict[str, Any]:
    """Durations, critical path (by measured durations) and achieved parallelism of a run."""
    tasks = result.tasks

    def dur(i: int) -> float:
        r = tasks[plan.names[i]]
        s, f = r.started, r.finished
        return (f - s) if (s is not None and f is not None) else 0.0

    durations = [dur(i) for i in range(len(plan))]
    busy = sum(durations)
    length, path = critical_path(plan, durations.__getitem__)
    makespan = result.duration
    counts: dict[str, int] = {}
    for name in plan.names:
        key = str(tasks[name].status.value)
        counts[key] = counts.get(key, 0) + 1
    return {
        "makespan": makespan,
        "busy": busy,
        "parallelism": (busy / makespan) if makespan > 0 else 0.0,
        "critical_path": path,
        "critical_path_seconds": length,
        "counts": counts,
        "durations": {plan.names[i]: durations[i] for i in range(len(plan))},
    }


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
        self._running: dict[str, float] = {}
        self._done = 0
        self._progress: Any = None
        self._bar: Any = None

    def __call__(self, event: ProgressEvent) -> None:
        kind = event.kind
        if kind == "task_started":
            self.task_started(event)
        elif kind == "task_finished":
            self.task_finished(event)
        elif kind == "task_retrying":
            if self._progress is None:
                self._print(f"  retrying  {event.task} (attempt {event.attempt}: {event.error})")
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
                TextColumn("{task.fields[running]}", markup=False),
                console=console,
                transient=False,
            )
            self._bar = self._progress.add_task(event.pipeline, total=n, running="")
            self._progress.start()
        else:
            self._print(f"[{event.pipeline}] run {event.run_id}: {n} tasks")

    def _print(self, line: str) -> None:
        with self._lock:
            print(line, file=self.stream, flush=True)

    def task_started(self, event: ProgressEvent) -> None:
        name = event.task or "?"
        with self._lock:
            self._running[name] = time.time()
            names = ", ".join(list(self._running)[:3])
        if self._progress is not None:
            self._progress.update(self._bar, running=names)
        else:
            self._print(f"  started   {name}")

    def task_finished(self, event: ProgressEvent) -> None:
        name = event.task or "?"
        with self._lock:
            self._running.pop(name, None)
            self._done += 1
            names = ", ".join(list(self._running)[:3])
        if self._progress is not None:
            self._progress.update(self._bar, completed=self._done, running=names)
            return
        d = event.duration
        took = f" in {d:.2f}s" if d is not None else ""
        label = event.status or "?"
        self._print(f"  {label:<9} {name}{took}")

    def run_finished(self, result: PipelineResult) -> None:
        if self._progress is not None:
            self._progress.stop()
        info = summarize(self.plan, result)
        if self.tty:
            self._rich_summary(result, info)
            return
        self._print(
            f"[{result.pipeline}] {result.status} in {info['makespan']:.2f}s; "
            f"critical path {info['critical_path_seconds']:.2f}s: "
            f"{' -> '.join(info['critical_path'])}; parallelism {info['parallelism']:.2f}x"
        )
        rows = sorted(info["durations"].items(), key=lambda kv: -kv[1])[: self.max_rows]
        for name, d in rows:
            self._print(f"    {d:8.3f}s  {name}")

    def _rich_summary(self, result: PipelineResult, info: dict[str, Any]) -> None:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table(title=Text(f"{result.pipeline} · {result.status} · run {result.run_id}"))
        table.add_column("task")
        table.add_column("status")
        table.add_column("seconds", justify="right")
        table.add_column("critical", justify="center")
        crit = set(info["critical_path"])
        rows = sorted(info["durations"].items(), key=lambda kv: -kv[1])[: self.max_rows]
        for name, d in rows:
            status = result.tasks[name].status
            table.add_row(Text(name), status.value, f"{d:.3f}", "●" if name in crit else "")
        console = Console(file=self.stream)
        console.print(table)
        console.print(
            Text(
                f"makespan {info['makespan']:.2f}s · critical path "
                f"{info['critical_path_seconds']:.2f}s ({' → '.join(info['critical_path'])}) · "
                f"achieved parallelism {info['parallelism']:.2f}×"
            ),
            highlight=False,
        )


__all__ = ["Monitor", "Status", "summarize"]
