"""What a :class:`~xlib_pipeline.PipelineManager` tells observers while runs go on: the
runs under way and compliance events."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._hooks import Hooks
from ._progress import LiveRun
from ._records import RunContext
from ._signals import ComplianceEvent
from .exceptions import PipelineError

if TYPE_CHECKING:  # pragma: no cover
    from ._scheduler import Run


class ManagerEvents:
    """Live runs and compliance events (a part of ``PipelineManager``)."""

    hooks: Hooks
    _live: dict[str, Run]

    def live_runs(self) -> tuple[LiveRun, ...]:
        """The runs under way in this manager, as read-only :class:`LiveRun` views (a metrics
        exporter counts their tasks at scrape time instead of hooking every task)."""
        return tuple(LiveRun(r) for r in list(self._live.values()))

    def report_compliance_event(
        self,
        kind: str,
        *,
        pipeline: str | None = None,
        run_id: str | None = None,
        task: str | None = None,
        tenant: str | None = None,
        plugin: str | None = None,
        detail: str = "",
    ) -> None:
        """Tell the ``on_compliance_event`` observers (metrics, alerting) that a compliance
        control refused or found something; see :class:`ComplianceEvent` for ``kind``.
        ``detail`` must already be free of data (detector names, levels, task names)."""
        hooks = self.hooks
        if not hooks.has["on_compliance_event"]:
            return
        event = ComplianceEvent(
            kind=kind,
            pipeline=pipeline,
            run_id=run_id,
            task=task,
            tenant=tenant,
            plugin=plugin,
            detail=detail,
        )
        hooks.on_compliance_event(event=event)

    def _report_error_events(
        self, hooks: Hooks, ctx: RunContext, exc: BaseException, *, refused: bool
    ) -> None:
        """Compliance events for a refused run, and for an error marked with a
        ``compliance_kind`` attribute (a tampered audit trail) anywhere in its causes."""
        if not hooks.has["on_compliance_event"]:
            return
        kinds = ["run_refused"] if refused else []
        seen: BaseException | None = exc
        for _ in range(8):
            if seen is None:
                break
            kind = getattr(seen, "compliance_kind", None)
            if isinstance(kind, str) and kind not in kinds:
                kinds.append(kind)
            seen = seen.__cause__ or getattr(seen, "cause", None)
        for kind in kinds:
            event = ComplianceEvent(
                kind=kind,
                pipeline=ctx.pipeline_name,
                run_id=ctx.run_id,
                task=getattr(exc, "task", None),
                tenant=ctx.tenant_id,
                plugin=getattr(exc, "plugin", None),
                detail=type(exc).__name__,
            )
            try:
                hooks.on_compliance_event(event=event)
            except PipelineError:
                pass  # the run's own error is the one to report
