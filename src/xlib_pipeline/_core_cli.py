"""The core's own CLI commands (``cache``), declared without importing their modules.

:class:`CoreCommands` is the core's ``register_cli_commands`` hook on its own: the CLI
registers it (instead of the whole core plugin, which imports the executors) to build
``xlib-pipeline --help``; :class:`~._builtin.CorePlugin` answers the same hook with the
same commands for ``PipelineManager.cli_commands``.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable

from ._records import CliCommand
from .hookspecs import hookimpl


def _cache_arguments(parser: argparse.ArgumentParser) -> None:
    from ._cache_cli import add_arguments  # the run store: when ``cache`` is chosen

    add_arguments(parser)


def _cache_run(args: argparse.Namespace) -> int:
    from ._cache_cli import run

    return run(args)


def core_cli_commands() -> tuple[CliCommand, ...]:
    """The core's CLI commands."""
    return (
        CliCommand(
            name="cache",
            help="list or clear result-cache entries (cache list | clear)",
            add_arguments=_cache_arguments,
            run=_cache_run,
        ),
    )


class CoreCommands:
    """The core's ``register_cli_commands`` hook, for the CLI's plugin registry."""

    @hookimpl
    def register_cli_commands(self) -> Iterable[CliCommand]:
        return core_cli_commands()
