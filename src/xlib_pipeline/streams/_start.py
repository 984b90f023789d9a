"""Where a stream starts: a new stream, a restart after its last checkpoint, or over from
the start (mixed into :class:`~._engine.Stream`)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from .._tables import CheckpointTable, StreamRecord
from ..exceptions import StreamError
from ._batch import brief_offset
from ._payloads import StreamPayloads
from ._protocol import Checkpoint, Sink


class StreamStart(StreamPayloads):
    """Opening a stream at its checkpoint (mixed into :class:`~._engine.Stream`)."""

    from_start: bool
    dead_letter: Sink | None
    sink: Sink
    records: int
    batches: int
    outputs: int
    late: int
    dead: int
    lag: int | None
    _ckpt: CheckpointTable | None
    _opened: bool
    run_kwargs: dict[str, Any]

    def _event(self, event: str, info: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def _prepare(self) -> None:
        ckpt = self._ckpt
        assert ckpt is not None
        rec = ckpt.load(self.name)
        if rec is not None and rec.pipeline != self.pipeline.name:
            raise StreamError(
                f"stream {self.name!r} in {str(ckpt.path)!r} belongs to pipeline "
                f"{rec.pipeline!r}, not {self.pipeline.name!r}; choose another name= (CLI: "
                "--name)"
            )
        if rec is not None and rec.tenant != self._tenant:  # nor continued, nor wiped
            raise StreamError(
                f"stream {self.name!r} in {str(ckpt.path)!r} runs for tenant {rec.tenant!r}, "
                f"not {self._tenant!r}: its checkpoint is that tenant's; choose another name= "
                "(CLI: --name), or give its tenant_id= (CLI: --tenant)"
            )
        if rec is not None:  # its checkpoint holds its outputs and window state
            self.pm.check_access(
                permission="read_data",
                tenant=rec.tenant,
                action=f"continue stream {self.name!r}",
                principal=self.run_kwargs.get("principal"),
            )
        adopted = False
        if rec is None or self.from_start:
            origin_ckpt = None
            if rec is not None:  # start over: back to where the sink stood originally
                origin_ckpt = Checkpoint(seq=0, offset=None, position=rec.origin)
            self.sink.open(origin_ckpt)
            rewind = getattr(self.source, "from_start", None)
            if rec is not None and callable(rewind):  # a broker group goes back to the start
                rewind()
            for side in (self.late_sink, self.dead_letter):
                if side is not None:
                    side.open(None)
            self.stream_run_id = str(uuid.uuid4())
            ckpt.create(
                name=self.name,
                pipeline=self.pipeline.name,
                source=self.source.url,
                sink=self.sink.url,
                origin=self.sink.position(),
                tenant=self._tenant,
                lineage_run=self.stream_run_id,
            )
            self._opened = True
            rec = ckpt.load(self.name)
            assert rec is not None
        else:
            if rec.source != self.source.url:  # the checkpoint's offset is the old source's
                from .._events import get_logger

                get_logger(pipeline=self.pipeline.name, stream=self.name).warning(
                    "stream.source_changed",
                    before=rec.source,
                    now=self.source.url,
                    offset=brief_offset(rec.offset),
                )
            ckpt.reopen(self.name, source=self.source.url, sink=self.sink.url)
            self._opened = True
            self.stream_run_id = rec.lineage_run
            newer = self.sink.open(rec.checkpoint)
            for side in (self.late_sink, self.dead_letter):
                if side is not None:
                    side.open(None)
            if newer is not None and newer.seq > rec.seq:
                rec = self._adopt_sink_checkpoint(rec, newer)
                adopted = True
        self._restore(rec)
        if not adopted:  # (an adopted checkpoint's offset is sought already)
            self.source.seek(self.checkpoint.offset if self.checkpoint else None)
        self._event(
            "started",
            {
                "source": self.source.url,
                "sink": self.sink.url,
                "checkpoint": self.checkpoint.seq if self.checkpoint else 0,
                "offset": brief_offset(self.checkpoint.offset) if self.checkpoint else None,
                "resumed": self.checkpoint is not None and self.checkpoint.seq > 0,
            },
        )

    def _adopt_sink_checkpoint(self, rec: StreamRecord, newer: Checkpoint) -> StreamRecord:
        """The sink committed batches (in its own transaction) the store did not record
        before a crash: record them as one catch-up checkpoint and continue after it. Its
        records and outputs are the adopted batches' (``Sink.open``), when the sink knows;
        its lag is the source's once sought after them (``runs show`` and the monitor show
        it before any next batch)."""
        assert self._ckpt is not None
        counts = getattr(self.sink, "adopted_counts", None)
        records, outputs = (counts() if callable(counts) else None) or (0, 0)
        self.source.seek(newer.offset)
        self._ckpt.commit(
            self.name,
            checkpoint=newer,
            run_id=None,
            start=rec.offset,
            records=records,
            outputs=outputs,
            output=None,
            window_state=None,
            lag=self.source.lag(),
        )
        loaded = self._ckpt.load(self.name)
        assert loaded is not None
        return loaded

    def _restore(self, rec: StreamRecord) -> None:
        self.checkpoint = rec.checkpoint
        self.records = rec.records
        self.batches = rec.seq
        self.outputs = rec.outputs
        self.late = rec.late
        self.dead = rec.dead
        self.lag = rec.lag
        if self.windows:
            self.windows.restore(self._decrypt_state(rec.window_state))
