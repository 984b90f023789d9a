"""The typed hook facade: one method per hook, one place where failures are attributed.

The core calls every hook through :class:`Hooks` (``manager.hooks``). It knows which hooks
have implementations, so the scheduler skips empty ones on its hot path, and turns an
exception raised inside a plugin into an error that names the plugin and the hook.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NoReturn

import attrs
import pluggy

from ._dispatch import DIRECT, Direct, _blame, direct_calls
from ._records import (
    CliCommand,
    ConfigKey,
    EvidenceSection,
    ExecutorSpec,
    Isolation,
    ManagerDecorator,
    PayloadRef,
    RenderTarget,
    RetryDecision,
    RunContext,
    RunOption,
    StreamConnector,
    TaskOption,
    TaskOutcome,
    flatten,
)
from .exceptions import PipelineError, PluginError
from .hookspecs import HOOK_NAMES

if TYPE_CHECKING:  # pragma: no cover
    from ._blobs import StreamOpener, StreamSealer
    from ._config import Config
    from ._results import PipelineResult
    from ._scopes import TaskScope
    from ._signals import ComplianceEvent, MetricSample
    from ._task import Pipeline, Task


class Hooks:
    """The typed facade over one plugin manager's hooks: one method per hook.

    Every call goes through :meth:`_invoke` (pluggy underneath) and every failure through
    :func:`_blame`, which names the plugin and the hook. The per-task hooks
    (``before_task``, ``after_task``, ``task_scope``) and the payload providers
    (``encrypt``, ``decrypt``, once per stored output) call their implementations directly
    when pluggy's dispatch adds nothing (no wrapper, no tracing): pluggy's per-call cost was
    about 7 µs per hook per task, as much as a plugin's own work. Built again whenever the
    manager registers a plugin; a run keeps the facade it started with.
    """

    def __init__(self, pm: pluggy.PluginManager, *, direct: bool = True) -> None:
        self._pm = pm
        self._h = pm.hook
        #: Which hooks have implementations, so callers skip empty ones on hot paths.
        self.has: dict[str, bool] = {
            name: bool(getattr(pm.hook, name).get_hookimpls()) for name in HOOK_NAMES
        }
        self._codes: dict[types.CodeType, str] | None = None
        #: Answers derived from this facade's plugins by their users, kept as long as the
        #: facade (a run keeps the one it started with; a registration builds a new one).
        self.memo: dict[str, Any] = {}
        self.owners: dict[str, dict[str, str]] = {}
        self._direct: dict[str, tuple[Direct, ...] | None] = {
            hook: (direct_calls(pm, hook) if direct and self.has[hook] else None) for hook in DIRECT
        }

    def _call_direct(
        self, hook: str, calls: tuple[Direct, ...], args: tuple[Any, ...], first: bool = False
    ) -> Any:
        """Call ``calls`` in order with ``args`` (the hook's arguments in spec order) as
        pluggy's ``_multicall`` would: the non-None results in a list, or with ``first``
        (pluggy's ``firstresult``) the first non-None result, else ``None``. The first error
        is raised, attributed as :meth:`_invoke` attributes it."""
        results: list[Any] = []
        for fn, pick, plugin in calls:
            try:
                res = fn(*args) if pick is None else fn(*[args[k] for k in pick])
            except Exception as exc:
                self._reraise(exc, hook, plugin)
            if res is not None:
                if first:
                    return res
                results.append(res)
        return None if first else results

    def _call_each(self, hook: str, calls: tuple[Direct, ...], args: tuple[Any, ...]) -> None:
        """:meth:`_call_direct` for a hook whose answers nobody reads (``before_task``,
        ``after_task``, the per-run notifications): no list of results is built."""
        for fn, pick, plugin in calls:
            try:
                if pick is None:
                    fn(*args)
                else:
                    fn(*[args[k] for k in pick])
            except Exception as exc:
                self._reraise(exc, hook, plugin)

    def _notify(self, hook: str, args: tuple[Any, ...]) -> None:
        """:meth:`_per_run` for a notification (its answers are not read)."""
        calls = self._direct[hook]
        if calls is not None:
            self._call_each(hook, calls, args)
        elif self.has[hook]:
            self._invoke(hook, dict(zip(DIRECT[hook], args, strict=True)))

    def _per_run(self, hook: str, args: tuple[Any, ...], first: bool = False) -> Any:
        """Call a per-run hook (:data:`~._dispatch.PER_RUN`) with ``args`` in spec order:
        directly when pluggy's dispatch adds nothing, else through pluggy; ``None`` when no
        plugin implements it."""
        calls = self._direct[hook]
        if calls is not None:
            return self._call_direct(hook, calls, args, first)
        if self.has[hook]:
            return self._invoke(hook, dict(zip(DIRECT[hook], args, strict=True)))
        return None

    def _reraise(self, exc: Exception, hook: str, plugin: str) -> NoReturn:
        """Raise ``exc`` attributed to the plugin whose code raised it (else ``plugin``), as
        :meth:`_invoke` attributes errors; called only on the error path."""
        err = _blame(exc, hook, self._owner_of(exc) or plugin)
        if err is exc:
            raise exc
        raise err from exc

    @property
    def pluggy(self) -> pluggy.PluginManager:
        """The underlying pluggy manager."""
        return self._pm

    # -- the one way in ----------------------------------------------------------------------

    def _owner_of(self, exc: BaseException) -> str | None:
        """The plugin whose implementation is the innermost hook frame of ``exc``."""
        if self._codes is None:
            codes: dict[types.CodeType, str] = {}
            for name, plugin in self._pm.list_name_plugin():
                if plugin is None:
                    continue
                for hc in self._pm.get_hookcallers(plugin) or ():
                    for impl in hc.get_hookimpls():
                        if impl.plugin is plugin:
                            code = getattr(impl.function, "__code__", None)
                            if code is not None:
                                codes[code] = name
            self._codes = codes
        tb = exc.__traceback__
        owner = None
        while tb is not None:
            found = self._codes.get(tb.tb_frame.f_code)
            if found is not None:
                owner = found
            tb = tb.tb_next
        return owner

    def _invoke(self, hook: str, kwargs: dict[str, Any], impl: Any = None) -> Any:
        """Call ``hook`` (or one implementation of it) with keywords; attribute failures."""
        try:
            if impl is not None:
                return impl.function(**{a: kwargs.get(a) for a in impl.argnames})
            return getattr(self._h, hook)(**kwargs)
        except Exception as exc:
            owner = impl.plugin_name if impl is not None else self._owner_of(exc)
            err = _blame(exc, hook, owner)
            if err is exc:
                raise
            raise err from exc

    def _collect(self, hook: str, key: Callable[[Any], str] = lambda r: r.name) -> dict[str, Any]:
        """Call a collector hook and merge its records by ``key``, rejecting duplicates."""
        out: dict[str, Any] = {}
        owners: dict[str, str] = {}
        for impl in reversed(getattr(self._h, hook).get_hookimpls()):  # registration order
            records = flatten([self._invoke(hook, {}, impl)])
            for record in records:
                k = key(record)
                if k in out:
                    raise PluginError(
                        f"{hook}: {k!r} is registered by both plugin {owners[k]!r} and "
                        f"plugin {impl.plugin_name!r}",
                        plugin=impl.plugin_name,
                        hook=hook,
                    )
                out[k] = record
                owners[k] = impl.plugin_name
        self.owners[hook] = owners
        return out

    def owner(self, hook: str, name: str) -> str | None:
        """Which plugin registered ``name`` through collector ``hook``."""
        return self.owners.get(hook, {}).get(name)

    # -- collectors ---------------------------------------------------------------------------

    def register_config_keys(self) -> dict[str, ConfigKey]:
        """Every plugin's config keys, by name."""
        return self._collect("register_config_keys")

    def register_task_options(self) -> dict[str, TaskOption]:
        """Every plugin's task options, by name."""
        return self._collect("register_task_options")

    def register_run_options(self) -> dict[str, RunOption]:
        """Every plugin's run options, by name."""
        return self._collect("register_run_options")

    def register_executors(self) -> dict[str, ExecutorSpec]:
        """Every plugin's executors, by name."""
        return self._collect("register_executors")

    def register_manager_decorators(self) -> dict[str, ManagerDecorator]:
        """Every plugin's ``pm.<name>`` decorators, by name."""
        return self._collect("register_manager_decorators")

    def register_render_targets(self) -> dict[str, RenderTarget]:
        """Every plugin's render targets, by name."""
        return self._collect("register_render_targets")

    def register_cli_commands(self) -> dict[str, CliCommand]:
        """Every plugin's CLI commands, by name."""
        return self._collect("register_cli_commands")

    def register_stream_connectors(self) -> dict[str, StreamConnector]:
        """Every stream source/sink connector, by URL scheme."""
        return self._collect("register_stream_connectors", key=lambda c: c.scheme)

    def collect_evidence(
        self, *, manager: Any, run_id: str, run: RunContext | None
    ) -> list[EvidenceSection]:
        """Every plugin's section of run ``run_id``'s evidence, sorted by section name.

        Two plugins answering the same section name is a :class:`PluginError` naming both.
        """
        if not self.has["collect_evidence"]:
            return []
        kwargs = {"manager": manager, "run_id": run_id, "run": run}
        found: dict[str, EvidenceSection] = {}
        owners: dict[str, str] = {}
        for impl in reversed(self._h.collect_evidence.get_hookimpls()):  # registration order
            section = self._invoke("collect_evidence", kwargs, impl)
            if section is None:
                continue
            if not isinstance(section, EvidenceSection):
                raise PluginError(
                    f"collect_evidence: plugin {impl.plugin_name!r} answered "
                    f"{type(section).__name__}, expected an EvidenceSection or None",
                    plugin=impl.plugin_name,
                    hook="collect_evidence",
                )
            if section.name in found:
                raise PluginError(
                    f"collect_evidence: section {section.name!r} is answered by both plugin "
                    f"{owners[section.name]!r} and plugin {impl.plugin_name!r}",
                    plugin=impl.plugin_name,
                    hook="collect_evidence",
                )
            found[section.name] = section
            owners[section.name] = impl.plugin_name
        return [found[k] for k in sorted(found)]

    # -- lifecycle and validators ----------------------------------------------------------------

    def configure(self, *, manager: Any, config: Config) -> None:
        """Let every plugin configure itself (and register its runtime objects)."""
        self._invoke("configure", {"manager": manager, "config": config})

    def prepare_run(
        self,
        *,
        manager: Any,
        pipeline: Pipeline,
        tasks: tuple[Task, ...],
        options: Mapping[str, Any],
    ) -> None:
        """Let plugins register what a run's task or run options need."""
        self._notify("prepare_run", (manager, pipeline, tasks, options))

    def close(self, *, manager: Any) -> None:
        """Let every plugin release what it holds."""
        self._invoke("close", {"manager": manager})

    def validate_pipeline(self, *, pipeline: Pipeline, run: RunContext) -> None:
        """Raise when a plugin refuses the run."""
        self._notify("validate_pipeline", (pipeline, run))

    def check_access(
        self, *, principal: str | None, permission: str, tenant: str | None, action: str
    ) -> None:
        """Raise ``SecurityError`` when a plugin denies ``principal`` the ``action``."""
        if self.has["check_access"]:
            self._invoke(
                "check_access",
                {
                    "principal": principal,
                    "permission": permission,
                    "tenant": tenant,
                    "action": action,
                },
            )

    # -- providers -------------------------------------------------------------------------------

    def resolve_principal(self, *, principal: str | None, config: Config) -> str | None:
        """The effective principal (the given one when no plugin answers)."""
        if not self.has["resolve_principal"]:
            return principal
        found = self._per_run("resolve_principal", (principal, config), True)
        return principal if found is None else str(found)

    def select_executor(self, *, run: RunContext) -> str | None:
        """The executor a plugin chose for the run, or ``None``."""
        if not self.has["select_executor"]:
            return None
        found = self._per_run("select_executor", (run,), True)
        return None if found is None else str(found)

    def isolate(self, *, task: Task, run: RunContext) -> Isolation | None:
        """Where and under what limits ``task`` runs (``None``: the run's executor)."""
        found: Isolation | None = self._invoke("isolate", {"task": task, "run": run})
        return found

    def encrypt(self, *, data: bytes, ref: PayloadRef) -> bytes:
        """Payload bytes as stored (the core's pass-through answers last)."""
        calls = self._direct["encrypt"]
        if calls is not None:
            found: bytes = self._call_direct("encrypt", calls, (data, ref), True)
            return found
        out: bytes = self._invoke("encrypt", {"data": data, "ref": ref})
        return out

    def decrypt(self, *, data: bytes, ref: PayloadRef) -> bytes:
        """Payload bytes as given to ``encrypt`` (the core's pass-through answers last)."""
        calls = self._direct["decrypt"]
        if calls is not None:
            found: bytes = self._call_direct("decrypt", calls, (data, ref), True)
            return found
        out: bytes = self._invoke("decrypt", {"data": data, "ref": ref})
        return out

    def open_run_store(self, *, section: Mapping[str, Any]) -> Any | None:
        """The store a plugin opens for ``section`` (``store: {url: ...}``), or ``None``."""
        if not self.has["open_run_store"]:
            return None
        return self._invoke("open_run_store", {"section": section})

    def encrypt_stream(self, *, ref: PayloadRef) -> StreamSealer | None:
        """A sealer for one blob, or ``None`` (stored in plaintext)."""
        if not self.has["encrypt_stream"]:
            return None
        found: StreamSealer | None = self._invoke("encrypt_stream", {"ref": ref})
        return found

    def decrypt_stream(self, *, header: bytes, ref: PayloadRef) -> StreamOpener | None:
        """An opener for a blob written with ``header`` (``None``: plaintext)."""
        if not self.has["decrypt_stream"]:
            return None
        found: StreamOpener | None = self._invoke("decrypt_stream", {"header": header, "ref": ref})
        return found

    def stream_event(self, *, stream: Any, event: str, info: Mapping[str, Any]) -> None:
        """Tell observers about a stream's start, each committed batch and its end."""
        self._notify("stream_event", (stream, event, info))

    def record_admin_action(
        self, *, action: str, details: Mapping[str, Any], principal: str | None
    ) -> None:
        """Tell observers (the audit trail) about an administrative action on stored data."""
        if self.has["record_admin_action"]:
            self._invoke(
                "record_admin_action",
                {"action": action, "details": details, "principal": principal},
            )

    def may_show_values(
        self, *, task: Task, run: RunContext, value: Any, source: str | None = None
    ) -> bool:
        """Whether an error message may quote ``value`` (``True`` when no plugin answers)."""
        if not self.has["may_show_values"]:
            return True
        found = self._invoke(
            "may_show_values", {"task": task, "run": run, "value": value, "source": source}
        )
        return found is not False

    def redact(self, *, text: str, tenant: str | None = None) -> str:
        """``text`` with sensitive values removed (unchanged when no plugin redacts)."""
        if not self.has["redact"] or not text:
            return text
        found = self._invoke("redact", {"text": text, "tenant": tenant})
        return text if found is None else str(found)

    # -- runs and tasks --------------------------------------------------------------------------

    def before_pipeline(self, *, run: RunContext) -> None:
        """A run is about to start."""
        self._notify("before_pipeline", (run,))

    def after_pipeline(self, *, run: RunContext, result: PipelineResult) -> None:
        """A run ended: every implementation is called, even after one raised (a broken
        audit trail must not keep metrics or alerting from seeing the run end); the first
        error is raised afterwards, attributed to its plugin."""
        if not self.has["after_pipeline"]:
            return
        kwargs = {"run": run, "result": result}
        calls: Any = self._direct["after_pipeline"]
        if calls is None:
            impls = self._h.after_pipeline.get_hookimpls()
            if any(i.hookwrapper or i.wrapper for i in impls):
                self._invoke("after_pipeline", kwargs)
                return
            calls = reversed(impls)  # pluggy's order: tryfirst, then last registered first
        first: PipelineError | None = None
        args = (run, result)
        for call in calls:
            if type(call) is not tuple:  # pluggy's implementation record
                try:
                    self._invoke("after_pipeline", kwargs, call)
                except PipelineError as exc:
                    first = first or exc
                continue
            fn, pick, plugin = call  # a direct call (see _dispatch): attributed as _invoke
            try:
                fn(*args) if pick is None else fn(*[args[k] for k in pick])
            except Exception as exc:
                first = first or _blame(exc, "after_pipeline", plugin)
        if first is not None:
            raise first

    def on_compliance_event(self, *, event: ComplianceEvent) -> None:
        """Tell observers (metrics, alerting) about a compliance finding or refusal."""
        if self.has["on_compliance_event"]:
            self._invoke("on_compliance_event", {"event": event})

    def collect_metrics(self) -> list[MetricSample]:
        """Every plugin's own metric samples right now (read by a metrics exporter)."""
        if not self.has["collect_metrics"]:
            return []
        return flatten(self._invoke("collect_metrics", {}))

    def task_scope(self, *, task: Task, run: RunContext) -> tuple[TaskScope, ...]:
        """The scopes to enter around an attempt's body (every non-None answer)."""
        calls = self._direct["task_scope"]
        if calls is not None:
            return tuple(self._call_direct("task_scope", calls, (task, run)))
        answers = self._invoke("task_scope", {"task": task, "run": run})
        return tuple(a for a in answers if a is not None)

    def before_task(self, *, task: Task, run: RunContext, inputs: tuple[Any, ...]) -> None:
        """A task is about to run with ``inputs`` (raising refuses it)."""
        calls = self._direct["before_task"]
        if calls is not None:
            self._call_each("before_task", calls, (task, run, inputs))
            return
        self._invoke("before_task", {"task": task, "run": run, "inputs": inputs})

    def after_task(self, *, task: Task, run: RunContext, outcome: TaskOutcome) -> None:
        """An attempt of a task reached an outcome."""
        calls = self._direct["after_task"]
        if calls is not None:
            self._call_each("after_task", calls, (task, run, outcome))
            return
        self._invoke("after_task", {"task": task, "run": run, "outcome": outcome})

    def lane_idle(self, *, run: RunContext) -> None:
        """A lane of ``run`` found no ready work and is about to wait."""
        self._notify("lane_idle", (run,))

    def on_task_error(
        self, *, task: Task, run: RunContext, outcome: TaskOutcome
    ) -> RetryDecision | None:
        """The reduced retry decision: any veto wins, else the longest delay asked for; its
        ``max_attempts`` is the smallest bound any retrying answer gave."""
        answers = self._invoke("on_task_error", {"task": task, "run": run, "outcome": outcome})
        chosen: RetryDecision | None = None
        bound: int | None = None
        for a in answers or ():
            if a is None:
                continue
            if not a.retry:
                return None
            if a.max_attempts is not None and (bound is None or a.max_attempts < bound):
                bound = a.max_attempts
            if chosen is None or a.delay > chosen.delay:
                chosen = a
        if chosen is not None and chosen.max_attempts != bound:
            chosen = attrs.evolve(chosen, max_attempts=bound)
        return chosen
