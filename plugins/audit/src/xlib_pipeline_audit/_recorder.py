"""The audit plugin's per-run and per-task hooks (registered only when auditing is on)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from xlib_pipeline import (
    CACHE_HITS,
    CLASSIFICATION,
    FALLBACKS,
    LEASE_TAKEOVERS,
    OUTPUTS_IN_DRIVER,
    RunContext,
    StashKey,
    Status,
    hookimpl,
)

from ._canonical import digest
from ._general import RunRecords, deep_text, prerender
from ._settings import error_class, now_iso
from ._task_records import Quick, TaskRecords, TaskTexts

if TYPE_CHECKING:  # pragma: no cover
    from ._plugin import AuditPlugin

_SUCCEEDED = Status.SUCCEEDED
_TERMINAL = (
    Status.SUCCEEDED,
    Status.FAILED,
    Status.SKIPPED,
    Status.UPSTREAM_FAILED,
    Status.CANCELLED,
    Status.CACHED,
    Status.FALLBACK,
)

#: What the recorder knows of a task for its records: (tenant, operation, digests, texts,
#: the two common records cut for this run or None).
TaskMeta = tuple[Any, Any, bool, TaskTexts, Quick | None]


class AuditRun:
    """Per-run constants and per-task metadata, computed once in ``before_pipeline``."""

    __slots__ = (
        "actor",
        "append",
        "attempts",
        "classified",
        "digests",
        "flush",
        "hold",
        "meta",
        "mid",
        "pipeline",
        "records",
        "run_id",
        "tenant",
    )

    def __init__(
        self,
        plugin: AuditPlugin,
        run: RunContext,
        cache: dict[Any, Any] | None = None,
        trail: Any = None,
    ) -> None:
        #: The run's trail's ``append`` (opened here: every run writes ``run.started``).
        if trail is None:
            trail = plugin.writer()
        self.append = trail.append
        #: A task's plain ``task.finished`` waits in the inbox for the lane's next write
        #: (its next ``task.started``): one ``write(2)`` per task. ``flush`` writes it when
        #: the lane goes idle (``lane_idle``), so it never waits while nothing is written.
        self.hold = trail.hold
        self.flush = trail.flush
        self.actor = run.principal or plugin.actor
        self.pipeline = run.pipeline_name
        self.run_id = run.run_id
        self.tenant = run.tenant_id
        self.attempts: dict[str, int] = {}
        self.digests = plugin.settings.digests
        self.records = TaskRecords(self.actor, self.pipeline, self.run_id)
        #: The text between ``prev`` and ``seq`` of this run's quick records (its run id):
        #: the per-task quick records (``meta``) are the same in every run of a plan.
        self.mid: str = self.records.run_mid() or ""
        #: Classification level -> the quick ``task.finished`` pre text with that level (no
        #: run id in it: shared by the runs of a plan, with ``meta``).
        self.classified: dict[str, str | None] = {}
        tasks = run.tasks
        # Every task's metadata depends on the task (frozen), the run's actor, pipeline and
        # tenant and the digests setting, never on the run id: kept across runs of the same
        # plan (the manager hands every run of it the same tasks tuple), unless a task has
        # an ``audit`` option (a mapping its owner could still change).
        key: Any = (self.actor, self.pipeline, self.tenant, self.digests, not self.mid)
        hit = None
        if cache is not None:
            try:
                hit = cache.get(key)
            except TypeError:  # an actor or tenant that is not hashable
                cache = None
        if hit is not None and hit[0] is tasks:
            self.meta, digests, self.classified = hit[1], hit[2], hit[3]
        else:
            self.meta = {}
            digests = False
            cacheable = cache is not None
            for task in tasks:
                m = self.meta[task.name] = self.task_meta(task, run)
                digests = digests or m[2]
                if cacheable and task.options.get("audit"):
                    cacheable = False
            if cacheable and cache is not None:
                if len(cache) >= 16:
                    cache.clear()
                cache[key] = (tasks, self.meta, digests, self.classified)
        if digests:
            run.stash[OUTPUTS_IN_DRIVER] = True  # output digests read each output

    def task_meta(self, task: Any, run: Any) -> TaskMeta:
        """(tenant, operation, digests, value texts for pre-rendered records)."""
        opt = task.options.get("audit")
        if opt:
            if opt is True:
                opt = {}
            tenant = opt.get("tenant_id") or run.tenant_of(task)
            op, digests = opt.get("operation"), bool(opt.get("digests", self.digests))
        else:
            tenant, op, digests = run.tenant_of(task), None, self.digests
        texts = self.records.texts(task.name, tenant, op)
        quick = None if digests or not self.mid else self.records.quick(texts)
        return tenant, op, digests, texts, quick


#: The audit plugin's per-run state.
AUDIT_RUN: StashKey[AuditRun] = StashKey("audit")


class Recorder:
    """The per-run and per-task hooks, registered only when auditing is on (so an
    unconfigured audit plugin adds no hook calls to a run)."""

    def __init__(self, plugin: AuditPlugin) -> None:
        self._plugin = plugin
        #: The last run started and its state: the per-task hooks skip the stash lookup
        #: for it (another run, on another thread, looks in its stash).
        self._last: tuple[Any, AuditRun | None] = (None, None)
        #: Per-task metadata of recent plans (see AuditRun), by actor, pipeline, tenant ...
        self._metas: dict[Any, Any] = {}
        #: Shapes of the general records (run.started, run.finished, stream.*) by key tuple.
        self._shapes: dict[Any, Any] = {}
        #: The per-batch records of a stream, from shapes with the run's constants baked in.
        self._runs = RunRecords()
        #: A run's counts and their text by the tasks' counts (see _counts_of).
        self._counts: dict[tuple[Any, ...], tuple[dict[str, int], str | None]] = {}

    def _fast(self, trail: Any, rec: dict[str, Any]) -> Any:
        """``rec`` pre-rendered when no processor has to see it (same bytes), else as is."""
        if not trail.prerendered:
            return rec
        fields = rec
        if "seq" in rec:  # stream.batch's: the chain's own seq replaces it (general path too)
            fields = {k: v for k, v in rec.items() if k != "seq"}
        return prerender(fields, self._shapes) or rec

    def _base(self, st: AuditRun, action: str, outcome: str | None) -> dict[str, Any]:
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

    @hookimpl
    def record_admin_action(self, action: str, details: Any, principal: str | None) -> None:
        rec = {
            "ts": now_iso(),
            "actor": principal or self._plugin.actor,
            "tenant": None,
            "pipeline": None,
            "run_id": None,
            "task": None,
            "action": action,
            "outcome": "succeeded",
            "error_class": None,
            "details": dict(details),
        }
        trail = self._plugin.writer()
        trail.append(rec, wait=True)
        trail.sync()
        self._plugin.checkpoint(force=True)

    @hookimpl(tryfirst=True)
    def before_pipeline(self, run: Any) -> None:
        writer = self._plugin.writer()
        st = AuditRun(self._plugin, run, self._metas, writer)
        run.stash[AUDIT_RUN] = st
        self._last = (run, st)
        run_params = run.params
        stream = run_params.get("stream")
        fast = None
        if stream is not None and len(run_params) == 1 and writer.prerendered:
            # A stream's micro-batch with no other param (so no params, no logical_date in
            # its record): rendered from the stream's shape, no dict built first.
            fast = self._runs.started(
                now_iso(), st.actor, st.tenant, st.pipeline, st.run_id, len(run.tasks), stream
            )
        # Held for the run's next write (its first task.started, which must be written
        # before that body anyway: guarantee (a)), or the run's end: one write(2) per run
        # fewer, and nothing of the run happened in between.
        writer.hold(fast or self._started(st, run, writer))
        # A stale lease this run took over (its owner died): who held it is audited.
        for taken in run.stash.get(LEASE_TAKEOVERS, None) or ():
            lease = self._base(st, "run.lease_taken_over", "taken_over")
            lease["previous_owner"] = {k: taken.get(k) for k in ("pid", "host", "holder")}
            lease["leased_run"] = taken.get("run_id")
            writer.append(lease)

    def _started(self, st: AuditRun, run: Any, writer: Any) -> Any:
        """A ``run.started`` record built as a dict (then pre-rendered when it can be)."""
        rec = self._base(st, "run.started", "started")
        rec["tasks"] = len(run.tasks)
        run_params = run.params
        # recorded_params leaves a stream batch's reserved "stream" param out: a batch run
        # with no other param has none to record (and skips the walk).
        params = run.recorded_params() if len(run_params) > ("stream" in run_params) else None
        if params:  # what the run was asked to do (--param), redacted like error texts
            rec["params"] = params
        if run.logical_date is not None and "logical_date" in run_params:
            rec["logical_date"] = run.logical_date.isoformat()
        stream = run_params.get("stream")
        if stream is not None:  # one micro-batch of a stream: which one, which offsets
            rec["stream"] = stream
        return self._fast(writer, rec)

    @hookimpl(tryfirst=True)
    def after_pipeline(self, run: Any, result: Any) -> None:
        st = run.stash.get(AUDIT_RUN, None)
        if st is None:  # refused by a validator before before_pipeline
            st = AuditRun(self._plugin, run)
        if self._last[0] is run:
            self._last = (None, None)
        trail = self._plugin.writer()
        status = result.status
        fast = None
        count = getattr(result.tasks, "counts", None)
        if count is not None and status != "refused" and trail.prerendered:
            # run.finished with counts and duration_ms: rendered from its shape, no dict.
            counts, text = self._counts_of(count())
            fast = self._runs.finished(
                now_iso(), st.actor, st.tenant, st.pipeline, st.run_id, status,
                error_class(result.error), counts,
                round((result.finished - result.started) * 1000, 3), text,
            )  # fmt: skip
        record = fast or self._fast(trail, self._finished(st, result))
        if "stream" not in run.params:
            # With every record held for a lane's next write.
            trail.append(record, wait=True)
            trail.sync()
            self._plugin.checkpoint(force=True)
            return
        # A stream's micro-batch: synced as configured (fsync), not per batch. A batch that
        # succeeded holds its run.finished for the trail's next write (the next batch's
        # first task.started, which also carries its stream.batch record): one write(2)
        # per batch fewer. A failed batch's is written at once.
        if status == "succeeded":
            trail.hold(record)
        else:
            trail.append(record, wait=True)
        if self._plugin.checkpointer is not None:
            self._plugin.checkpoint()

    def _counts_of(self, found: dict[Any, int]) -> tuple[dict[str, int], str | None]:
        """A run's ``counts`` (terminal statuses only, by value) and their canonical text,
        kept by the tasks' counts (a stream's batches end alike: once, not per batch). The
        counts are the core's integers, so equal counts render alike."""
        items = tuple(found.items())
        key: tuple[Any, ...] | None = items
        try:
            hit = self._counts.get(items)
        except TypeError:  # not the core's integers: not kept
            key, hit = None, None
        if hit is None:
            counts = {s.value: found[s] for s in _TERMINAL if s in found}
            try:
                text: str | None = deep_text(counts)
            except ValueError:
                text = None
            hit = (counts, text)
            if key is not None:
                if len(self._counts) >= 64:
                    self._counts.clear()
                self._counts[key] = hit
        return hit

    def _finished(self, st: AuditRun, result: Any) -> dict[str, Any]:
        """A ``run.finished`` (or ``run.refused``) record built as a dict."""
        refused = result.status == "refused"
        rec = self._base(st, "run.refused" if refused else "run.finished", result.status)
        rec["error_class"] = error_class(result.error)
        if not refused:
            count = getattr(result.tasks, "counts", None)
            if count is not None:
                found = count()
                rec["counts"] = {s.value: found[s] for s in _TERMINAL if s in found}
            rec["duration_ms"] = round((result.finished - result.started) * 1000, 3)
        return rec

    @hookimpl
    def stream_event(self, stream: Any, event: str, info: Any) -> None:
        """``stream.started``, ``stream.batch`` (offsets, counts of records, outputs, late
        and dead-lettered records: never the records) and ``stream.<how it ended>``.

        A committed batch's ``stream.batch`` is held for the trail's next write (the next
        batch's first ``task.started``, the stream's end record, the flusher's tick or the
        trail's close), like its ``run.finished``: one ``write(2)`` per batch fewer."""
        trail = self._plugin.writer()
        batch = event == "batch"
        if batch and trail.prerendered:
            fast = self._runs.batch(
                now_iso(),
                stream.run_kwargs.get("principal") or self._plugin.actor,
                stream.run_kwargs.get("tenant_id"),
                stream.pipeline.name,
                stream.name,
                info,
            )
            if fast is not None:
                trail.hold(fast)
                return
        rec = {
            "ts": now_iso(),
            "actor": stream.run_kwargs.get("principal") or self._plugin.actor,
            "tenant": stream.run_kwargs.get("tenant_id"),
            "pipeline": stream.pipeline.name,
            "run_id": info.get("run_id") if event == "batch" else None,
            "task": None,
            "action": f"stream.{event}",
            "outcome": "committed" if event == "batch" else event,
            "error_class": None,
            "stream": stream.name,
            **{k: v for k, v in info.items() if k not in ("run_id", "error")},
        }
        if info.get("error"):
            rec["error_class"] = str(info["error"]).split(":", 1)[0]
        if batch:
            trail.hold(self._fast(trail, rec))
            return
        trail.append(self._fast(trail, rec))
        trail.sync()

    @hookimpl(tryfirst=True)
    def before_task(self, task: Any, run: Any, inputs: tuple[Any, ...]) -> None:
        last = self._last
        st = last[1] if last[0] is run else run.stash.get(AUDIT_RUN, None)
        if st is None:
            return
        name = task.name
        attempts = st.attempts
        n = attempts.get(name, 0) + 1
        attempts[name] = n
        meta = st.meta.get(name) or st.task_meta(task, run)
        quick = meta[4]
        if quick is not None and n == 1:
            # Guarantee (a), the common record cut once per run (see TaskRecords.quick).
            st.append([quick[0], st.mid, quick[3] + now_iso() + quick[4]], wait=True)
            return
        trail = self._plugin.writer()
        rec = st.records.started(
            name,
            meta[0],
            meta[1],
            meta[3],
            n,
            now_iso(),
            digest(inputs, self._plugin.key) if meta[2] else None,
            fast=trail.prerendered,
        )
        # Guarantee (a): the body starts only once this record is in the file (write(2)
        # returned); fsync stays governed by audit.fsync.
        trail.append(rec, wait=True)

    def _optional(self, run: Any, name: str, outcome: Any, digests: bool) -> dict[str, Any]:
        """The optional fields of a ``task.finished`` record (see FINISHED_OPTIONAL)."""
        status = outcome.status
        opt: dict[str, Any] = {}
        if not outcome.final:
            opt["retrying"] = True
        if status is Status.CACHED:
            key = (run.stash.get(CACHE_HITS, None) or {}).get(name)
            if key is not None:
                opt["cache_key"] = key
        if status is Status.FALLBACK:
            used = (run.stash.get(FALLBACKS, None) or {}).get(name)
            if used is not None:
                opt["fallback"] = used.source
        if status.has_output:
            if digests:
                opt["output_digest"] = digest(outcome.output, self._plugin.key)
            # The classification plugin (when present) publishes each output's level here,
            # from its tryfirst after_task; record the level, never the data.
            levels = run.stash.get(CLASSIFICATION, None)
            entry = levels.outputs.get(name) if levels is not None else None
            if entry is not None:
                opt["classification"] = entry.level
                if entry.detected:
                    opt["pii_detected"] = sorted(entry.detected)
        return opt

    @hookimpl
    def lane_idle(self, run: Any) -> None:
        """The lane has nothing to do: write the ``task.finished`` records held for its next
        write now (a record never waits while its lane is idle)."""
        last = self._last
        st = last[1] if last[0] is run else run.stash.get(AUDIT_RUN, None)
        if st is not None:
            st.flush()

    # trylast: the outcome is recorded after the other observers ran, so what they
    # computed for it (the classification level of the output) is in the record.
    @hookimpl(trylast=True)
    def after_task(self, task: Any, run: Any, outcome: Any) -> None:
        last = self._last
        st = last[1] if last[0] is run else run.stash.get(AUDIT_RUN, None)
        if st is None:
            return
        name = task.name
        meta = st.meta.get(name) or st.task_meta(task, run)
        err = outcome.error
        status = outcome.status
        quick = meta[4]
        if (
            quick is not None
            and status is _SUCCEEDED
            and err is None
            and outcome.attempt == 1
            and outcome.final
        ):
            pre: str | None = quick[1]
            levels = run.stash.get(CLASSIFICATION, None)
            entry = levels.outputs.get(name) if levels is not None else None
            if entry is not None:  # the output's level (classification plugin)
                if entry.detected or meta[1] is not None:
                    pre = None  # PII kinds, or an operation: the general path
                elif type(entry.level) is str:
                    pre = st.classified.get(entry.level)
                    if pre is None:
                        pre = st.classified[entry.level] = st.records.classified(entry.level)
                else:
                    pre = None
            if pre is not None:
                st.hold([pre, st.mid, quick[3] + now_iso() + quick[4]])
                cp = self._plugin.checkpointer
                if cp is not None and cp.due(self._plugin.writer().last_seq):
                    self._plugin.checkpoint()
                return
        opt = None
        if status is not _SUCCEEDED or not outcome.final or meta[2] or CLASSIFICATION in run.stash:
            opt = self._optional(run, name, outcome, meta[2])
        trail = self._plugin.writer()
        rec = st.records.finished(
            name,
            meta[0],
            meta[1],
            meta[3],
            outcome.attempt,
            now_iso(),
            status.value,
            None if err is None else error_class(err),
            opt,
            fast=trail.prerendered,
        )
        trail.append(rec)
        cp = self._plugin.checkpointer
        if cp is not None and cp.due(trail.last_seq):
            self._plugin.checkpoint()
