"""Crypto-shredding (GDPR Art. 17, right to erasure): destroy one tenant's data keys.

Every stored output and error text of the tenant sealed by this plugin carries its data key
wrapped under a master key in its header, and so does every blob (a large output in the blob
store); shredding rewrites each header without the wrapped key (and without a master key id),
so the sealed payload stays but can never be decrypted, whatever master keys survive.
Outputs of the tenant stored unencrypted are overwritten the same way, and its error texts
stored in clear are erased. Reading shredded data raises
:class:`~xlib_pipeline.DataShreddedError`. Other tenants are untouched.

Shredding is an administrative action: it needs ``manage_keys`` on the tenant (the
``check_access`` hook decides: tenancy's RBAC when it is on) and is recorded through the
``record_admin_action`` hook (the audit trail's ``keys.shred`` record, when audit is on).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import attrs

from xlib_pipeline import (
    ENCRYPTED_MAGIC,
    PipelineManager,
    StoreError,
    check_tenant_id,
)

from ._envelope import SHREDDED_KEY_ID, _header, is_shredded, shredded

#: What erased error texts read as afterwards.
ERASED = "<erased: tenant data was crypto-shredded>"


@attrs.frozen(kw_only=True)
class ShredReport:
    """What a shred did for one tenant."""

    tenant: str
    #: Encrypted outputs whose data key was destroyed.
    shredded: int
    #: Outputs stored unencrypted, overwritten.
    plaintext_erased: int
    #: Outputs and error texts already shredded before.
    already: int
    #: Error texts and tracebacks: encrypted ones shredded plus clear ones erased.
    texts_erased: int
    #: Encrypted blobs (outputs past ``store.blobs.threshold``) whose data key was destroyed.
    blobs_shredded: int = 0
    #: Whether a plugin recorded the shred (``record_admin_action``: the audit trail).
    audited: bool


def shred_tenant(
    manager: PipelineManager, tenant: str, *, principal: str | None = None
) -> ShredReport:
    """Destroy ``tenant``'s data keys in ``manager``'s run store; see the module doc.

    Raises ``ValueError`` for a malformed tenant id, ``SecurityError`` when ``principal``
    may not manage the tenant's keys, ``StoreError`` without a run store.
    """
    check_tenant_id(tenant, what="the tenant to shred")
    store = manager.store
    if store is None:
        raise StoreError("shredding needs a run store: configure {'store': {'path': ...}}")
    who = manager.check_access(
        permission="manage_keys",
        tenant=tenant,
        action=f"keys shred --tenant {tenant}",
        principal=principal,
    )
    done = plain = already = texts = 0
    for run_id, task, owner, blob in list(store.iter_outputs()):
        if owner != tenant:
            continue
        blob = bytes(blob)
        if blob.startswith(ENCRYPTED_MAGIC):
            if is_shredded(blob):
                already += 1
                continue
            store.replace_output(run_id, task, shredded(blob))
            done += 1
        else:
            # Never encrypted: nothing to shred cryptographically, so erase it outright
            # (a shredded header over no payload reads as shredded too).
            store.replace_output(run_id, task, _header(SHREDDED_KEY_ID, b"") + bytes(28))
            plain += 1
    for where, ref, sealed in list(store.iter_sealed_texts()):
        if ref.tenant != tenant or not bytes(sealed).startswith(ENCRYPTED_MAGIC):
            continue
        if is_shredded(bytes(sealed)):
            already += 1
            continue
        store.replace_sealed_text(where, shredded(bytes(sealed)))
        texts += 1
    texts += store.redact_tenant_texts(tenant, ERASED)  # texts stored in clear
    blobs_done, blobs_already = _shred_blobs(store, tenant)
    already += blobs_already
    plugin = manager.get_plugin("encryption")
    envelope = getattr(plugin, "envelope", None)
    if envelope is not None:
        envelope.forget_tenant(tenant)
    report = ShredReport(
        tenant=tenant,
        shredded=done,
        plaintext_erased=plain,
        already=already,
        texts_erased=texts,
        blobs_shredded=blobs_done,
        audited=manager.hooks.has["record_admin_action"],
    )
    manager.hooks.record_admin_action(
        action="keys.shred",
        details={
            "store": str(store.path),
            "tenant": tenant,
            "outputs_shredded": done,
            "plaintext_outputs_erased": plain,
            "texts_erased": texts,
            "blobs_shredded": blobs_done,
            "already_shredded": already,
        },
        principal=who,
    )
    return report


def _shred_blobs(store: Any, tenant: str) -> tuple[int, int]:
    """Destroy the data key in the header of every encrypted blob sealed for ``tenant``
    (its chunks stay, undecryptable). Blobs are scoped per tenant, so no other tenant's
    output shares one. Returns (shredded now, shredded before)."""
    from ._stream import shredded_header, tenant_of_header

    blobs = getattr(store, "blobs", None)
    if blobs is None:
        return 0, 0
    done = already = 0
    for name in store.blob_names():
        try:
            header = blobs.header(name)
        except StoreError:
            continue  # removed meanwhile (a prune), or never written
        if not header.startswith(ENCRYPTED_MAGIC):
            continue  # a plaintext blob: its output row was erased above
        where = f"blob {name!r}"
        if tenant_of_header(header, where) != tenant:
            continue
        new = shredded_header(header, where)
        if new is None:
            already += 1
            continue
        blobs.replace_header(name, new)
        done += 1
    return done, already


def shred_command(args: argparse.Namespace) -> int:
    """``xlib-pipeline keys shred --tenant T``."""
    from xlib_pipeline.loading import default_store_path, load_config, with_store

    config = load_config(args.config)
    store = args.store
    if store is None and "store" not in config:
        store = str(default_store_path())
    if store is not None and not Path(store).exists():
        raise StoreError(f"run store {store!r} does not exist", path=store)
    config = with_store(config, store)
    with PipelineManager(config) as pm:
        report = shred_tenant(pm, args.tenant, principal=args.principal)
    print(
        f"shredded tenant {report.tenant!r}: {report.shredded} data key(s) destroyed, "
        f"{report.blobs_shredded} large output(s) (blobs) shredded, "
        f"{report.plaintext_erased} unencrypted output(s) erased, {report.texts_erased} "
        f"error text(s) erased, {report.already} already shredded"
        + (
            "; audited (keys.shred)"
            if report.audited
            else "; NOT audited: no plugin records administrative actions (audit is off)"
        )
    )
    return 0
