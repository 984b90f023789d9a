"""The SLA plugin: per-task time budgets, breach records, a report file and a CLI command.

What it adds to xlib-pipeline:

* task option ``sla_seconds=`` (``@pipeline.task("load", sla_seconds=2)``);
* manager decorator ``pm.sla(seconds=2)``, the same option as a decorator;
* config keys ``sla.default_seconds`` (budget of tasks without ``sla_seconds``) and
  ``sla.report_file`` (where breaches are appended as JSON lines; default
  ``<data_dir>/sla-breaches.jsonl``);
* CLI command ``xlib-pipeline sla`` printing the recorded breaches.

The plugin is inert unless a budget is set: without ``sla_seconds`` and without
``sla.default_seconds`` it registers no run or task hook, so runs pay nothing for it. Its
per-run hooks live on :class:`SlaRecorder`, which ``configure`` (a default budget) or
``prepare_run`` (a task with ``sla_seconds``) registers, and per-run state goes in the
run's stash under the typed key :data:`SLA_RUN`.
"""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs

from xlib_pipeline import (
    CliCommand,
    ConfigKey,
    ManagerDecorator,
    PipelineManager,
    RunContext,
    StashKey,
    Status,
    Task,
    TaskOption,
    TaskOutcome,
    data_dir,
    hookimpl,
    with_options,
)

PLUGIN_NAME = "example_sla"
REPORT_NAME = "sla-breaches.jsonl"


def _seconds(value: Any) -> float:
    """Convert a positive number of seconds (booleans and strings are mistakes)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"expected a positive number of seconds, got {value!r}")
    return float(value)


def _seconds_or_none(value: Any) -> float | None:
    return None if value is None else _seconds(value)


def _path(value: Any) -> Path:
    if not isinstance(value, str | Path) or not str(value):
        raise ValueError(f"expected a file path, got {value!r}")
    return Path(value)


def default_report_file() -> Path:
    """Where breaches go when ``sla.report_file`` is not set."""
    return data_dir() / REPORT_NAME


@attrs.frozen(kw_only=True)
class Breach:
    """A task attempt that took longer than its budget. Never holds task data."""

    run_id: str
    pipeline: str
    task: str
    status: str
    attempt: int
    seconds: float
    budget: float

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self), sort_keys=True)


def read_report(path: str | Path) -> list[Breach]:
    """Read the breaches recorded in a report file (an absent file has none)."""
    file = Path(path)
    if not file.exists():
        return []
    out = []
    for n, line in enumerate(file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(Breach(**json.loads(line)))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{file}:{n}: not an SLA breach record: {exc}") from exc
    return out


@attrs.define
class SlaRun:
    """One run's budgets (task name -> seconds) and the breaches found so far."""

    budgets: dict[str, float]
    breaches: list[Breach] = attrs.Factory(list)


#: Where this plugin keeps a run's :class:`SlaRun` (``run.stash[SLA_RUN]``).
SLA_RUN: StashKey[SlaRun] = StashKey("example_sla")


class SlaPlugin:
    """Records task attempts that run longer than their ``sla_seconds`` budget.

    One instance is made per :class:`~xlib_pipeline.PipelineManager`; ``breaches`` holds
    what this manager's runs recorded (get the instance with
    ``pm.get_plugin("example_sla")``).
    """

    name = PLUGIN_NAME

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.breaches: list[Breach] = []
        self.default_seconds: float | None = None
        self.report_file: Path | None = None
        #: The last pipeline version's tasks scanned for ``sla_seconds`` (none had it).
        self._scanned: tuple[Task, ...] | None = None

    # -- what the plugin registers -------------------------------------------------------

    @hookimpl
    def register_config_keys(self) -> Iterable[ConfigKey]:
        return (
            ConfigKey(
                name="sla.default_seconds",
                convert=_seconds_or_none,
                doc="Budget in seconds for tasks without sla_seconds (default: none).",
            ),
            ConfigKey(
                name="sla.report_file",
                convert=_path,
                doc=f"JSON-lines file for breaches (default: <data_dir>/{REPORT_NAME}).",
            ),
        )

    @hookimpl
    def register_task_options(self) -> Iterable[TaskOption]:
        return (
            TaskOption(
                name="sla_seconds",
                convert=_seconds,
                doc="Seconds the task should take at most; longer attempts are reported.",
            ),
        )

    @hookimpl
    def register_manager_decorators(self) -> Iterable[ManagerDecorator]:
        def sla(manager: Any, seconds: float) -> Any:
            budget = _seconds(seconds)  # fail at decoration time, naming the value
            return lambda fn: with_options(fn, {"sla_seconds": budget})

        return (ManagerDecorator(name="sla", factory=sla, doc="Give a task an SLA in seconds."),)

    @hookimpl
    def register_cli_commands(self) -> Iterable[CliCommand]:
        return (
            CliCommand(
                name="sla",
                help="show tasks that ran longer than their SLA",
                add_arguments=_add_arguments,
                run=_run_command,
            ),
        )

    # -- lifecycle: register the recorder only when something asks for it -------------------

    @hookimpl
    def configure(self, manager: PipelineManager, config: Any) -> None:
        self.default_seconds = config.get("sla.default_seconds")
        self.report_file = config.get("sla.report_file")
        if self.default_seconds is not None:  # every task has a budget
            manager.register(SlaRecorder(self), name=RECORDER_NAME)

    @hookimpl
    def prepare_run(
        self, manager: PipelineManager, pipeline: Any, tasks: tuple[Task, ...], options: Any
    ) -> None:
        # A task with sla_seconds= (or pm.sla) needs the recorder even without a default;
        # register() ignores a name already registered. Every run of one pipeline version
        # passes the same tasks tuple: scan it once, not on every run.
        if tasks is self._scanned:
            return
        if any("sla_seconds" in t.options for t in tasks):
            manager.register(SlaRecorder(self), name=RECORDER_NAME)
        else:
            self._scanned = tasks

    def breaches_for(self, run_id: str) -> list[Breach]:
        """The breaches one run of this manager recorded."""
        with self._lock:
            return [b for b in self.breaches if b.run_id == run_id]


RECORDER_NAME = f"{PLUGIN_NAME}.recorder"


class SlaRecorder:
    """The per-run and per-task hooks (registered by :class:`SlaPlugin` when needed)."""

    def __init__(self, plugin: SlaPlugin) -> None:
        self.plugin = plugin

    @hookimpl
    def before_pipeline(self, run: RunContext) -> None:
        # Precompute the budgets once per run so after_task is a dict look-up.
        budgets = {}
        for task in run.tasks:
            budget = task.option("sla_seconds", self.plugin.default_seconds)
            if budget is not None:
                budgets[task.name] = float(budget)
        run.stash[SLA_RUN] = SlaRun(budgets=budgets)

    @hookimpl
    def after_task(self, task: Task, run: RunContext, outcome: TaskOutcome) -> None:
        state = run.stash.get(SLA_RUN, None)
        if state is None or not state.budgets:
            return  # no budgets in this run
        budget = state.budgets.get(task.name)
        took = outcome.duration
        if budget is None or took is None or took <= budget:
            return
        breach = Breach(
            run_id=run.run_id,
            pipeline=run.pipeline_name,
            task=task.name,
            status=str(outcome.status),
            attempt=outcome.attempt,
            seconds=round(took, 6),
            budget=budget,
        )
        plugin = self.plugin
        with plugin._lock:  # after_task runs on several scheduler threads at once
            state.breaches.append(breach)
            plugin.breaches.append(breach)

    @hookimpl
    def after_pipeline(self, run: RunContext, result: Any) -> None:
        state = run.stash.get(SLA_RUN, None)
        if state is None or not state.breaches:
            return
        file = self.plugin.report_file or default_report_file()
        file.parent.mkdir(parents=True, exist_ok=True)
        with file.open("a") as f:
            for breach in state.breaches:
                f.write(breach.to_json() + "\n")


# -- the CLI command -------------------------------------------------------------------------


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--file", help=f"report file (default: $XLIB_PIPELINE_HOME/{REPORT_NAME})", default=None
    )
    parser.add_argument("--run", help="only this run id")
    parser.add_argument("--json", action="store_true", help="print JSON lines")
    parser.add_argument(
        "--fail-on-breach", action="store_true", help="exit 1 when any breach is listed"
    )


def _run_command(args: argparse.Namespace) -> int:
    file = Path(args.file) if args.file else default_report_file()
    try:
        breaches = read_report(file)
    except ValueError as exc:
        print(f"xlib-pipeline sla: {exc}")
        return 2
    if args.run:
        breaches = [b for b in breaches if b.run_id == args.run]
    if args.json:
        for b in breaches:
            print(b.to_json())
    elif not breaches:
        print(f"no SLA breaches in {file}")
    else:
        print(f"{len(breaches)} SLA breach(es) in {file}:")
        for b in breaches:
            status = "" if b.status == Status.SUCCEEDED else f" [{b.status}]"
            print(
                f"  {b.pipeline}.{b.task}: {b.seconds:.3f}s > {b.budget:g}s "
                f"(run {b.run_id}, attempt {b.attempt}){status}"
            )
    return 1 if (breaches and args.fail_on_breach) else 0
