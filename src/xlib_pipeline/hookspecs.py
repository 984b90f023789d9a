# mypy: disable-error-code="empty-body"
"""The plugin contract: pluggy markers and hook specifications.

Implement hooks on a class, mark them with :data:`hookimpl`, and expose the class through
the ``xlib_pipeline`` entry-point group (or pass an instance in ``PipelineManager(plugins=[...])``).
One instance is made per :class:`~xlib_pipeline.PipelineManager`.

Roles: *observers* (``before_*``/``after_*``) return nothing; *collectors* (``register_*``)
return iterables the core merges, rejecting duplicates; *providers* (``isolate``,
``encrypt``, ``decrypt``, ``select_executor``, ``resolve_principal``) stop at the first
non-None result; the *decision* hook ``on_task_error`` is reduced by a documented rule;
*validators* raise to refuse; *lifecycle* hooks (``configure``, ``prepare_run``) register
the runtime objects a plugin needs.

A method whose name is not a hook here but is marked ``@hookimpl`` is refused when the
plugin is registered, with the closest hook name suggested. The core calls every hook
through its typed facade ``PipelineManager.hooks`` (one method per hook).
Hooks are called in the driver process, possibly from several scheduler threads at once
for different tasks: implementations must be thread-safe.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from ._blobs import StreamOpener, StreamSealer
    from ._config import Config
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
    )
    from ._results import PipelineResult
    from ._scopes import TaskScope
    from ._signals import ComplianceEvent, MetricSample
    from ._task import Pipeline, Task

PROJECT = "xlib_pipeline"
#: The entry-point group plugins are discovered in.
ENTRY_POINT_GROUP = "xlib_pipeline"

hookspec = pluggy.HookspecMarker(PROJECT)
#: Mark a plugin method as a hook implementation: ``@hookimpl`` or ``@hookimpl(trylast=True)``.
hookimpl = pluggy.HookimplMarker(PROJECT)


class HookSpecs:
    """Every hook a plugin may implement."""

    # -- collectors: called once per manager ----------------------------------------------

    @hookspec
    def register_config_keys(self) -> Iterable[ConfigKey]:
        """Collector: config keys this plugin owns (validated by the core, then stored)."""

    @hookspec
    def register_task_options(self) -> Iterable[TaskOption]:
        """Collector: ``@pipeline.task(...)`` keyword options this plugin owns."""

    @hookspec
    def register_run_options(self) -> Iterable[RunOption]:
        """Collector: ``execute_pipeline(...)`` keyword options this plugin owns."""

    @hookspec
    def register_executors(self) -> Iterable[ExecutorSpec]:
        """Collector: executors selectable by name (config ``executor``, ``isolate``)."""

    @hookspec
    def register_manager_decorators(self) -> Iterable[ManagerDecorator]:
        """Collector: decorators exposed as ``pm.<name>(...)`` (``pm.audit_log`` ...)."""

    @hookspec
    def register_render_targets(self) -> Iterable[RenderTarget]:
        """Collector: deployment render targets for ``xlib-pipeline render TARGET``."""

    @hookspec
    def register_cli_commands(self) -> Iterable[CliCommand]:
        """Collector: sub-commands added to the ``xlib-pipeline`` CLI."""

    @hookspec
    def register_stream_connectors(self) -> Iterable[StreamConnector]:
        """Collector: stream sources and sinks by URL scheme (``pm.stream``, CLI ``stream``)."""

    @hookspec
    def collect_evidence(
        self, manager: Any, run_id: str, run: RunContext | None
    ) -> EvidenceSection | None:
        """Collector: this plugin's facts about run ``run_id`` for its signed evidence.

        Called by an evidence plugin (``xlib-pipeline-evidence``) through
        ``manager.hooks.collect_evidence`` at two moments. At the end of a run, from its
        ``after_pipeline``, ``run`` is the run's context: answer from what the plugin holds
        in memory or can read cheaply (the facts are signed into the run's attestation).
        When an evidence pack is built later, ``run`` is ``None``: answer from the plugin's
        own storage and add the files the pack should carry (``audit.jsonl`` ...). Each
        plugin answers one section under its own name, JSON data only, never task data;
        ``None`` means nothing to say about this run.
        """

    # -- lifecycle ---------------------------------------------------------------------------

    @hookspec
    def configure(self, manager: Any, config: Config) -> None:
        """Lifecycle: called once when a manager is built, after its config is validated.

        The pytest idiom: a plugin whose config turns it on registers the runtime objects
        it needs, ``manager.register(Recorder(settings), name="audit.recorder")``. A plugin
        nothing configured registers nothing and so costs nothing per task.
        """

    @hookspec
    def prepare_run(
        self, manager: Any, pipeline: Pipeline, tasks: tuple[Task, ...], options: Mapping[str, Any]
    ) -> None:
        """Lifecycle: called before each run, before the run's hooks are fixed.

        Register (once, idempotently) what the pipeline's task options or the run's options
        need when the config did not already (``classification=`` on a task, say). Runs
        already under way keep the hooks they started with.
        """

    @hookspec(firstresult=True)
    def resolve_principal(self, principal: str | None, config: Config) -> str | None:
        """Provider: who runs (or reads) when ``principal`` was given or not.

        The core calls it before building a run's context and for reads outside a run; the
        answer becomes ``run.principal``. ``None`` keeps the given principal.
        """

    @hookspec(firstresult=True)
    def select_executor(self, run: RunContext) -> str | None:
        """Provider: the executor the run uses by default, instead of ``run.executor``.

        ``run.executor`` holds what the caller and config chose; answer another registered
        executor's name to take the run elsewhere (the dask plugin answers ``"dask"`` for
        ``distributed=True``). The run's context is then rebuilt with the answer (its
        stash carries over). ``None`` keeps it.
        """

    @hookspec
    def close(self, manager: Any) -> None:
        """Observer: called when a manager is closed; release files, pools, clusters."""

    @hookspec
    def validate_pipeline(self, pipeline: Pipeline, run: RunContext) -> None:
        """Validator: raise (e.g. ``ComplianceError``) to refuse a run before any task starts."""

    @hookspec
    def check_access(
        self, principal: str | None, permission: str, tenant: str | None, action: str
    ) -> None:
        """Validator: raise ``SecurityError`` if ``principal`` may not ``action``.

        Called through :meth:`PipelineManager.check_access` for every read of the run store
        outside a run (``runs show``, ``runs list``, ``PipelineManager.read_run``, ``keys
        rotate``) with ``permission="read_data"`` and each tenant whose rows would be
        touched; ``principal`` is already resolved. No implementation means no access
        control.
        """

    @hookspec
    def before_pipeline(self, run: RunContext) -> None:
        """Observer: a run is about to start (after validation)."""

    @hookspec
    def after_pipeline(self, run: RunContext, result: PipelineResult) -> None:
        """Observer: a run ended, successfully or not; always called, on every implementation
        even after one raised (the first error fails the run, attributed to its plugin)."""

    @hookspec
    def stream_event(self, stream: Any, event: str, info: Mapping[str, Any]) -> None:
        """Observer: a stream (``xlib_pipeline.streams.Stream``) ``"started"``, committed a
        ``"batch"`` (``info``: seq, run_id, offsets, records, outputs, late, dead) or ended
        (``"completed"``, ``"stopped"``, ``"failed"``; ``info["error"]``). Each batch is
        also an ordinary run whose ``run.params["stream"]`` names the stream and batch.
        """

    @hookspec
    def before_task(self, task: Task, run: RunContext, inputs: tuple[Any, ...]) -> None:
        """Observer/validator: a task is about to run with ``inputs``.

        Raising fails the task before its function is called (nothing reaches it).
        """

    @hookspec
    def after_task(self, task: Task, run: RunContext, outcome: TaskOutcome) -> None:
        """Observer: a task reached an outcome (every attempt, skips included); always called."""

    @hookspec
    def lane_idle(self, run: RunContext) -> None:
        """Observer: a lane of the run found no ready work and is about to wait for some.

        For a plugin that holds a record back to write it with the lane's next one (the
        audit trail): it writes it now. Called on the lane's thread; must not block.
        """

    @hookspec
    def task_scope(self, task: Task, run: RunContext) -> TaskScope | None:
        """Provider (every answer used): context to enter around the task's function body,
        once per attempt, wherever the body runs: a *picklable* callable returning a context
        manager. Local executors enter it in the lane; ``processes`` and Dask ship it to the
        worker (:func:`~xlib_pipeline.current_task_scopes`, :func:`~xlib_pipeline.run_in_scopes`).
        Not applied to coroutine tasks on the run's event loop.
        """

    @hookspec
    def on_compliance_event(self, event: ComplianceEvent) -> None:
        """Observer: a compliance control refused or found something (a refused run, a
        clearance violation, PII detected, a tampered audit trail). Reported by plugins with
        :meth:`PipelineManager.report_compliance_event`; the core reports refused runs and
        errors carrying a ``compliance_kind`` attribute."""

    @hookspec
    def collect_metrics(self) -> Iterable[MetricSample]:
        """Collector: the plugin's own counters and gauges right now (alerts delivered or
        undeliverable, ...), read by a metrics exporter at each scrape or push."""

    @hookspec
    def on_task_error(
        self, task: Task, run: RunContext, outcome: TaskOutcome
    ) -> RetryDecision | None:
        """Decision: an attempt failed; answer a :class:`RetryDecision` to retry, or ``None``.

        Reduced as: any ``RetryDecision(retry=False)`` vetoes; otherwise the task is retried
        if any answer asks for it, after the longest requested delay.
        """

    # -- providers: stop at first non-None result ---------------------------------------------

    @hookspec(firstresult=True)
    def isolate(self, task: Task, run: RunContext) -> Isolation | None:
        """Provider: decide where and under what limits ``task`` runs.

        ``None`` means the run's default executor. Stops at first non-None result.
        """

    @hookspec(firstresult=True)
    def encrypt(self, data: bytes, ref: PayloadRef) -> bytes | None:
        """Provider: protect payload bytes before they are stored.

        Stops at first non-None result.
        """

    @hookspec(firstresult=True)
    def decrypt(self, data: bytes, ref: PayloadRef) -> bytes | None:
        """Provider: recover bytes stored by ``encrypt``. Stops at first non-None result."""

    @hookspec(firstresult=True)
    def open_run_store(self, section: Mapping[str, Any]) -> Any | None:
        """Provider: open the run store a ``store: {url: ...}`` section names, when this
        plugin serves the URL's scheme (``postgresql://``: xlib-pipeline-postgres); else
        ``None``. The store has the methods of the embedded SQLite store (see
        :mod:`xlib_pipeline.store`). Import heavy drivers here, not at plugin import.
        Stops at first non-None result.
        """

    @hookspec(firstresult=True)
    def encrypt_stream(self, ref: PayloadRef) -> StreamSealer | None:
        """Provider: a sealer for one large output written to the blob store chunk by chunk
        (``header``, ``scope``, ``overhead`` and ``seal(chunk, index, final)``: see
        :class:`xlib_pipeline.store.StreamSealer`), or ``None`` to store it in plaintext.
        Stops at first non-None result.
        """

    @hookspec(firstresult=True)
    def decrypt_stream(self, header: bytes, ref: PayloadRef) -> StreamOpener | None:
        """Provider: an opener for a blob whose sealer wrote ``header`` (``b""`` for a
        plaintext blob: answer ``None``, or raise when plaintext is not acceptable for
        ``ref``). Stops at first non-None result.
        """

    @hookspec
    def record_admin_action(
        self, action: str, details: Mapping[str, Any], principal: str | None
    ) -> None:
        """Observer: an administrative action on stored data happened outside any run
        (``runs.pruned`` ...); ``details`` says what (run ids, row counts), never data.
        The audit plugin writes it to the trail."""

    @hookspec(firstresult=True)
    def may_show_values(
        self, task: Task, run: RunContext, value: Any, source: str | None
    ) -> bool | None:
        """Provider: whether an error message about ``value`` may quote it. ``value`` is the
        output of ``task`` (``source`` is ``None``) or its input from the upstream task
        ``source``. The classification plugin answers ``False`` when the data is classified
        above ``internal``; ``None`` (no plugin answers) means it may. Contract violations
        (:class:`~xlib_pipeline.ContractError`) ask before naming a failing value.
        Stops at first non-None result.
        """

    @hookspec(firstresult=True)
    def redact(self, text: str, tenant: str | None) -> str | None:
        """Provider: ``text`` (an error message or traceback about to leave the run: lineage
        facets, the CLI's output, alerts) with sensitive values removed, or ``None`` when
        nothing needs removing. The classification plugin answers when PII detection is on.
        Stops at first non-None result.
        """


#: Every hook a plugin may implement (the methods of :class:`HookSpecs`).
HOOK_NAMES: tuple[str, ...] = tuple(sorted(n for n in vars(HookSpecs) if not n.startswith("_")))
