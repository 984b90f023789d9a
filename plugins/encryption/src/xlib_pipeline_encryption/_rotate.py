"""Key rotation over the run store: re-wrap every stored data key under the active key."""

from __future__ import annotations

import argparse
from pathlib import Path

import attrs

from xlib_pipeline import ENCRYPTED_MAGIC, PayloadRef, PipelineManager, SecurityError, StoreError

from ._stream import rewrap_header


@attrs.frozen(kw_only=True)
class RotationReport:
    """What a rotation did: outputs scanned, re-wrapped, already current, not encrypted."""

    scanned: int
    rewrapped: int
    current: int
    plaintext: int
    active_key_id: str


def rotate_store(manager: PipelineManager, *, dry_run: bool = False) -> RotationReport:
    """Re-wrap the data key of every encrypted output (and error text) in the run store.

    Each ciphertext is authenticated before its header is rewritten, and the sealed payload
    is left as it was, so rotation never re-encrypts data and old runs still resume. After
    it, master keys older than the active one can be retired from the keyring.
    """
    plugin = manager.get_plugin("encryption")
    if plugin is None:
        raise SecurityError("key rotation needs the encryption plugin to be enabled")
    store = manager.store
    if store is None:
        raise StoreError("key rotation needs a run store: configure {'store': {'path': ...}}")
    kms = plugin.kms()
    pipelines: dict[str, str] = {}
    scanned = rewrapped = current = plaintext = 0
    for run_id, task, tenant, blob in store.iter_outputs():
        scanned += 1
        pipeline = pipelines.get(run_id)
        if pipeline is None:
            pipeline = pipelines[run_id] = store.get_run(run_id).pipeline
        ref = PayloadRef(run_id=run_id, pipeline=pipeline, task=task, tenant=tenant)
        blob = bytes(blob)
        if not blob.startswith(ENCRYPTED_MAGIC):
            plaintext += 1
            continue
        new = plugin.rewrap(blob, ref)
        if new is None:
            current += 1
            continue
        rewrapped += 1
        if not dry_run:
            store.replace_output(run_id, task, new)
    # Error texts of failed attempts are stored encrypted too (same envelope, own AAD kind).
    for where, text_ref, sealed in store.iter_sealed_texts():
        if not sealed.startswith(ENCRYPTED_MAGIC):
            continue
        scanned += 1
        new = plugin.rewrap(sealed, text_ref)
        if new is None:
            current += 1
            continue
        rewrapped += 1
        if not dry_run:
            store.replace_sealed_text(where, new)
    # Blobs (large outputs): only their header is rewritten; the sealed chunks are copied.
    blobs = store.blobs
    for name in store.blob_names():
        try:
            header = blobs.header(name)
        except StoreError:
            continue  # removed meanwhile (a prune), or never written
        scanned += 1
        if not header.startswith(ENCRYPTED_MAGIC):
            plaintext += 1
            continue
        new = rewrap_header(kms, header, f"blob {name!r}")
        if new is None:
            current += 1
            continue
        rewrapped += 1
        if not dry_run:
            blobs.replace_header(name, new)
    return RotationReport(
        scanned=scanned,
        rewrapped=rewrapped,
        current=current,
        plaintext=plaintext,
        active_key_id=kms.active_key_id,
    )


def rotate_command(args: argparse.Namespace) -> int:
    """``xlib-pipeline keys rotate``."""
    from xlib_pipeline.loading import default_store_path, load_config, with_store

    config = load_config(args.config)
    store = args.store
    if store is None and "store" not in config:
        store = str(default_store_path())
    if store is not None and not Path(store).exists():
        raise StoreError(f"run store {store!r} does not exist", path=store)
    config = with_store(config, store)
    with PipelineManager(config) as pm:
        _authorize(pm, args)
        report = rotate_store(pm, dry_run=args.dry_run)
    verb = "would re-wrap" if args.dry_run else "re-wrapped"
    print(
        f"{verb} {report.rewrapped} data key(s) under master key {report.active_key_id}; "
        f"{report.current} already current, {report.plaintext} not encrypted, "
        f"{report.scanned} stored output(s) scanned"
    )
    return 0


def _authorize(pm: PipelineManager, args: argparse.Namespace) -> None:
    """Rotating keys needs ``manage_keys``, as the ``check_access`` hook decides (tenancy's
    RBAC when it is on; allowed when no plugin controls access)."""
    pm.check_access(
        permission="manage_keys",
        tenant=None,
        action="keys rotate",
        principal=getattr(args, "principal", None),
    )
