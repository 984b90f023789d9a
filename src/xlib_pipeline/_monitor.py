"""``monitor=True``: live progress on a terminal (rich), plain lines otherwise, and a
closing summary with per-task durations, the critical path and the achieved parallelism."""

from __future__ import annotations

import sys
import threading
import time
from typing import IO, Any

from ._graph import critical_path
from ._outcomes import Observer
from ._records import Status
from ._results import PipelineResult
from ._scheduler import Run


def summarize(run: Run, result: PipelineResult) -> dict[str, Any]:
    """Durations, critical path (by measured durations) and achieved parallelism of a run."""
    cols = run.cols
    plan = run.plan

    def dur(i: int) -> float:
        s, f = cols.started[i], cols.finished[i]
        return (f - s) if (s is not None and f is not None) else 0.0

    busy = sum(dur(i) for i in range(len(plan)))
    length, path = critical_path(plan, dur)
    makespan = result.duration
    counts: dict[str, int] = {}
    for s in cols.status:
        key = str(s.value if s else "pending")
        counts[key] = counts.get(key, 0) + 1
    return {
        "makespan": makespan,
        "busy": busy,
        "parallelism": (busy / makespan) if makespan > 0 else 0.0,
        "critical_path": path,
        "critical_path_seconds": length,
        "counts": counts,
        "durations": {plan.names[i]: dur(i) for i in range(len(plan))},
    }


class Monitor(Observer):
    """Observer printing progress; rich live display when ``stream`` is a terminal."""

    def __init__(self, stream: IO[str] | None = None, *, max_rows: int = 25) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self._running: dict[int, float] = {}
        self._done = 0
        self._progress: Any = None
        self._bar: Any = None

    def start(self, run: Run) -> None:
        """Called before the first task."""
        n = len(run.plan)
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
            self._bar = self._progress.add_task(run.plan.pipeline_name, total=n, running="")
            self._progress.start()
        else:
            self._print(f"[{run.plan.pipeline_name}] run {run.ctx.run_id}: {n} tasks")

    def _print(self, line: str) -> None:
        with self._lock:
            print(line, file=self.stream, flush=True)

    def task_started(self, run: Run, i: int, attempt: int) -> None:
        with self._lock:
            self._running[i] = time.time()
            names = ", ".join(run.plan.names[j] for j in list(self._running)[:3])
        if self._progress is not None:
            self._progress.update(self._bar, running=names)
        else:
            self._print(f"  started   {run.plan.names[i]}")

    def task_finished(self, run: Run, i: int) -> None:
        cols = run.cols
        with self._lock:
            self._running.pop(i, None)
            self._done += 1
            names = ", ".join(run.plan.names[j] for j in list(self._running)[:3])
        status = cols.status[i]
        if self._progress is not None:
            self._progress.update(self._bar, completed=self._done, running=names)
            return
        s, f = cols.started[i], cols.finished[i]
        took = f" in {f - s:.2f}s" if (s is not None and f is not None) else ""
        label = status.value if status else "?"
        self._print(f"  {label:<9} {run.plan.names[i]}{took}")

    def run_finished(self, run: Run, result: PipelineResult) -> None:
        if self._progress is not None:
            self._progress.stop()
        info = summarize(run, result)
        if self.tty:
            self._rich_summary(run, result, info)
            return
        self._print(
            f"[{result.pipeline}] {result.status} in {info['makespan']:.2f}s; "
            f"critical path {info['critical_path_seconds']:.2f}s: "
            f"{' -> '.join(info['critical_path'])}; parallelism {info['parallelism']:.2f}x"
        )
        rows = sorted(info["durations"].items(), key=lambda kv: -kv[1])[: self.max_rows]
        for name, d in rows:
            self._print(f"    {d:8.3f}s  {name}")

    def _rich_summary(self, run: Run, result: PipelineResult, info: dict[str, Any]) -> None:
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
            status = run.cols.status[run.plan.index[name]]
            table.add_row(
                Text(name),
                status.value if status else "?",
                f"{d:.3f}",
                "●" if name in crit else "",
            )
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
