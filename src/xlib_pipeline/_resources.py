"""What a :class:`~xlib_pipeline.PipelineManager` holds for its runs: warm executors, the
run store, and the access checks every read of stored data goes through."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

from ._config import Config
from ._graph import suggest
from ._hooks import Hooks
from ._plugins import package_for
from ._records import Executor, ExecutorSpec
from ._store import RunRecord, RunStore, TaskRecord, store_section
from .exceptions import (
    ConfigError,
    MissingPluginConfigError,
    MissingPluginError,
    PipelineError,
    PluginError,
    SettingWithoutEffectWarning,
)


class ManagerResources:
    """Executors, the run store and access checks (a part of ``PipelineManager``)."""

    config: Config
    hooks: Hooks
    _executors: dict[str, Executor]
    _exec_lock: threading.RLock
    _executor_specs: Mapping[str, ExecutorSpec]
    _store: RunStore | None
    _store_lock: threading.Lock
    _store_needed: str | None
    _warned: set[str]

    # -- executors ---------------------------------------------------------------------------

    def _check_executor_name(self) -> None:
        """An unknown ``executor`` is refused when the manager is built, not at a run."""
        name = self.config.core.executor
        if name in self._executor_specs:
            return
        if name == "dask":
            raise MissingPluginConfigError("executor", package_for("dask"))
        hint = suggest(name, self._executor_specs)
        raise ConfigError(
            f"config key 'executor': unknown executor {name!r}"
            + (f"; did you mean {hint!r}?" if hint else "")
            + f" (registered: {', '.join(sorted(self._executor_specs))})",
            key="executor",
            suggestion=hint,
        )

    def executor(self, name: str) -> Executor:
        """The executor registered as ``name`` (built once per manager, kept warm)."""
        ex = self._executors.get(name)
        if ex is not None:
            return ex
        with self._exec_lock:
            ex = self._executors.get(name)
            if ex is None:
                spec = self._executor_specs.get(name)
                if spec is None:
                    if name == "dask":
                        raise MissingPluginError("the 'dask' executor", package_for("dask"))
                    hint = suggest(name, self._executor_specs)
                    extra = f"; did you mean {hint!r}?" if hint else ""
                    raise ConfigError(
                        f"unknown executor {name!r}; registered: "
                        f"{sorted(self._executor_specs)}{extra}",
                        key="executor",
                        suggestion=hint,
                    )
                try:
                    ex = spec.factory(self)
                except PipelineError:
                    raise
                except Exception as exc:
                    owner = self.hooks.owner("register_executors", name)
                    raise PluginError(
                        f"plugin {owner!r} failed to build executor {name!r}: "
                        f"{type(exc).__name__}: {exc}",
                        plugin=owner,
                        hook="register_executors",
                    ) from exc
                self._executors[name] = ex
        return ex

    def _record_outputs(self) -> bool:
        section = self.config.get("store")
        return True if section is None else bool(section["record_outputs"])

    def require_store(self, reason: str) -> None:
        """A plugin needs this manager's runs recorded (``reason`` names the setting, e.g.
        ``security.encryption_at_rest``): with no ``store`` configured, runs go to the
        embedded default store, ``data_dir()/runs.sqlite``. With ``store: false`` nothing
        can be recorded: warn once (:class:`SettingWithoutEffectWarning`) naming ``reason``.
        """
        if self.config.given("store"):
            if self.config.get("store") is None and reason not in self._warned:
                self._warned.add(reason)
                warnings.warn(
                    f"{reason} has no effect: config says store: false, so no run output is "
                    f"stored (nothing to protect). Remove store: false to record runs in "
                    f"the embedded default store, or drop {reason}.",
                    SettingWithoutEffectWarning,
                    stacklevel=3,
                )
            return
        if self._store_needed is None:
            self._store_needed = reason

    @property
    def store(self) -> RunStore | None:
        """The run store: config ``store`` (``true`` or no ``path`` means the default file),
        else the embedded default when a plugin requires one (:meth:`require_store`), else
        ``None``. Opened on first use."""
        section = self.config.get("store")
        if section is None:
            if self._store_needed is None or self.config.given("store"):
                return None
            section = store_section(True)
        if self._store is None:
            with self._store_lock:
                if self._store is None:
                    self._store = self._open_store(section)
        return self._store

    def _open_store(self, section: Mapping[str, Any]) -> RunStore:
        if "url" not in section:
            return RunStore(
                section["path"],
                synchronous=section["synchronous"],
                busy_timeout_ms=section["busy_timeout_ms"],
                blobs=section["blobs"],
            )
        opened: RunStore | None = self.hooks.open_run_store(section=section)
        if opened is None:
            scheme = str(section["url"]).split("://", 1)[0]
            if scheme in ("postgresql", "postgres"):
                # A ConfigError, not MissingPluginError (an AttributeError: raised from the
                # ``store`` property it would fall through to __getattr__).
                package = package_for("postgres")
                raise ConfigError(
                    f"store.url {scheme}://... needs the plugin {package!r}, which is not "
                    f"installed or is disabled: pip install {package}",
                    key="store.url",
                )
            raise ConfigError(
                f"store.url: no installed plugin serves {scheme}:// run stores "
                "(built in: sqlite://PATH; postgresql:// with xlib-pipeline-postgres)",
                key="store.url",
            )
        return opened

    def read_run(
        self, run_id: str, *, principal: str | None = None
    ) -> tuple[RunRecord, dict[str, TaskRecord]]:
        """A stored run and its tasks, once ``principal`` may read every tenant in it.

        Access is decided by :meth:`check_access` (the tenancy plugin's RBAC); outputs stay
        as stored (encrypted under their tenant's key when encryption is on).
        """
        store = self.store
        if store is None:
            raise ConfigError("reading runs needs a run store: configure {'store': {...}}")
        rec = store.get_run(run_id)
        tasks = store.get_tasks(rec.run_id)
        self.check_read_access(rec, tasks.values(), principal=principal)
        return rec, tasks

    def prune_runs(
        self,
        *,
        older_than: float | None = None,
        keep: int | None = None,
        pipeline: str | None = None,
        dry_run: bool = False,
        force: bool = False,
        principal: str | None = None,
    ) -> Any:
        """Delete whole old runs from the store and reclaim the space (see
        :func:`xlib_pipeline._prune.prune_runs`; ``runs prune`` on the command line).

        Returns the :class:`PruneReport`. A prune that deleted something is recorded
        through the ``record_admin_action`` hook (an audit record naming who, which runs
        and how many rows, when audit is on).
        """
        store = self.store
        if store is None:
            raise ConfigError("pruning runs needs a run store: configure {'store': {...}}")
        report = store.prune(
            older_than=older_than, keep=keep, pipeline=pipeline, dry_run=dry_run, force=force
        )
        if not report.dry_run and report.runs:
            who = self.hooks.resolve_principal(principal=principal, config=self.config)
            self.hooks.record_admin_action(
                action="runs.pruned",
                details={
                    "store": str(store.path),
                    "runs": list(report.runs),
                    "rows": report.rows,
                    "reclaimed_bytes": report.reclaimed_bytes,
                    "refused": list(report.refused),
                },
                principal=who,
            )
        return report

    def redact(self, text: str, *, tenant: str | None = None) -> str:
        """``text`` (an error message or a traceback) fit to leave the run: with PII
        detection on (classification plugin), a text in which a detector finds PII comes
        back as a placeholder naming the PII kinds and level, never the values. Lineage
        facets, the CLI's output and alerts pass error texts through here. A text of
        several lines (a traceback) is redacted line by line, so its frames stay readable."""
        hooks = self.hooks
        if not hooks.has["redact"] or not text:
            return text
        if "\n" not in text:
            return hooks.redact(text=text, tenant=tenant)
        return "\n".join(hooks.redact(text=line, tenant=tenant) for line in text.split("\n"))

    def describe_error(self, error: BaseException, *, tenant: str | None = None) -> str:
        """One line for ``error`` fit to leave the run: the task and exception class in
        clear, the message through :meth:`redact`."""
        task = getattr(error, "task", None)
        cause = getattr(error, "cause", None)
        if task is not None and isinstance(cause, BaseException):
            text = self.redact(str(cause), tenant=tenant)
            return f"task {task!r} failed: {type(cause).__name__}: {text}"
        return f"{type(error).__name__}: {self.redact(str(error), tenant=tenant)}"

    def check_access(
        self,
        *,
        permission: str,
        tenant: str | None,
        action: str,
        principal: str | None = None,
    ) -> str | None:
        """Raise ``SecurityError`` unless ``principal`` may ``action`` (``permission`` on
        ``tenant``), as the ``check_access`` hook decides; return the resolved principal.

        Every read of stored data outside a run goes through here (``read_run``, ``runs
        show``/``list``, plugins' commands such as ``keys rotate``). ``principal`` is first
        resolved by the ``resolve_principal`` hook. No implementation allows everything.
        """
        who = self.hooks.resolve_principal(principal=principal, config=self.config)
        self.hooks.check_access(principal=who, permission=permission, tenant=tenant, action=action)
        return who

    def check_read_access(
        self,
        rec: RunRecord,
        tasks: Iterable[TaskRecord] = (),
        *,
        principal: str | None = None,
    ) -> None:
        """Raise SecurityError unless ``principal`` may read the run's tenants' data."""
        tenants = {rec.tenant, *(t.tenant for t in tasks)}
        if len(tenants) > 1:
            tenants.discard(None)
        for tenant in sorted(tenants, key=lambda t: t or ""):
            self.check_access(
                principal=principal,
                permission="read_data",
                tenant=tenant,
                action=f"read run {rec.run_id} of pipeline {rec.pipeline!r}",
            )


def _close_executors(executors: dict[str, Executor]) -> None:
    items = list(executors.values())
    executors.clear()
    for ex in items:
        try:
            ex.close()
        except Exception:  # pragma: no cover - best effort at shutdown
            pass


class _DetachedManager:
    """What a :class:`PipelineManager` becomes inside a worker process: inert.

    Task code may hold a manager (through ``self`` in a closure) but cannot run pipelines
    or load plugins in a worker; any use says so.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config_raw = config

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise PipelineError(
            f"PipelineManager.{name} is not available inside a worker process; "
            "tasks run there by value, without the driver's plugins"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_DetachedManager, (self.config_raw,))
