"""The encryption plugin's sealing hooks, registered only when something is sealed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from xlib_pipeline import PayloadRef, RunContext, hookimpl

if TYPE_CHECKING:  # pragma: no cover
    from ._plugin import EncryptionPlugin
    from ._stream import Sealer


class Sealing:
    """The per-run hooks and the sealing providers (``encrypt``, ``encrypt_stream``);
    registered by ``configure`` (encryption at rest) or by ``prepare_run`` (a task marked
    ``encrypt``), so an unconfigured plugin costs nothing per run or output."""

    def __init__(self, plugin: EncryptionPlugin) -> None:
        self.p = plugin

    @hookimpl
    def validate_pipeline(self, pipeline: Any, run: RunContext) -> None:
        self.p.validate_pipeline(pipeline, run)

    @hookimpl
    def before_pipeline(self, run: RunContext) -> None:
        self.p.before_pipeline(run)

    @hookimpl
    def after_pipeline(self, run: RunContext, result: Any) -> None:
        self.p.after_pipeline(run, result)

    @hookimpl
    def encrypt(self, data: bytes, ref: PayloadRef) -> bytes | None:
        return self.p.encrypt(data, ref)

    @hookimpl
    def encrypt_stream(self, ref: PayloadRef) -> Sealer | None:
        return self.p.encrypt_stream(ref)
