"""The stream driver: read a batch, run the DAG on it, write the sink, commit, in order."""

from __future__ import annotations

import collections
import concurrent.futures as cf
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .._tables import CheckpointTable
from ..exceptions import ConfigError, PipelineError, StoreError, StreamError
from ._batch import BatchOutcome, brief_offset
from ._batch import records_of as _records_of
from ._pipeline import BATCH_TASK, derive
from ._pipelined import GROUP, GROUP_HERE, READY_S, Confirming, Unconfirmed, batch_info
from ._protocol import Checkpoint, Sink, Source, SourceBatch
from ._start import StreamStart
from ._windows import WindowOperator

if TYPE_CHECKING:  # pragma: no cover
    from .._manager import PipelineManager
    from .._prepared import PreparedRun
    from .._results import PipelineResult
    from .._task import Pipeline


class Stream(Confirming, StreamStart):
    """One stream: a pipeline over a source into a sink, checkpointed in the run store.

    Counters (``records``, ``batches``, ``outputs``, ``late``, ``dead``) include what
    earlier runs of the same stream committed. ``status`` is ``created``, ``running``,
    ``completed`` (the source ended), ``stopped`` (:meth:`stop`, a limit, Ctrl-C) or
    ``failed`` (``error`` says why; nothing after the last checkpoint was committed).
    """

    def __init__(
        self,
        pm: PipelineManager,
        pipeline: Pipeline,
        *,
        source: Source,
        sink: Sink,
        name: str,
        batch_size: int,
        batch_timeout: float,
        max_in_flight: int,
        from_start: bool,
        output_task: str | None,
        max_batches: int | None,
        max_records: int | None,
        idle_timeout: float | None,
        run_kwargs: Mapping[str, Any],
        on_batch: Callable[[Stream], None] | None = None,
        late_sink: Sink | None = None,
        dead_letter: Sink | None = None,
    ) -> None:
        self.pm = pm
        self.pipeline = pipeline
        self.source = source
        self.sink = sink
        self.name = name
        self.batch_size = batch_size
        self.batch_timeout = batch_timeout
        self.max_in_flight = max_in_flight
        self.from_start = from_start
        self.max_batches = max_batches
        self.max_records = max_records
        self.idle_timeout = idle_timeout
        self.run_kwargs = dict(run_kwargs)
        self.on_batch = on_batch
        self.late_sink = late_sink
        self.dead_letter = dead_letter
        self._events = pm.hooks.has["stream_event"]
        self.windows = WindowOperator.for_pipeline(pipeline)
        if self.windows:
            self.windows.check_stream(name, max_in_flight, self.run_kwargs)
        wrap = self.windows.wrap if self.windows else None
        self.batch_pipeline, self.output_task, self.fed = derive(pipeline, output_task, wrap)
        if "parallel" not in self.run_kwargs and "executor" not in self.run_kwargs:
            # A chain has nothing to run side by side: skip starting lanes for every batch.
            tasks = self.batch_pipeline.tasks.values()
            succs = collections.Counter(d for t in tasks for d in t.depends_on)
            if all(len(t.depends_on) <= 1 for t in tasks) and max(succs.values()) <= 1:
                self.run_kwargs["parallel"] = False
        self.status = "created"
        self.error: BaseException | None = None
        self.records = 0
        self.batches = 0
        self.outputs = 0
        self.late = 0
        self.dead = 0
        self.lag: int | None = None
        self.checkpoint: Checkpoint | None = None
        self.last_run_id: str | None = None
        self.stream_run_id: str | None = None
        self.started: float | None = None
        self.finished: float | None = None
        self._session_records = 0
        self._session_batches = 0
        self._read_records = 0
        self._read_batches = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ckpt: CheckpointTable | None = None
        self._opened = False  # the stream's row was created or reopened by this start
        #: Batches written and queued for commit, not yet confirmed (see _pipelined).
        self._unconfirmed: collections.deque[Unconfirmed] = collections.deque()
        self._depth = 1
        self._deferred: list[Callable[[BaseException | None], None]] = []
        #: Whether the checkpoint table queues commits without asking for them (GROUP).
        self._grouping = False
        self._group = GROUP
        self._tenant = self.run_kwargs.get("tenant_id")

    # -- control ----------------------------------------------------------------------------

    def __repr__(self) -> str:
        return (
            f"Stream({self.name!r}, status={self.status!r}, records={self.records}, "
            f"batches={self.batches})"
        )

    @property
    def throughput(self) -> float:
        """Records per second processed by this process since the stream started."""
        if self.started is None:
            return 0.0
        end = self.finished or time.time()
        return self._session_records / max(end - self.started, 1e-9)

    def stop(self) -> None:
        """Stop after the batches in flight are committed (reading stops at once)."""
        self._stop.set()

    def start(self) -> Stream:
        """Run in a background thread; :meth:`stop` and :meth:`wait` control it."""
        self._thread = threading.Thread(target=self.run, name=f"xlib-stream-{self.name}")
        self._thread.start()
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a background stream to end; ``True`` when it has."""
        if self._thread is None:
            return self.status not in ("created", "running")
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> Stream:
        """Process until the source ends, a limit is reached, :meth:`stop` or an error."""
        store = self.pm.store
        if store is None:
            raise ConfigError(
                f"stream {self.name!r} needs a run store for its checkpoints: configure "
                "{'store': {'path': 'runs.sqlite'}} (or store: true for the default file)",
                key="store",
            )
        from .._tables import open_checkpoints

        self._ckpt = open_checkpoints(store, f"stream {self.name!r}")
        self._depth = self._pipelines(self.sink, (self.late_sink, self.dead_letter), self._ckpt)
        self._grouping = self._depth > 1 and callable(getattr(self._ckpt, "wake", None))
        self._group = GROUP_HERE if getattr(self._ckpt, "commits_here", False) else GROUP
        self.started = time.time()
        self.status = "running"
        try:
            self._prepare()
            self._loop()
        except KeyboardInterrupt:
            self.status = "stopped"
            self.error = None
            self._finish()
            raise
        except BaseException as exc:
            self.status = "failed"
            self.error = exc
            self._finish()
            if not isinstance(exc, Exception):
                raise
            return self
        self._finish()
        return self

    def _event(self, event: str, info: Mapping[str, Any]) -> None:
        if self._events:
            self.pm.hooks.stream_event(stream=self, event=event, info=info)

    def _finish(self) -> None:
        self.finished = time.time()
        err = None if self.error is None else f"{type(self.error).__name__}: {self.error}"
        err = getattr(self.error, "stored", None) or err  # a sealed batch error's pointer
        if err is not None:  # stored and audited in clear: through the PII redaction
            err = self.pm.redact(err, tenant=self._tenant)
        try:
            if self.status != "created" and self.checkpoint is not None:
                self._event(
                    self.status,
                    {"records": self.records, "batches": self.batches, "error": err},
                )
        except PipelineError as exc:  # a plugin failed to record the end: report it
            if self.error is None:
                self.status, self.error = "failed", exc
                err = f"{type(exc).__name__}: {exc}"
        try:
            if self._ckpt is not None:
                try:
                    if self._opened:  # a refused start leaves the stream's row as it was
                        self._ckpt.finish(self.name, self.status, err)
                except StoreError as exc:  # the store is down: the first error is the story
                    if self.error is None:
                        self.status, self.error = "failed", exc
                finally:
                    self._ckpt.close()
        finally:
            try:
                self.source.close()
            finally:
                self.sink.close()
                if self.late_sink is not None:
                    self.late_sink.close()
                if self.dead_letter is not None:
                    self.dead_letter.close()

    def _limit_reached(self) -> bool:
        if self.max_batches is not None and self._read_batches >= self.max_batches:
            return True
        return self.max_records is not None and self._read_records >= self.max_records

    def _loop(self) -> None:
        assert self.checkpoint is not None
        seq = self.checkpoint.seq
        pending: collections.deque[tuple[int, SourceBatch, Any]] = collections.deque()
        pool = (
            cf.ThreadPoolExecutor(self.max_in_flight, thread_name_prefix="xlib-stream")
            if self.max_in_flight > 1
            else None
        )
        idle_since = time.monotonic()
        reading = True
        full = False  # the last read returned all it was asked for: more is likely ready
        idled = False  # idle_timeout stopped the reading
        try:
            while reading or pending:
                if self._deferred and not (full and reading):
                    self._kick()  # the next read may block: commit what is queued now
                if self._unconfirmed:
                    self._settle(self._depth)  # confirm what is committed, never wait
                if reading and (self._stop.is_set() or self._limit_reached()):
                    reading = False
                if reading and len(pending) < self.max_in_flight:
                    want = self.batch_size
                    if self.max_records is not None:
                        want = min(want, self.max_records - self._read_records)
                    began = time.monotonic()
                    batch = self.source.read(want, self.batch_timeout)
                    # Ready records (a full batch at once): the next read likely returns at
                    # once too, and its batch's commit is asked for with this one's.
                    full = (
                        batch is not None
                        and len(batch.records) >= want
                        and time.monotonic() - began < READY_S
                    )
                    if batch is None:
                        reading = False
                        if self.windows is not None and self.windows.has_open():
                            # The source ended: one last run closes the open windows.
                            self.windows.final = True
                            end = self._written().offset if not pending else pending[-1][1].end
                            seq += 1
                            last = SourceBatch(records=[], start=end, end=end)
                            pending.append((seq, last, self._run_batch(seq, last)))
                        continue
                    if not batch.records:
                        if (
                            self.idle_timeout is not None
                            and time.monotonic() - idle_since >= self.idle_timeout
                        ):
                            reading, idled = False, True
                        elif not pending:
                            continue
                    else:
                        idle_since = time.monotonic()
                        seq += 1
                        self._read_records += len(batch.records)
                        self._read_batches += 1
                        if pool is None:
                            pending.append((seq, batch, self._run_batch(seq, batch)))
                        else:
                            fut = pool.submit(self._run_batch, seq, batch)
                            pending.append((seq, batch, fut))
                        if len(pending) < self.max_in_flight and reading:
                            continue
                if pending:
                    s, b, work = pending.popleft()
                    result = work.result() if isinstance(work, cf.Future) else work
                    self._commit(s, b, result)  # raises on a failed batch: nothing after it
            self._settle()
        except BaseException:
            for _, _, work in pending:  # run, never checkpointed: recorded as they are
                if not isinstance(work, cf.Future):
                    self._release(work)
                elif work.done() and not work.cancelled() and work.exception() is None:
                    self._release(work.result())
            try:
                self._settle()  # what was committed is reported as such
            except Exception:  # the first error is the story
                pass
            raise
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        if self.status == "running":  # completed: the source ended (not idle, a limit, stop())
            stopped = self._stop.is_set() or self._limit_reached() or idled
            self.status = "stopped" if stopped else "completed"

    # -- one batch --------------------------------------------------------------------------

    def _params(self, seq: int, batch: SourceBatch) -> dict[str, Any]:
        return {
            "stream": {
                "name": self.name,
                "run": self.stream_run_id,
                "batch": seq,
                "offsets": [brief_offset(batch.start), brief_offset(batch.end)],
                "records": len(batch.records),
            }
        }

    def _run_batch(self, seq: int, batch: SourceBatch) -> BatchOutcome:
        snapshot = self.windows.snapshot() if self.windows else None
        result = self._run_records(seq, batch, batch.records)
        if result.success or self.dead_letter is None or result.status != "failed":
            return BatchOutcome(result=result, outputs=None, dead=[])
        # Quarantine: run the batch's records one by one; those that fail go to the
        # dead-letter sink, the others on as usual (in order).
        if self.windows is not None and snapshot is not None:
            self.windows.rollback(snapshot)
        outputs: list[Any] = []
        dead: list[dict[str, Any]] = []
        last = result
        runs = [result.run_id]
        for i, record in enumerate(batch.records):
            one = self._run_records(seq, batch, [record], index=i)
            runs.append(one.run_id)
            if one.success:
                last = one
                task = one.tasks.get(self.output_task)
                outputs.extend(_records_of(task.output if task is not None else None))
            else:
                err = one.error
                dead.append(
                    {
                        "stream": self.name,
                        "batch": seq,
                        "index": i,
                        "run_id": one.run_id,
                        "error": f"{type(err).__name__}: {err}",
                        "record": record,
                    }
                )
        runs.remove(last.run_id)
        return BatchOutcome(result=last, outputs=outputs, dead=dead, runs=tuple(runs))

    def _run_records(
        self, seq: int, batch: SourceBatch, records: list[Any], index: int | None = None
    ) -> PipelineResult:
        params = self._params(seq, batch)
        if index is not None:
            params["stream"]["record"] = index
        # The batches' runs share what execute_pipeline would check and compute again for
        # each (plan, options, executor): prepared once, again when the pipeline or the
        # manager's config changed (PreparedRun.current).
        prep: PreparedRun | None = getattr(self, "_prepared", None)
        if prep is None or not prep.current():
            prep = self._prepared = self.pm._prepare_run(self.batch_pipeline, **self.run_kwargs)
        return self.pm._launch(
            prep, inputs={BATCH_TASK: records}, params=params, source=f"stream:{self.name}"
        )

    def _commit(self, seq: int, batch: SourceBatch, outcome: BatchOutcome) -> None:
        """Write batch ``seq`` to the sink and queue its checkpoint's commit (see
        :mod:`._pipelined`: fewer than ``_depth`` batches unconfirmed before the write)."""
        try:
            self._write(seq, batch, outcome)
        except BaseException:
            # Never checkpointed: the batch's runs are recorded as they are (_held).
            self._release(outcome)
            raise

    def _release(self, outcome: BatchOutcome) -> None:
        """Queue the held rows of ``outcome``'s runs, which no checkpoint will commit."""
        release = getattr(self.pm.store, "release_held", None)
        if release is not None:
            release(outcome.run_ids)

    def _write(self, seq: int, batch: SourceBatch, outcome: BatchOutcome) -> None:
        self._settle(self._depth - 1)
        result = outcome.result
        self.last_run_id = result.run_id
        if not result.success and outcome.outputs is None:
            self._settle()  # a failed commit before it is the story
            raise self._batch_error(seq, batch, result) from result.error
        if outcome.outputs is not None:
            out = outcome.outputs
        else:
            task = result.tasks.get(self.output_task)
            out = _records_of(task.output if task is not None else None)
        nxt = Checkpoint(seq=seq, offset=batch.end, position=self._written().position)
        try:
            position = self.sink.write(out, nxt, self.source)
        except PipelineError:
            raise
        except Exception as exc:
            raise StreamError(
                f"stream {self.name!r}: sink {self.sink.url} failed writing batch {seq}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        nxt = Checkpoint(seq=seq, offset=batch.end, position=position)
        late = self.windows.take_late() if self.windows else []
        if late:
            self._side_output(seq, late)
        dead = outcome.dead
        if dead:
            assert self.dead_letter is not None
            self.dead_letter.write(
                dead, Checkpoint(seq=seq, offset=None, position=None), self.source
            )
        self.lag = self.source.lag()
        assert self._ckpt is not None
        # The batch run's rows were queued on the store's writer; the checkpoint is queued
        # behind them and committed with them, in one transaction. The commit runs while
        # the next batch is read and run; what follows it (the source's acknowledgement,
        # the counters, the "batch" event, on_batch) runs here once it is confirmed.
        counts = (len(batch.records), len(out), len(late), len(dead))
        info = batch_info(seq, result.run_id, batch.start, batch.end, counts, self.lag)
        u = Unconfirmed(nxt, info)
        args: dict[str, Any] = {
            "checkpoint": nxt,
            "run_id": result.run_id,
            "start": batch.start,
            "records": len(batch.records),
            "outputs": len(out),
            "output": self._protect(out, "stream_output", seq),
            "window_state": self._window_blob(seq),
            "late": len(late),
            "dead": len(dead),
            "lag": self.lag,
        }
        if outcome.runs:
            args["runs"] = outcome.runs
        if self._grouping:
            # Queued now, its commit asked for with the next ones' (one transaction for up
            # to _group batches) while the source returns full batches; see _loop, _settle.
            self._ckpt.queue(self.name, **args)  # type: ignore[attr-defined]
            self._deferred.append(u.then)
            self._unconfirmed.append(u)
            if len(self._deferred) >= self._group:
                self._kick()
            return
        if self._depth > 1:
            self._ckpt.commit_later(self.name, then=u.then, **args)  # type: ignore[attr-defined]
            self._unconfirmed.append(u)  # queued (a raise above: nothing to wait for)
            return
        try:
            self._ckpt.commit(self.name, **args)
        except StoreError as exc:
            u.error = exc
        u.done = True
        self._unconfirmed.append(u)
        self._settle()
