"""The ``audit`` plugin: config keys, ``pm.audit_log``, the trail writer and the CLI.

Split: :mod:`._settings` (the config section, key loading), :mod:`._recorder` (the per-run
and per-task hooks, registered by ``configure`` only when auditing is on) and
:mod:`._decorator` (``pm.audit_log``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xlib_pipeline import (
    CliCommand,
    ConfigError,
    ConfigKey,
    EvidenceSection,
    ManagerDecorator,
    TaskOption,
    data_dir,
    hookimpl,
    observe_direct_calls,
)

if TYPE_CHECKING:  # pragma: no cover
    from ._checkpoint import Checkpointer
    from ._recorder import Recorder
    from ._settings import AuditSettings
    from ._trail import AuditTrail

# Loaded on every PipelineManager() by its entry point: the settings (attrs classes), the
# trail writer, the recorder and checkpoint signing (cryptography, rfc8785) are imported
# when an audit key is given or auditing is turned on.

#: The top-level flags that turn the trail on (``_settings.FLAG_KEYS``; a test keeps both equal).
FLAG_KEYS = ("audit_logging", "audit_everything")


def _flag(name: str, value: Any) -> bool:
    from ._settings import flag

    return flag(name, value)


def _convert_section(value: Any) -> AuditSettings:
    from ._settings import convert_section

    return convert_section(value)


def _convert_task_option(value: Any) -> Any:
    from ._settings import convert_task_option

    return convert_task_option(value)


class AuditPlugin:
    """Tamper-evident audit trail of every run, task attempt and audited call.

    Inert unless one of the config keys ``audit``, ``audit_logging``, ``audit_everything``
    or the core's ``compliance_mode`` turns it on. ``path`` is the trail file (``None`` when off).
    """

    name = "audit"

    def __init__(self) -> None:
        self.enabled = False
        self._settings: AuditSettings | None = None
        self.path: Path | None = None
        self.key: bytes | None = None
        self.actor: str = ""
        self._trail: AuditTrail | None = None
        self._recorder: Recorder | None = None
        #: The config said ``audit: false``: ``pm.audit_log`` then leaves auditing off.
        self.explicitly_off = False
        self._manager: Any = None
        self._stop_observing: Callable[[], None] | None = None
        #: The manager was closed (and released its trail): see :meth:`call_trail`.
        self.closed = False
        #: Signs checkpoints of the trail's head (``audit.checkpoint_key_file``), or None.
        self.checkpointer: Checkpointer | None = None

    @property
    def settings(self) -> AuditSettings:
        """The ``audit`` section in force (``enabled=False`` until auditing is on)."""
        found = self._settings
        if found is None:
            from ._settings import AuditSettings

            found = self._settings = AuditSettings(enabled=False)
        return found

    @settings.setter
    def settings(self, value: AuditSettings) -> None:
        self._settings = value

    # -- collectors -------------------------------------------------------------------------

    @hookimpl
    def register_config_keys(self) -> Iterable[ConfigKey]:
        flag_doc = (
            "true turns the audit trail on with defaults (data_dir()/audit.jsonl, fsync batch)."
        )
        return (
            ConfigKey(
                name="audit",
                convert=_convert_section,
                doc="Audit trail settings: true, or {path, fsync: always|batch|never, "
                "batch_size, batch_interval_ms, write_through, hmac_key_env, hmac_key_file, "
                "actor, digests, multiprocess, max_bytes, rotate, processors, destinations, "
                "checkpoint_key_file, checkpoints_dir, checkpoint_every}.",
            ),
            *(
                ConfigKey(name=k, convert=functools.partial(_flag, k), doc=flag_doc)
                for k in FLAG_KEYS
            ),
        )

    @hookimpl
    def register_task_options(self) -> Iterable[TaskOption]:
        return (
            TaskOption(
                name="audit",
                convert=_convert_task_option,
                doc="Audit labels for the task's records: {'operation': ..., 'tenant_id': ..., "
                "'digests': bool}; pm.audit_log(...) sets it.",
            ),
        )

    @hookimpl
    def register_manager_decorators(self) -> Iterable[ManagerDecorator]:
        return (
            ManagerDecorator(
                name="audit_log",
                factory=functools.partial(_audit_log, self),
                doc="pm.audit_log(tenant_id=None, operation=None, digests=None): label a task "
                "(or audit direct calls of a function) in the audit trail.",
            ),
        )

    @hookimpl
    def register_cli_commands(self) -> Iterable[CliCommand]:
        return (
            CliCommand(
                name="audit",
                help="verify or show an audit trail",
                add_arguments=_cli_arguments,
                run=_cli_run,
            ),
        )

    # -- lifecycle --------------------------------------------------------------------------

    @hookimpl
    def configure(self, manager: Any, config: Any) -> None:
        self._manager = manager
        self.closed = False
        section = config.get("audit") if config.given("audit") else None
        flags = [k for k in FLAG_KEYS if config.given(k) and config.get(k)]
        if section is not None and not section.enabled:
            if flags:
                raise ConfigError(
                    f"config says audit: false but {flags[0]}: true, which needs the audit "
                    "trail; drop one of them",
                    key="audit",
                )
            self.explicitly_off = True
            return
        if section is None and not flags:
            return
        from ._settings import AuditSettings

        self.enable(manager, config, section or AuditSettings())

    def enable(self, manager: Any, config: Any, settings: AuditSettings) -> None:
        """Turn the trail on with ``settings`` and register the per-task recorder."""
        from ._keys import refuse_unkeyed_trail
        from ._settings import DEFAULT_FILE, load_key, os_user, resolve_callable

        self.settings = settings
        self.path = (
            Path(settings.path).expanduser().absolute()
            if settings.path
            else (data_dir() / DEFAULT_FILE).absolute()
        )
        if settings.keyed and not (settings.hmac_key_env or settings.hmac_key_file):
            refuse_unkeyed_trail(self.path)
        self.key = load_key(settings)
        self.actor = settings.actor or config.core.actor or os_user()
        from ._recorder import Recorder

        if settings.checkpoint_key_file:
            from ._checkpoint import Checkpointer, load_signing_key
            from ._checkpoint import default_dir as default_checkpoint_dir

            self.checkpointer = Checkpointer(
                self.path,
                Path(settings.checkpoints_dir).expanduser().absolute()
                if settings.checkpoints_dir
                else default_checkpoint_dir(self.path),
                load_signing_key(settings.checkpoint_key_file),
                settings.checkpoint_every,
            )
        self._processors = tuple(resolve_callable(p) for p in settings.processors)
        self._destinations = tuple(resolve_callable(d) for d in settings.destinations)
        self.enabled = True
        recorder = Recorder(self)
        self._recorder = recorder
        manager.register(recorder, name="audit.recorder")
        if config.get("audit_everything") and self._stop_observing is None:
            # audit_everything: direct calls of every task function are audited too.
            from ._decorator import DirectCalls

            self._stop_observing = observe_direct_calls(DirectCalls(self))

    @hookimpl
    def close(self, manager: Any) -> None:
        stop, self._stop_observing = self._stop_observing, None
        if stop is not None:
            stop()
        trail = self._trail
        if trail is not None and self.checkpointer is not None and not trail.closed:
            self.checkpoint(force=True)  # the last records get a checkpoint too
        self._trail = None
        self.closed = True
        if trail is not None:
            trail.release()

    @property
    def trail(self) -> AuditTrail | None:
        """The trail writer (opened on first use), or ``None`` when auditing is off."""
        if not self.enabled:
            return None
        return self.writer()

    def writer(self) -> AuditTrail:
        """The open trail writer (opened on first use). Raises when auditing is off."""
        trail = self._trail
        if trail is None:
            if not self.enabled or self.path is None:
                raise ConfigError(
                    "auditing is off: set audit_logging: true (or an audit section) in the "
                    "PipelineManager config",
                    key="audit",
                )
            trail = self._trail = self._open()
        return trail

    def call_trail(self) -> tuple[AuditTrail, bool]:
        """The trail a direct call's record goes to, and whether the caller must release it.

        Once the manager is closed a ``pm.audit_log`` function may still be called: its
        record is written through a reference of its own, released once written, instead
        of reopening the manager's trail, which nothing would close again (the trail, its
        file and its ``xlib-audit-sync`` thread stayed open until the process exited)."""
        if not self.closed:
            return self.writer(), False
        if self.path is None:
            self.writer()  # raises: auditing is off
        return self._open(), True

    def _open(self) -> AuditTrail:
        from ._registry import open_trail

        assert self.path is not None
        s = self.settings
        return open_trail(
            self.path,
            fsync=s.fsync,
            batch_size=s.batch_size,
            batch_interval_ms=s.batch_interval_ms,
            write_through=s.write_through,
            key=self.key,
            multiprocess=s.multiprocess,
            max_bytes=s.max_bytes,
            rotate=s.rotate,
            processors=self._processors,
            destinations=self._destinations,
        )

    def add_processor(self, processor: Callable[[Any, str, Any], Any]) -> None:
        """Add a structlog processor run on every record before it is hashed."""
        self.writer().add_processor(processor)

    def add_destination(self, destination: Callable[[str], None]) -> None:
        """Send every written trail line (a JSON string) to ``destination`` as well."""
        self.writer().add_destination(destination)

    def sync(self) -> None:
        """Make the trail durable now and move its head anchor to the last record."""
        if self._trail is not None:
            self._trail.sync()

    def checkpoint(self, *, force: bool = False) -> None:
        """Sign a checkpoint of the trail's synced head: at run ends (``force``) and once
        ``audit.checkpoint_every`` records were written since the last one."""
        cp = self.checkpointer
        trail = self._trail
        if cp is None or trail is None:
            return
        if not force and not cp.due(trail.last_seq):
            return
        if trail.last_seq <= cp.last_seq:
            return
        from ._head import head_path, read_head

        trail.sync()
        head = read_head(head_path(trail.path))
        if head is not None:
            cp.write(int(head["seq"]), str(head["hash"]))

    @hookimpl
    def collect_evidence(self, manager: Any, run_id: str, run: Any) -> EvidenceSection | None:
        """The run's seq range and head hash; with ``run=None`` also ``audit.jsonl``."""
        if not self.enabled or self.path is None:
            return None
        from ._canonical import ALG_HMAC, ALG_SHA256
        from ._evidence import section as evidence_section

        self.sync()
        alg = ALG_HMAC if self.key is not None else ALG_SHA256
        got = evidence_section(self.path, alg, run_id, with_files=run is None)
        if got is None:
            return None
        return EvidenceSection(name="audit", facts=got["facts"], files=got["files"])


def _audit_log(plugin: AuditPlugin, *args: Any, **kwargs: Any) -> Any:
    """``pm.audit_log``: the decorator module is imported on first use."""
    from ._decorator import audit_log

    return audit_log(plugin, *args, **kwargs)


def _cli_arguments(parser: Any) -> None:
    """The command's arguments (its module is imported when the command is chosen)."""
    from ._cli import add_arguments

    add_arguments(parser)


def _cli_run(args: Any) -> int:
    from ._cli import run

    return int(run(args))
