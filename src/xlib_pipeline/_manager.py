"""The :class:`PipelineManager`: plugins, validated config, decorators and lifecycle (running
is in :mod:`._running`, executors and the store in :mod:`._resources`)."""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ._builtin import CorePlugin
from ._config import Config, validate
from ._features import Features
from ._graph import Plan, suggest
from ._plugins import (
    KNOWN_DECORATORS,
    Hooks,
    check_disabled,
    create_plugin_manager,
    package_for,
    register_checked,
)
from ._records import CliCommand, Executor, PluginInfo, RenderTarget, StreamConnector
from ._resources import _close_executors, _DetachedManager
from ._running import ManagerRuns
from ._scheduler import Run
from ._store import RunStore
from ._task import Pipeline, Task
from .exceptions import ConfigError, MissingPluginError, PluginError


class PipelineManager(ManagerRuns):
    """Runs pipelines under a validated config with the installed (and given) plugins.

    ``config`` is a plain dict (see docs/configuration.md); ``plugins`` adds plugin objects
    explicitly; ``entry_points=False`` ignores installed plugins (useful in tests).
    Plugins add decorators such as ``pm.audit_log(...)`` as attributes of the manager.
    """

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,
        *,
        plugins: Iterable[object] = (),
        entry_points: bool | None = None,
    ) -> None:
        if config is not None and not isinstance(config, Mapping):
            raise ConfigError(f"config must be a dict, got {type(config).__name__}")
        raw = dict(config or {})
        section = raw.get("plugins")
        disabled: tuple[str, ...] = ()
        use_eps = True if entry_points is None else entry_points
        if isinstance(section, Mapping):
            disabled = tuple(section.get("disable", ()) or ())
            if entry_points is None:
                use_eps = bool(section.get("entry_points", True))
            if isinstance(section.get("disable"), list | tuple):
                check_disabled((str(n) for n in disabled), plugins)
        self._pm, self._infos = create_plugin_manager(
            explicit=plugins,
            disabled=disabled,
            entry_points=use_eps,
            builtin=[("core", CorePlugin())],
        )
        self.hooks = Hooks(self._pm)
        keys = self.hooks.register_config_keys()
        self.config: Config = validate(raw, keys)
        self._task_options = self.hooks.register_task_options()
        self._run_options = self.hooks.register_run_options()
        self._executor_specs = self.hooks.register_executors()
        self._check_executor_name()
        self._decorators = self.hooks.register_manager_decorators()
        # Render targets and CLI commands are collected on first use: plugins build them
        # from modules (argparse, CLI helpers) that a run never needs.
        self._render_targets: dict[str, RenderTarget] | None = None
        self._cli_commands: dict[str, CliCommand] | None = None
        self._stream_connectors = self.hooks.register_stream_connectors()
        self._executors: dict[str, Executor] = {}
        self._exec_lock = threading.RLock()
        self._checked: weakref.WeakKeyDictionary[Plan, tuple[Task, ...]] = (
            weakref.WeakKeyDictionary()
        )
        #: Per plan: the features its tasks use (None: the plain scheduler runs it).
        self._features: weakref.WeakKeyDictionary[Plan, Features | None] = (
            weakref.WeakKeyDictionary()
        )
        self._closed = False
        self._store: RunStore | None = None
        #: Called as ``notice(run_id, grace_seconds)`` on the first interrupt of a run (the
        #: CLI prints that the run is stopping and how long running tasks may go on).
        self.interrupt_notice: Callable[[str, float | None], None] | None = None
        self._store_lock = threading.Lock()
        self._live: dict[str, Run] = {}  # runs under way, by run id (for cancel_run)
        self._store_needed: str | None = None  # why a plugin needs the default store
        self._warned: set[str] = set()
        #: How the scheduler waits between retries. With ``time.sleep`` (the default) a
        #: cancellation cuts the wait short; tests (or a plugin's ``configure``) may replace it.
        self.sleep: Callable[[float], None] = time.sleep
        self.hooks.configure(manager=self, config=self.config)
        self._finalizer = weakref.finalize(self, _close_executors, self._executors)

    # -- plugins ---------------------------------------------------------------------------

    def register(self, plugin: object, name: str) -> None:
        """Register a plugin's runtime hook object for this manager (pytest's idiom).

        Plugins call it from ``configure`` (what their config turns on) or ``prepare_run``
        (what a pipeline's options need). A name already registered by an object of the same
        class is left alone, so calling it again is harmless; another class is refused. Runs
        already under way keep the hooks they started with. A marked method that is no hook
        is refused with a did-you-mean.
        """
        with self._exec_lock:
            present = self._pm.get_plugin(name)
            if present is not None:
                if type(present) is not type(plugin):
                    raise PluginError(
                        f"cannot register a {type(plugin).__name__} as {name!r}: that name is "
                        f"taken by a {type(present).__name__}",
                        plugin=name,
                    )
                return
            register_checked(self._pm, plugin, name)
            owners = self.hooks.owners
            self.hooks = Hooks(self._pm)
            self.hooks.owners = owners

    @property
    def plugins(self) -> list[PluginInfo]:
        """The registered plugins with their distributions, versions and hooks."""
        return list(self._infos)

    def has_plugin(self, name: str) -> bool:
        """Whether plugin ``name`` (or a runtime object of that name) is registered."""
        return self._pm.get_plugin(name) is not None

    def get_plugin(self, name: str) -> Any:
        """The plugin object registered as ``name`` (``None`` when absent).

        For a plugin's own objects; plugins never reach another plugin this way (they share
        state through :class:`~xlib_pipeline.StashKey` keys and hooks).
        """
        return self._pm.get_plugin(name)

    @property
    def cli_commands(self) -> Mapping[str, CliCommand]:
        """CLI sub-commands registered by plugins."""
        if self._cli_commands is None:
            self._cli_commands = self.hooks.register_cli_commands()
        return dict(self._cli_commands)

    @property
    def stream_connectors(self) -> Mapping[str, StreamConnector]:
        """Stream sources and sinks by URL scheme (embedded ``jsonl`` plus plugins')."""
        return dict(self._stream_connectors)

    def stream(self, pipeline: Pipeline, **kwargs: Any) -> Any:
        """Run ``pipeline`` over a source in micro-batches, one run per batch, into a sink.

        See :func:`xlib_pipeline.streams.run_stream` for the arguments; returns the
        :class:`~xlib_pipeline.streams.Stream` (``records``, ``batches``, ``status`` ...).
        """
        from .streams import run_stream

        return run_stream(self, pipeline, **kwargs)

    @property
    def render_targets(self) -> Mapping[str, RenderTarget]:
        """Deployment render targets registered by plugins."""
        if self._render_targets is None:
            self._render_targets = self.hooks.register_render_targets()
        return dict(self._render_targets)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        decorators = self.__dict__.get("_decorators", {})
        spec = decorators.get(name)
        if spec is not None:
            factory = spec.factory

            def decorator_factory(*args: Any, **kwargs: Any) -> Callable[..., Any]:
                made: Callable[..., Any] = factory(self, *args, **kwargs)
                return made

            decorator_factory.__name__ = name
            decorator_factory.__doc__ = spec.doc
            return decorator_factory
        plugin = KNOWN_DECORATORS.get(name)
        if plugin is not None:
            raise MissingPluginError(f"pm.{name}(...)", package_for(plugin))
        hint = suggest(name, [*decorators, *KNOWN_DECORATORS, "execute_pipeline"])
        extra = f"; did you mean {hint!r}?" if hint else ""
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}{extra}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Task closures often capture an object holding the manager (the user guide's
        # examples do). A worker process gets a detached stand-in, never plugins or keys.
        return (_DetachedManager, (dict(self.config.raw),))

    def close(self) -> None:
        """Stop worker pools, close the store, let plugins release resources."""
        try:
            self.hooks.close(manager=self)
        finally:
            _close_executors(self._executors)
            if self._store is not None:
                self._store.close()
                self._store = None

    def __enter__(self) -> PipelineManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
