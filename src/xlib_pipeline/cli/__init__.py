"""The ``xlib-pipeline`` command line.

Built-in commands: ``run``, ``resume``, ``runs``, ``stream``, ``graph``, ``plugins``,
``render``; plugins add more through ``register_cli_commands`` (``audit``, ``lineage``,
``keys``, ``worker`` ...). Config layers: the file < ``XLIB_PIPELINE_*`` environment
variables < flags. Exit codes: 0 success, 1 a run failed, 2 bad input (file, name, config,
option), 130 interrupted.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .._config_env import variable_for
from .._events import configure_logging
from .._lazy import lazy_exports
from ..exceptions import ConfigError, PipelineError, UsageError
from ._parser import build_parser
from ._registry import CliPlugins

if TYPE_CHECKING:
    from ..loading import CONFIG_ATTR, default_store_path, load_config, load_module, load_pipeline
    from ._commands import build_manager

__all__ = [
    "CONFIG_ATTR",
    "UsageError",
    "build_manager",
    "build_parser",
    "default_store_path",
    "load_config",
    "load_module",
    "load_pipeline",
    "main",
]

# The loaders and the manager (the engine) load when a command uses them, not for --help.
if not TYPE_CHECKING:  # mypy sees the names above, and flags a misspelt one
    __getattr__, __dir__ = lazy_exports(
        __name__,
        {
            "CONFIG_ATTR": "..loading",
            "default_store_path": "..loading",
            "load_config": "..loading",
            "load_module": "..loading",
            "load_pipeline": "..loading",
            "build_manager": "._commands",
        },
    )


def _configure_logging(verbose: int, log_format: str | None = None) -> None:
    if log_format is not None and verbose == 0:
        verbose = 1  # asking for a log format is asking for the events
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    configure_logging(level, format=log_format or "console", stream=sys.stderr)


def _describe(exc: PipelineError) -> str:
    """The one-line error, naming the environment variable that set a bad config key."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ConfigError):
        var = variable_for(exc.key)
        if var is not None:
            text += f" (set by the environment variable {var})"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``xlib-pipeline`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        plugins = CliPlugins()  # the parser needs the plugins' commands, not the engine
    except PipelineError as exc:
        print(f"xlib-pipeline: {exc}", file=sys.stderr)
        return 2
    parser = build_parser(plugins)
    args = parser.parse_args(argv)
    _configure_logging(args.verbose, getattr(args, "log_format", None))
    try:
        code = args.func(args)
        return int(code or 0)
    except PipelineError as exc:
        print(f"xlib-pipeline: {_describe(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xlib-pipeline: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # a file or folder named on the command line
        where = f" {exc.filename!r}" if exc.filename else ""
        print(f"xlib-pipeline: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except Exception as exc:
        # Never a traceback for input: one line, the traceback only with -vv.
        if args.verbose >= 2:
            raise
        print(
            f"xlib-pipeline: {args.command}: {type(exc).__name__}: {exc} "
            "(run with -vv for the traceback)",
            file=sys.stderr,
        )
        return 2
