"""The argument parser: built-in commands, plugin commands and render targets, global flags
accepted in any position, and an install hint for a plugin command that is not installed.

Plugin commands, render targets and ``stream`` are declared by name and help only; their
arguments are added (and their modules imported) when the command line chooses them, so
``xlib-pipeline --help`` and every other command never import what they do not run.
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from .._events import LOG_FORMATS
from .._names import suggest
from .._plugins import KNOWN_CLI_COMMANDS, KNOWN_RENDER_TARGETS, package_for
from .._records import CliCommand, RenderTarget, Status

if TYPE_CHECKING:
    from ._registry import ParserPlugins

#: What ``runs list --status`` accepts: every task/run status, and ``interrupted`` (a run
#: whose process is gone without finishing).
RUN_STATUSES = (*(s.value for s in Status), "interrupted")

_INVALID_CHOICE = re.compile(r"invalid choice: (['\"])(?P<value>.*?)\1")


def _command(module: str, name: str) -> Callable[[argparse.Namespace], Any]:
    """Built-in command ``name`` of ``module``, imported when the command runs: the parser
    (and ``--help``) never import the manager, the run store or the loaders."""

    def run(args: argparse.Namespace) -> Any:
        import importlib

        return getattr(importlib.import_module(module, __package__), name)(args)

    run.__name__ = run.__qualname__ = name
    return run


cmd_run = _command("._run", "cmd_run")
cmd_resume = _command("._run", "cmd_resume")
cmd_runs = _command("._runs", "cmd_runs")
cmd_graph = _command("._commands", "cmd_graph")
cmd_plugins = _command("._commands", "cmd_plugins")
cmd_render = _command("._commands", "cmd_render")


#: ``stream``'s help line (its arguments come from :mod:`xlib_pipeline.streams` on use).
STREAM_HELP = "run a pipeline over a source in micro-batches into a sink (checkpointed)"


class LazySubParsers(argparse._SubParsersAction):  # type: ignore[type-arg]
    """Sub-parsers whose arguments are added when the command line chooses them.

    ``lazy(name, help, fill)`` adds a sub-parser known by name and help (enough for the
    parent's ``--help`` and "invalid choice" errors); ``fill(parser)`` adds its arguments
    the first time the name is parsed.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fills: dict[str, Callable[[argparse.ArgumentParser], None]] = {}

    def lazy(
        self, name: str, help: str, fill: Callable[[argparse.ArgumentParser], None]
    ) -> argparse.ArgumentParser:
        child: argparse.ArgumentParser = self.add_parser(name, help=help)
        self.fills[name] = fill
        return child

    def fill(self, name: str) -> None:
        """Add the arguments of sub-command ``name`` now (once)."""
        fill = self.fills.pop(name, None)
        if fill is not None:
            child = self.choices[name]
            fill(child)
            for parser in (child, *_every_subparser(child)):
                add_global_options(parser, sub=True)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if values:
            self.fill(values[0])
        super().__call__(parser, namespace, values, option_string)


class _Version(argparse.Action):
    """``--version``: the installed version, looked up only when asked."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault("nargs", 0)
        kwargs.setdefault("default", argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        parser._print_message(_version() + "\n", sys.stdout)
        parser.exit()


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose "invalid choice" names the plugin that provides a
    command or render target which is not installed, with how to install it."""

    #: ``{choice: plugin}`` for commands (or render targets) first-party plugins provide.
    plugin_choices: dict[str, str]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", LazySubParsers)
        self.plugin_choices = {}

    def error(self, message: str) -> NoReturn:
        found = _INVALID_CHOICE.search(message)
        plugin = self.plugin_choices.get(found.group("value")) if found else None
        if found and plugin is not None:
            value = found.group("value")
            package = package_for(plugin)
            self.print_usage(sys.stderr)
            self.exit(
                2,
                f"{self.prog}: error: {value!r} is provided by the plugin {package!r}, which "
                f"is not installed (or is disabled). Install it (pip install {package}, or "
                f"pip install 'xlib-pipeline[all]'; see docs/installation.md).\n",
            )
        super().error(message)


def add_global_options(parser: argparse.ArgumentParser, *, sub: bool = False) -> None:
    """Options accepted before or after any sub-command (``xlib-pipeline run f.py -v``).

    On a sub-command's parser they default to "not given", so they never reset what was
    given before the sub-command."""
    default: Any = argparse.SUPPRESS if sub else 0
    if sub and "-v" in parser._option_string_actions:
        return  # a plugin command with its own -v keeps it
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=default,
        help="log the run's events to standard error (-vv: debug, and tracebacks of "
        "unexpected errors)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=default if sub else None,
        help="how events are logged to stderr: console lines or one JSON object per line "
        "(implies -v)",
    )


def _every_subparser(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    out: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                out.append(child)
                out.extend(_every_subparser(child))
    return out


def add_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        help="config file (.json, .toml, .yaml); default: $XLIB_PIPELINE_CONFIG, else the "
        "pipeline file's PIPELINE_CONFIG. XLIB_PIPELINE_* variables override its keys",
    )


def int_at_least(low: int) -> Callable[[str], int]:
    """argparse type: an integer >= ``low`` (at most 10**6)."""

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= 10**6:
            raise argparse.ArgumentTypeError(f"expected {low} to 1000000, got {value}")
        return value

    return convert


def run_status(text: str) -> str:
    """argparse type: a run status (``--status faild`` names the valid ones)."""
    if text in RUN_STATUSES:
        return text
    hint = suggest(text, RUN_STATUSES)
    raise argparse.ArgumentTypeError(
        f"unknown status {text!r}"
        + (f"; did you mean {hint!r}?" if hint else "")
        + f" (valid: {', '.join(RUN_STATUSES)})"
    )


def _version() -> str:
    import importlib.metadata as md
    import platform

    try:
        version = md.version("xlib-pipeline")
    except md.PackageNotFoundError:  # pragma: no cover - run from a source tree
        from .. import __version__ as version
    return f"xlib-pipeline {version} (Python {platform.python_version()})"


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """Options ``run`` and ``resume`` share."""
    add_config_arg(p)
    p.add_argument(
        "--store", metavar="FILE", help="run store file (default: $XLIB_PIPELINE_HOME/runs.sqlite)"
    )
    p.add_argument("--inline", action="store_true", help="run tasks one at a time, in one thread")
    p.add_argument(
        "--executor", metavar="NAME", help="executor: threads, processes, or a plugin's (dask)"
    )
    p.add_argument(
        "--max-workers", type=int_at_least(1), metavar="N", help="tasks at once (default: config)"
    )
    p.add_argument(
        "--monitor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="live progress and a closing summary on standard error",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (run id, status, times, tasks, result or error) on "
        "standard output; no progress",
    )


def _add_runs(sub: Any) -> None:
    runs = sub.add_parser("runs", help="run history from the run store")
    rsub = runs.add_subparsers(dest="runs_command", required=True, metavar="ACTION")
    rl = rsub.add_parser("list", help="recent runs, newest first")
    rl.add_argument(
        "--limit", type=int_at_least(0), default=20, metavar="N", help="at most N runs (20)"
    )
    rl.add_argument("--pipeline", metavar="NAME", help="only runs of this pipeline")
    rl.add_argument(
        "--status",
        type=run_status,
        metavar="STATUS",
        help=f"only runs with this status ({', '.join(RUN_STATUSES)})",
    )
    rs = rsub.add_parser(
        "show", help="one run: params, tasks, attempts, errors and tracebacks (or a stream)"
    )
    rs.add_argument("run_id", metavar="RUN_ID", help="a run id, a unique prefix, or a stream name")
    rp = rsub.add_parser("prune", help="delete old runs and reclaim the space")
    rp.add_argument("--older-than", metavar="DURATION", help="e.g. 30d, 12h, 15m, 90s")
    rp.add_argument("--keep", type=int_at_least(0), metavar="N", help="keep the newest N runs")
    rp.add_argument("--pipeline", metavar="NAME", help="only runs of this pipeline")
    rp.add_argument("--dry-run", action="store_true", help="say what would go, delete nothing")
    rp.add_argument(
        "--force", action="store_true", help="also prune runs that a kept run resumed from"
    )
    for sp in (rl, rs, rp):
        sp.add_argument("--store", metavar="FILE", help="run store file")
        sp.add_argument("--json", action="store_true", help="print JSON (times in ISO-8601)")
        sp.add_argument("--principal", help="who reads (access control; default: the OS user)")
        add_config_arg(sp)
    runs.set_defaults(func=cmd_runs)


def _missing(known: dict[str, str], present: Any, pm: ParserPlugins | None) -> dict[str, str]:
    """The known plugin choices absent here because their plugin is not loaded."""
    return {
        k: v for k, v in known.items() if k not in present and (pm is None or not pm.has_plugin(v))
    }


def build_parser(pm: ParserPlugins | None = None) -> argparse.ArgumentParser:
    """The argument parser, with plugin sub-commands and render targets from ``pm`` (a
    :class:`~xlib_pipeline.PipelineManager` or the CLI's :class:`~._registry.CliPlugins`)."""
    parser = Parser(
        prog="xlib-pipeline",
        description="Run, inspect and deploy xlib-pipeline pipelines. Config layers: the "
        "config file < XLIB_PIPELINE_* environment variables < flags.",
    )
    add_global_options(parser)
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    assert isinstance(sub, LazySubParsers)

    run = sub.add_parser("run", help="run a pipeline: FILE[:PIPELINE_OR_FACTORY]")
    run.add_argument("target", help="FILE[:NAME]: a Python file, and a pipeline or factory in it")
    _add_run_options(run)
    run.add_argument("--tenant", help="tenant id for the run")
    run.add_argument("--principal", help="who runs it (access control)")
    run.add_argument(
        "--param",
        action="append",
        metavar="KEY=VALUE",
        help="run parameter, repeatable; VALUE is JSON when it parses, else a string",
    )
    run.set_defaults(func=cmd_run)

    resume = sub.add_parser("resume", help="re-run what did not finish in a stored run")
    resume.add_argument("run_id", metavar="RUN_ID", help="the run to finish (or a unique prefix)")
    resume.add_argument("--target", help="FILE[:NAME] when the run did not start from the CLI")
    resume.add_argument("--force", action="store_true", help="resume a changed pipeline")
    _add_run_options(resume)
    resume.set_defaults(func=cmd_resume)

    _add_runs(sub)

    sub.lazy("stream", STREAM_HELP, _fill_stream)

    graph = sub.add_parser("graph", help="print the DAG as Mermaid or DOT")
    graph.add_argument("target", help="FILE[:NAME]: a Python file, and a pipeline or factory in it")
    graph.add_argument(
        "--format", choices=("mermaid", "dot"), default="mermaid", help="output format (mermaid)"
    )
    graph.set_defaults(func=cmd_graph)

    plugins = sub.add_parser("plugins", help="list installed plugins and their hooks")
    plugins.add_argument("--json", action="store_true", help="print a JSON list")
    plugins.set_defaults(func=cmd_plugins)

    targets = pm.render_targets if pm is not None else {}
    render = sub.add_parser("render", help="render deployment manifests for a pipeline")
    rsub = render.add_subparsers(dest="render_target", required=True, metavar="TARGET")
    assert isinstance(render, Parser) and isinstance(rsub, LazySubParsers)
    render.plugin_choices = _missing(KNOWN_RENDER_TARGETS, targets, pm)
    for name, target in sorted(targets.items()):
        rsub.lazy(name, target.doc or name, functools.partial(_fill_render, target))

    commands = pm.cli_commands if pm is not None else {}
    for name, command in sorted(commands.items()):
        sub.lazy(name, command.help, functools.partial(_fill_command, command))
    parser.plugin_choices = _missing(KNOWN_CLI_COMMANDS, sub.choices, pm)
    for child in _every_subparser(parser):
        add_global_options(child, sub=True)
    return parser


def fill_all(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the arguments of every lazily declared sub-command now (docs, completion)."""
    for action in parser._actions:
        if isinstance(action, LazySubParsers):
            for name in list(action.fills):
                action.fill(name)
            for child in dict.fromkeys(action.choices.values()):
                fill_all(child)
    return parser


def _fill_stream(sp: argparse.ArgumentParser) -> None:
    from ..streams._cli import add_parser, cmd_stream

    class _Into:  # streams' add_parser adds its own sub-parser: hand it this one
        @staticmethod
        def add_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
            return sp

    add_parser(_Into(), add_config_arg)
    sp.set_defaults(func=cmd_stream)


def _fill_render(target: RenderTarget, tp: argparse.ArgumentParser) -> None:
    tp.add_argument("target", help="FILE[:PIPELINE_OR_FACTORY]")
    add_config_arg(tp)
    tp.add_argument("-o", "--output", help="write one file per manifest into this folder")
    if target.add_arguments is not None:
        target.add_arguments(tp)
    tp.set_defaults(func=cmd_render)


def _fill_command(command: CliCommand, cp: argparse.ArgumentParser) -> None:
    command.add_arguments(cp)
    cp.set_defaults(func=command.run)
