"""The encryption plugin's sealing hooks, registered only when something is sealed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from xlib_pipeline import PayloadRef, RunContext, hookimpl

from ._envelope import NONCES, PREFIX

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
        last = self.p._last_marked
        if last is not None and last[0] is run.tasks and not last[1]:
            return  # no task of this pipeline version is marked: nothing to validate
        self.p.validate_pipeline(pipeline, run)

    @hookimpl
    def before_pipeline(self, run: RunContext) -> None:
        self.p.before_pipeline(run)

    @hookimpl
    def after_pipeline(self, run: RunContext, result: Any) -> None:
        self.p.after_pipeline(run, result)

    @hookimpl
    def encrypt(self, data: bytes, ref: PayloadRef) -> bytes | None:
        """:meth:`EncryptionPlugin.encrypt <._plugin.EncryptionPlugin.encrypt>` in one
        frame (the same bytes as ``Envelope.seal_noting_key``): a stream seals several
        payloads per micro-batch, and each call and lookup between the hook and AES-GCM
        cost more than the cipher."""
        p = self.p
        if not (p.at_rest or (ref.pipeline, ref.task) in p._marked):
            return None
        env = p._envelope or p.envelope
        found = env._seal.get((ref.tenant or "", ref.run_id if env.per_run_keys else None))
        header, aead, kid = found if found is not None else env.sealing_key(ref)
        try:
            nonce = NONCES.q.popleft()
        except IndexError:
            nonce = NONCES.take()
        blob = header + nonce + aead.encrypt(nonce, data, PREFIX + ref.aad())
        if ref.kind == "output":
            seen = p._seen.get(ref.run_id)
            if seen is not None:
                seen[ref.task] = kid or "?"
        return blob

    @hookimpl
    def encrypt_stream(self, ref: PayloadRef) -> Sealer | None:
        return self.p.encrypt_stream(ref)
