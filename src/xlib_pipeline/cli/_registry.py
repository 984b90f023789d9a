"""The installed plugins as the argument parser sees them, without the engine.

``xlib-pipeline`` builds its parser before it knows the command. A full
:class:`~xlib_pipeline.PipelineManager` would import the scheduler, the run store and the
executors for ``--help`` too; the parser needs only the plugins' command and render-target
declarations. :class:`CliPlugins` loads the same entry points into the same plugin manager
(so a plugin that fails to load is reported the same way) with the core's CLI hook alone.
Commands that run pipelines build their own managers from the chosen config.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from .._core_cli import CoreCommands
from .._hooks import Hooks
from .._plugins import create_plugin_manager
from .._records import CliCommand, RenderTarget


class ParserPlugins(Protocol):
    """What :func:`~._parser.build_parser` reads: a manager or a :class:`CliPlugins`."""

    @property
    def cli_commands(self) -> Mapping[str, CliCommand]: ...

    @property
    def render_targets(self) -> Mapping[str, RenderTarget]: ...

    def has_plugin(self, name: str) -> bool: ...


class CliPlugins:
    """Every installed plugin, registered for the parser's declarations only."""

    def __init__(self) -> None:
        self._pm, _ = create_plugin_manager(entry_points=True, builtin=[("core", CoreCommands())])
        self._hooks = Hooks(self._pm, direct=False)

    @property
    def cli_commands(self) -> Mapping[str, CliCommand]:
        """CLI sub-commands: the core's and every plugin's, by name."""
        return self._hooks.register_cli_commands()

    @property
    def render_targets(self) -> Mapping[str, RenderTarget]:
        """Deployment render targets registered by plugins."""
        return self._hooks.register_render_targets()

    def has_plugin(self, name: str) -> bool:
        """Whether plugin ``name`` is installed (and loaded)."""
        return self._pm.get_plugin(name) is not None
