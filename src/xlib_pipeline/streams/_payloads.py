"""Stream payloads at rest and side outputs: checkpointed outputs and window state pass through the
``encrypt``/``decrypt`` hooks (the encryption plugin binds them to the stream and tenant)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._records import PayloadRef
from .._store import dump_output, load_output
from ..exceptions import StreamError
from ._protocol import Checkpoint, Sink, Source

if TYPE_CHECKING:  # pragma: no cover
    from .._manager import PipelineManager
    from .._task import Pipeline
    from ._windows import WindowOperator


class StreamPayloads:
    """Encryption of what a stream checkpoints (mixed into :class:`Stream`)."""

    pm: PipelineManager
    pipeline: Pipeline
    name: str
    stream_run_id: str | None
    windows: WindowOperator | None
    _tenant: str | None
    late_sink: Sink | None
    source: Source
    checkpoint: Checkpoint | None

    def _side_output(self, seq: int, late: list[Any]) -> None:
        """Late records: to the late sink (if any), counted, and logged for the audit."""
        from .._events import get_logger

        get_logger(pipeline=self.pipeline.name, stream=self.name).warning(
            "stream.late_records", batch=seq, count=len(late)
        )
        if self.late_sink is not None:
            assert self.checkpoint is not None
            self.late_sink.write(late, Checkpoint(seq=seq, offset=None, position=None), self.source)

    def _batch_error(self, seq: int, batch: Any, result: Any) -> StreamError:
        """The stream's error for failed batch ``seq``, quoting its run's error. A task
        error may quote a record: it goes through redaction (PII detectors), as a run's
        does; when the run's error texts are stored sealed (encryption), the stored copy
        of the stream's error (``runs show``, the ``failed`` event) points to the run
        instead of quoting it in clear (``stored``)."""
        from .._store_recorder import _sealing

        err = result.error
        head = (
            f"stream {self.name!r}: batch {seq} (offsets {batch.start}..{batch.end}, "
            f"run {result.run_id}) {result.status}: {type(err).__name__}: "
        )
        tail = f"; batches up to {seq - 1} are committed, a restart retries batch {seq}"
        exc = StreamError(head + self.pm.redact(str(err), tenant=self._tenant) + tail)
        if _sealing(self.pm.hooks):
            sealed = f"(stored sealed: xlib-pipeline runs show {result.run_id})"
            exc.stored = f"StreamError: {head}{sealed}{tail}"  # type: ignore[attr-defined]
        return exc

    # -- payloads at rest -------------------------------------------------------------------

    def _ref(self, kind: str) -> PayloadRef:
        return PayloadRef(
            run_id=self.stream_run_id or self.name,
            pipeline=self.pipeline.name,
            task=f"stream:{self.name}",
            tenant=self._tenant,
            kind=kind,
        )

    def _protect(self, value: Any, kind: str, seq: int) -> bytes | None:
        if not self.pm._record_outputs():
            return None
        raw = dump_output(value)
        if raw is None:
            return None
        blob: bytes = self.pm.hooks.encrypt(data=raw, ref=self._ref(kind))
        return blob

    def _window_blob(self, seq: int) -> bytes | None:
        if not self.windows:
            return None
        raw = dump_output(self.windows.state())
        if raw is None:  # pragma: no cover - window state is plain data
            raise StreamError(f"stream {self.name!r}: window state cannot be serialized")
        blob: bytes = self.pm.hooks.encrypt(data=raw, ref=self._ref("window_state"))
        return blob

    def _decrypt_state(self, blob: bytes | None) -> Any:
        if blob is None:
            return None
        data = self.pm.hooks.decrypt(data=blob, ref=self._ref("window_state"))
        return load_output(data)
