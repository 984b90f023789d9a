"""The ``audit`` plugin: config keys, ``pm.audit_log``, the run/task hooks and the CLI."""

from __future__ import annotations

import difflib
import functools
import getpass
import importlib
import os
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

from xlib_pipeline import (
    CliCommand,
    ConfigError,
    ConfigKey,
    ManagerDecorator,
    Status,
    TaskOption,
    data_dir,
    hookimpl,
    observe_direct_calls,
    task_options,
    with_options,
)

from ._canonical import digest
from ._keys import default_key, refuse_unkeyed_trail
from ._registry import open_trail
from ._trail import FSYNC_POLICIES, AuditTrail

SECTION_KEYS = (
    "path",
    "fsync",
    "batch_size",
    "batch_interval_ms",
    "write_through",
    "hmac_key_env",
    "hmac_key_file",
    "keyed",
    "actor",
    "digests",
    "multiprocess",
    "processors",
    "destinations",
)
#: Flags that turn the trail on (``compliance_mode``, owned by the core, implies
#: ``audit_logging``).
FLAG_KEYS = ("audit_logging", "audit_everything")
DEFAULT_FILE = "audit.jsonl"
_TERMINAL = (
    Status.SUCCEEDED,
    Status.FAILED,
    Status.SKIPPED,
    Status.UPSTREAM_FAILED,
    Status.CANCELLED,
)


@attrs.frozen(kw_only=True)
class AuditSettings:
    """The validated ``audit`` section (``audit: true`` means every default)."""

    enabled: bool = True
    path: str | None = None
    fsync: str = "batch"
    batch_size: int = 256
    batch_interval_ms: int = 200
    hmac_key_env: str | None = None
    hmac_key_file: str | None = None
    #: Key the trail by default (a 0600 key file outside the data folder) when neither
    #: hmac_key_env nor hmac_key_file names one; ``False`` writes a plain SHA-256 chain.
    keyed: bool = True
    actor: str | None = None
    digests: bool = False
    multiprocess: bool = False
    write_through: bool = False
    processors: tuple[Any, ...] = ()
    destinations: tuple[Any, ...] = ()


def _positive_int(name: str, value: Any, *, zero: bool = False) -> int:
    low = 0 if zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 10**9:
        what = "a non-negative" if zero else "a positive"
        raise ValueError(f"audit.{name} must be {what} integer (at most 1e9), got {value!r}")
    return value


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def _opt_str(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str | os.PathLike) or not os.fspath(value):
        raise ValueError(f"audit.{name} must be a non-empty string, got {value!r}")
    return os.fspath(value)


def _callables(name: str, value: Any) -> tuple[Any, ...]:
    if value is None:
        return ()
    if callable(value) or isinstance(value, str):
        value = [value]
    out = []
    for item in value:
        if not (callable(item) or (isinstance(item, str) and ":" in item)):
            raise ValueError(
                f"audit.{name} entries must be callables or 'package.module:attribute' "
                f"strings, got {item!r}"
            )
        out.append(item)
    return tuple(out)


def convert_section(value: Any) -> AuditSettings:
    """Validate the ``audit`` config key: ``true``/``false`` or a mapping of settings."""
    if isinstance(value, bool):
        return AuditSettings(enabled=value)
    if not isinstance(value, Mapping):
        raise ValueError(f"expected true, false or a mapping of audit settings, got {value!r}")
    unknown = [k for k in value if k not in SECTION_KEYS]
    if unknown:
        k = str(unknown[0])
        close = difflib.get_close_matches(k, SECTION_KEYS, n=1)
        hint = f"; did you mean 'audit.{close[0]}'?" if close else ""
        raise ValueError(f"unknown key 'audit.{k}'{hint} (known: {', '.join(SECTION_KEYS)})")
    fsync = value.get("fsync", "batch")
    if fsync not in FSYNC_POLICIES:
        close = difflib.get_close_matches(str(fsync), FSYNC_POLICIES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"audit.fsync must be one of {list(FSYNC_POLICIES)}, got {fsync!r}{hint}")
    return AuditSettings(
        enabled=True,
        path=_opt_str("path", value.get("path")),
        fsync=fsync,
        batch_size=_positive_int("batch_size", value.get("batch_size", 256)),
        batch_interval_ms=_positive_int(
            "batch_interval_ms", value.get("batch_interval_ms", 200), zero=True
        ),
        hmac_key_env=_opt_str("hmac_key_env", value.get("hmac_key_env")),
        hmac_key_file=_opt_str("hmac_key_file", value.get("hmac_key_file")),
        keyed=_keyed(value),
        actor=_opt_str("actor", value.get("actor")),
        digests=_bool("audit.digests", value.get("digests", False)),
        multiprocess=_bool("audit.multiprocess", value.get("multiprocess", False)),
        write_through=_bool("audit.write_through", value.get("write_through", False)),
        processors=_callables("processors", value.get("processors")),
        destinations=_callables("destinations", value.get("destinations")),
    )


def convert_task_option(value: Any) -> dict[str, Any]:
    """Validate the ``audit=`` task option: ``True`` or a mapping of operation/tenant_id/digests."""
    if value is True:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(
            f"expected True or a mapping like {{'operation': 'data_storage'}}, got {value!r}"
        )
    allowed = ("operation", "tenant_id", "digests")
    unknown = [k for k in value if k not in allowed]
    if unknown:
        raise ValueError(f"unknown audit option(s) {unknown}; expected some of {list(allowed)}")
    for k in ("operation", "tenant_id"):
        v = value.get(k)
        if v is not None and (not isinstance(v, str) or not v):
            raise ValueError(f"audit {k} must be a non-empty string, got {v!r}")
    if "digests" in value and not isinstance(value["digests"], bool):
        raise ValueError(f"audit digests must be true or false, got {value['digests']!r}")
    return dict(value)


def _resolve(item: Any) -> Any:
    if callable(item):
        return item
    module, _, attr = str(item).partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"audit: cannot import {item!r}: {exc}", key="audit") from exc
    if not callable(obj):
        raise ConfigError(f"audit: {item!r} is not callable", key="audit")
    return obj


def _keyed(value: Mapping[str, Any]) -> bool:
    keyed = _bool("audit.keyed", value.get("keyed", True))
    if not keyed and (value.get("hmac_key_env") or value.get("hmac_key_file")):
        raise ValueError("audit.keyed is false but an HMAC key is configured; drop one of them")
    return keyed


def load_key(settings: AuditSettings) -> bytes | None:
    """The HMAC key named by ``hmac_key_env`` or ``hmac_key_file``; else, unless
    ``keyed: false``, the default key file (created 0600 outside the data folder)."""
    if settings.hmac_key_env and settings.hmac_key_file:
        raise ConfigError("audit: give either hmac_key_env or hmac_key_file, not both", key="audit")
    if settings.hmac_key_env:
        value = os.environ.get(settings.hmac_key_env)
        if not value:
            raise ConfigError(
                f"audit.hmac_key_env: environment variable {settings.hmac_key_env!r} is not "
                "set or empty (it must hold the trail's HMAC key)",
                key="audit.hmac_key_env",
            )
        return value.encode()
    if settings.hmac_key_file:
        try:
            data = Path(settings.hmac_key_file).expanduser().read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise ConfigError(
                f"audit.hmac_key_file: cannot read {settings.hmac_key_file!r}: {exc.strerror}",
                key="audit.hmac_key_file",
            ) from exc
        if not data:
            raise ConfigError(
                f"audit.hmac_key_file: {settings.hmac_key_file!r} is empty",
                key="audit.hmac_key_file",
            )
        return data
    if settings.keyed:
        return default_key(create=True)
    return None


def os_user() -> str:
    """The current OS user name (the uid when there is no name)."""
    try:
        return getpass.getuser()
    except Exception:
        return f"uid:{os.getuid()}" if hasattr(os, "getuid") else "unknown"


def error_class(exc: BaseException | None) -> str | None:
    """``ValueError`` for builtins, ``package.module.Class`` otherwise (never the message)."""
    if exc is None:
        return None
    cls = type(exc)
    mod = cls.__module__
    return cls.__qualname__ if mod == "builtins" else f"{mod}.{cls.__qualname__}"


_second: tuple[int, str] = (-1, "")


def now_iso() -> str:
    """The current UTC time, ISO-8601 with microseconds (``2024-05-01T12:00:00.123456+00:00``)."""
    global _second
    t = time.time()
    sec = int(t)
    cached = _second
    if cached[0] != sec:
        cached = (sec, datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
        _second = cached
    return f"{cached[1]}.{int((t - sec) * 1e6):06d}+00:00"


class _RunState:
    """Per-run constants and per-task metadata, computed once in ``before_pipeline``."""

    __slots__ = ("actor", "attempts", "digests", "meta", "pipeline", "run_id", "tenant")

    def __init__(self, plugin: AuditPlugin, run: Any) -> None:
        self.actor = run.principal or plugin.actor
        self.pipeline = run.pipeline_name
        self.run_id = run.run_id
        self.tenant = run.tenant_id
        self.attempts: dict[str, int] = {}
        self.digests = plugin.settings.digests
        self.meta: dict[str, tuple[str | None, str | None, bool]] = {}
        for task in run.plan.tasks:
            self.meta[task.name] = self.task_meta(task, run)

    def task_meta(self, task: Any, run: Any) -> tuple[str | None, str | None, bool]:
        opt = task.options.get("audit") or {}
        if opt is True:
            opt = {}
        tenant = opt.get("tenant_id") or run.tenant_of(task)
        return tenant, opt.get("operation"), bool(opt.get("digests", self.digests))


class _Recorder:
    """The per-run and per-task hooks, registered only when auditing is on (so an
    unconfigured audit plugin adds no hook calls to a run)."""

    def __init__(self, plugin: AuditPlugin) -> None:
        self._plugin = plugin

    def _base(self, st: _RunState, action: str, outcome: str | None) -> dict[str, Any]:
        return {
            "ts": now_iso(),
            "actor": st.actor,
            "tenant": st.tenant,
            "pipeline": st.pipeline,
            "run_id": st.run_id,
            "task": None,
            "action": action,
            "outcome": outcome,
            "error_class": None,
        }

    @hookimpl(tryfirst=True)
    def before_pipeline(self, run: Any) -> None:
        st = _RunState(self._plugin, run)
        run.stash["audit"] = st
        rec = self._base(st, "run.started", "started")
        rec["tasks"] = len(run.plan.tasks)
        self._plugin.writer().append(rec)

    @hookimpl(tryfirst=True)
    def after_pipeline(self, run: Any, result: Any) -> None:
        st = run.stash.get("audit")
        if st is None:  # refused by a validator before before_pipeline
            st = _RunState(self._plugin, run)
        refused = result.status == "refused"
        rec = self._base(st, "run.refused" if refused else "run.finished", result.status)
        rec["error_class"] = error_class(result.error)
        if not refused:
            by_status = getattr(result.tasks, "by_status", None)
            if by_status is not None:
                counts = {s.value: len(by_status(s)) for s in _TERMINAL}
                rec["counts"] = {k: v for k, v in counts.items() if v}
            rec["duration_ms"] = round((result.finished - result.started) * 1000, 3)
        trail = self._plugin.writer()
        trail.append(rec)
        trail.sync()

    @hookimpl(tryfirst=True)
    def before_task(self, task: Any, run: Any, inputs: tuple[Any, ...]) -> None:
        st = run.stash.get("audit")
        if st is None:
            return
        name = task.name
        attempts = st.attempts
        n = attempts.get(name, 0) + 1
        attempts[name] = n
        meta = st.meta.get(name) or st.task_meta(task, run)
        rec = {
            "ts": now_iso(),
            "actor": st.actor,
            "tenant": meta[0],
            "pipeline": st.pipeline,
            "run_id": st.run_id,
            "task": name,
            "action": "task.started",
            "outcome": "started",
            "error_class": None,
            "attempt": n,
        }
        if meta[1] is not None:
            rec["operation"] = meta[1]
        if meta[2]:
            rec["input_digest"] = digest(inputs, self._plugin.key)
        # Guarantee (a): the body starts only once this record is in the file (write(2)
        # returned); fsync stays governed by audit.fsync.
        self._plugin.writer().append(rec, wait=True)

    # trylast: the outcome is recorded after the other observers ran, so what they
    # computed for it (the classification level of the output) is in the record.
    @hookimpl(trylast=True)
    def after_task(self, task: Any, run: Any, outcome: Any) -> None:
        st = run.stash.get("audit")
        if st is None:
            return
        meta = st.meta.get(task.name) or st.task_meta(task, run)
        err = outcome.error
        rec = {
            "ts": now_iso(),
            "actor": st.actor,
            "tenant": meta[0],
            "pipeline": st.pipeline,
            "run_id": st.run_id,
            "task": task.name,
            "action": "task.finished",
            "outcome": outcome.status.value,
            "error_class": None if err is None else error_class(err),
            "attempt": outcome.attempt,
        }
        if meta[1] is not None:
            rec["operation"] = meta[1]
        if not outcome.final:
            rec["retrying"] = True
        if err is None and outcome.status.value == "succeeded":
            if meta[2]:
                rec["output_digest"] = digest(outcome.output, self._plugin.key)
            # The classification plugin (when present) leaves each output's level here,
            # from its tryfirst after_task; record the level, never the data.
            levels = run.stash.get("classification")
            if levels is not None:
                entry = levels.get("outputs", {}).get(task.name)
                if entry:
                    rec["classification"] = entry["level"]
                    if entry.get("detected"):
                        rec["pii_detected"] = sorted(entry["detected"])
        self._plugin.writer().append(rec)


class _DirectCalls:
    """``audit_everything``: audit direct calls of every ``@pipeline.task`` function."""

    def __init__(self, plugin: AuditPlugin) -> None:
        self.plugin = plugin

    def begin(
        self, pipeline: str, task: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Any
    ) -> Any:
        if not self.plugin.enabled or getattr(fn, "__xlib_audited__", False):
            return None  # off, or pm.audit_log already audits this function's calls
        options = task_options(fn)
        label = options.get("audit") or {}
        function = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"
        return self.plugin.call_started(
            function.removesuffix(".__wrapped__"),
            options.get("tenant_id"),
            label.get("operation"),
            label.get("digests"),
            args,
            kwargs,
            pipeline=pipeline,
            task=task,
        )

    def end(self, token: Any, result: Any, error: BaseException | None) -> None:
        if token is not None:
            self.plugin.call_finished(token, result, error)


class AuditPlugin:
    """Tamper-evident audit trail of every run, task attempt and audited call.

    Inert unless one of the config keys ``audit``, ``audit_logging``, ``audit_everything``
    or the core's ``compliance_mode`` turns it on. ``path`` is the trail file (``None`` when off).
    """

    name = "audit"

    def __init__(self) -> None:
        self.enabled = False
        self.settings = AuditSettings(enabled=False)
        self.path: Path | None = None
        self.key: bytes | None = None
        self.actor: str = ""
        self._trail: AuditTrail | None = None
        self._recorder: _Recorder | None = None
        self._manager: Any = None
        self._stop_observing: Callable[[], None] | None = None

    # -- collectors -------------------------------------------------------------------------

    @hookimpl
    def register_config_keys(self) -> Iterable[ConfigKey]:
        flag_doc = (
            "true turns the audit trail on with defaults (data_dir()/audit.jsonl, fsync batch)."
        )
        return (
            ConfigKey(
                name="audit",
                convert=convert_section,
                doc="Audit trail settings: true, or {path, fsync: always|batch|never, "
                "batch_size, batch_interval_ms, write_through, hmac_key_env, hmac_key_file, "
                "actor, digests, multiprocess, processors, destinations}.",
            ),
            *(
                ConfigKey(name=k, convert=functools.partial(_bool, k), doc=flag_doc)
                for k in FLAG_KEYS
            ),
        )

    @hookimpl
    def register_task_options(self) -> Iterable[TaskOption]:
        return (
            TaskOption(
                name="audit",
                convert=convert_task_option,
                doc="Audit labels for the task's records: {'operation': ..., 'tenant_id': ..., "
                "'digests': bool}; pm.audit_log(...) sets it.",
            ),
        )

    @hookimpl
    def register_manager_decorators(self) -> Iterable[ManagerDecorator]:
        return (
            ManagerDecorator(
                name="audit_log",
                factory=self._audit_log,
                doc="pm.audit_log(tenant_id=None, operation=None, digests=None): label a task "
                "(or audit direct calls of a function) in the audit trail.",
            ),
        )

    @hookimpl
    def register_cli_commands(self) -> Iterable[CliCommand]:
        from ._cli import add_arguments, run

        return (
            CliCommand(
                name="audit",
                help="verify or show an audit trail",
                add_arguments=add_arguments,
                run=run,
            ),
        )

    # -- lifecycle --------------------------------------------------------------------------

    @hookimpl
    def configure(self, manager: Any, config: Any) -> None:
        self._manager = manager
        section = config.get("audit") if config.given("audit") else None
        flags = [k for k in FLAG_KEYS if config.given(k) and config.get(k)]
        if section is not None and not section.enabled:
            if flags:
                raise ConfigError(
                    f"config says audit: false but {flags[0]}: true, which needs the audit "
                    "trail; drop one of them",
                    key="audit",
                )
            self._explicitly_off = True
            return
        if section is None and not flags:
            return
        self._enable(manager, config, section or AuditSettings())

    def _enable(self, manager: Any, config: Any, settings: AuditSettings) -> None:
        """Turn the trail on with ``settings`` and register the per-task recorder."""
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
        self._processors = tuple(_resolve(p) for p in settings.processors)
        self._destinations = tuple(_resolve(d) for d in settings.destinations)
        self.enabled = True
        recorder = _Recorder(self)
        self._recorder = recorder
        manager.register(recorder, name="audit.recorder")
        if config.get("audit_everything") and self._stop_observing is None:
            # audit_everything: direct calls of every task function are audited too.
            self._stop_observing = observe_direct_calls(_DirectCalls(self))

    @hookimpl
    def close(self, manager: Any) -> None:
        stop, self._stop_observing = self._stop_observing, None
        if stop is not None:
            stop()
        trail, self._trail = self._trail, None
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
            s = self.settings
            trail = open_trail(
                self.path,
                fsync=s.fsync,
                batch_size=s.batch_size,
                batch_interval_ms=s.batch_interval_ms,
                write_through=s.write_through,
                key=self.key,
                multiprocess=s.multiprocess,
                processors=self._processors,
                destinations=self._destinations,
            )
            self._trail = trail
        return trail

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

    # -- pm.audit_log ---------------------------------------------------------------------

    def _audit_log(
        self,
        manager: Any,
        tenant_id: str | None = None,
        operation: str | None = None,
        digests: bool | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        opt: dict[str, Any] = {}
        if operation is not None:
            opt["operation"] = operation
        if digests is not None:
            opt["digests"] = digests
        convert_task_option(opt)
        if tenant_id is not None and (not isinstance(tenant_id, str) or not tenant_id):
            raise ValueError(f"audit_log: tenant_id must be a non-empty string, got {tenant_id!r}")
        if not self.enabled and not getattr(self, "_explicitly_off", False):
            # pm.audit_log asks for auditing: never ignore it silently. With no audit config
            # the trail opens with its embedded defaults (data_dir()/audit.jsonl).
            self._enable(manager, manager.config, AuditSettings())
        options: dict[str, Any] = {"audit": opt}
        if tenant_id is not None:
            options["tenant_id"] = tenant_id
        plugin = self

        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            function = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"

            def call_wrapper(inner: Callable[..., Any]) -> Callable[..., Any]:
                def audited(*args: Any, **kwargs: Any) -> Any:
                    if not plugin.enabled:
                        return inner(*args, **kwargs)
                    return plugin._audited_call(
                        inner, args, kwargs, function, tenant_id, operation, digests
                    )

                audited.__xlib_audited__ = True  # type: ignore[attr-defined]
                return audited

            return with_options(fn, options, call_wrapper=call_wrapper)

        return decorator

    def _audited_call(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        function: str,
        tenant: str | None,
        operation: str | None,
        digests: bool | None,
    ) -> Any:
        state = self.call_started(function, tenant, operation, digests, args, kwargs)
        try:
            out = fn(*args, **kwargs)
        except BaseException as exc:
            self.call_finished(state, None, exc)
            raise
        self.call_finished(state, out, None)
        return out

    def call_started(
        self,
        function: str,
        tenant: str | None,
        operation: str | None,
        digests: bool | None,
        args: tuple[Any, ...],
        kwargs: Any,
        *,
        pipeline: str | None = None,
        task: str | None = None,
    ) -> tuple[dict[str, Any], bool, float]:
        """Write (and flush) the ``call.started`` record of a direct call."""
        trail = self.writer()
        use_digests = self.settings.digests if digests is None else digests
        base = {
            "actor": self.actor,
            "tenant": tenant,
            "pipeline": pipeline,
            "run_id": None,
            "task": task,
            "function": function,
            "error_class": None,
        }
        if operation is not None:
            base["operation"] = operation
        start = {**base, "ts": now_iso(), "action": "call.started", "outcome": "started"}
        if use_digests:
            start["input_digest"] = digest((args, kwargs), self.key)
        trail.append(start, wait=True)  # in the file before the call runs, like a task
        return base, use_digests, time.perf_counter()

    def call_finished(
        self, state: tuple[dict[str, Any], bool, float], out: Any, exc: BaseException | None
    ) -> None:
        """Write (and sync) the ``call.finished`` record of a direct call."""
        base, use_digests, t0 = state
        end: dict[str, Any] = {
            **base,
            "ts": now_iso(),
            "action": "call.finished",
            "outcome": "failed" if exc is not None else "succeeded",
            "duration_ms": round((time.perf_counter() - t0) * 1000, 3),
        }
        if exc is not None:
            end["error_class"] = error_class(exc)
        elif use_digests:
            end["output_digest"] = digest(out, self.key)
        trail = self.writer()
        trail.append(end)
        trail.sync()  # and synced when it ends, as a run is
