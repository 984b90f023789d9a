"""``xlib-pipeline evidence``: keygen, build, verify, show."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from xlib_pipeline import CliCommand, PipelineManager, StoreError
from xlib_pipeline.loading import default_store_path, load_config, open_store

from . import _keys
from ._plugin import evidence_dir


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="evidence_command", required=True, metavar="ACTION")
    kg = sub.add_parser("keygen", help="write an Ed25519 signing key pair (private key 0600)")
    kg.add_argument(
        "path",
        nargs="?",
        help=f"private key file (default {_keys.default_key_file()}); the public key goes "
        "beside it as <name>.pub.pem",
    )
    kg.add_argument("--force", action="store_true", help="replace an existing key")
    b = sub.add_parser("build", help="write the evidence pack of a stored run")
    b.add_argument("run_id", help="a run id, a unique prefix, or 'latest'")
    b.add_argument("-o", "--output", required=True, help="folder to write the pack into")
    b.add_argument("--store", help="run store file (default: the config's / data folder's)")
    b.add_argument("--config", help="config file (.json, .toml, .yaml)")
    b.add_argument("--key", help="signing key file (default: evidence.signing_key_file)")
    v = sub.add_parser("verify", help="verify an evidence pack offline (exit 0 only if valid)")
    v.add_argument("folder", help="the evidence pack folder")
    v.add_argument(
        "--public-key",
        help="the signer's public key (PEM); what an auditor should use instead of the "
        "pack's own public-key.pem",
    )
    v.add_argument("--audit-key-file", help="HMAC key of a keyed audit trail")
    v.add_argument("--json", action="store_true", help="print the checks as JSON")


def _keygen(args: argparse.Namespace) -> int:
    path = args.path or _keys.default_key_file()
    priv, pub, kid = _keys.generate(path, force=args.force)
    print(f"wrote {priv} (mode 0600) and {pub}")
    print(f"key id {kid}")
    print(f"configure: evidence: {{signing_key_file: {priv}}}; give auditors {pub}")
    return 0


def _build_config(args: argparse.Namespace) -> dict[str, Any]:
    config = load_config(args.config) if args.config else {}
    store = args.store
    section = config.get("store")
    if store is None and not (isinstance(section, dict) and section.get("path")):
        store = str(default_store_path())
    if store is not None:
        if not Path(store).exists():
            raise StoreError(f"run store {store!r} does not exist", path=store)
        config["store"] = {"path": store}
    return config


def _with_sources(config: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Point the audit and lineage plugins at the files the run recorded, when the config
    does not configure them: they contribute the pack's excerpts from there."""
    ev = config.get("evidence") if isinstance(config.get("evidence"), dict) else {}
    folder = evidence_dir(config["store"]["path"], (ev or {}).get("dir"))
    matches = sorted(folder.glob(f"{run_id}*.dsse.json")) if folder.is_dir() else []
    if len(matches) != 1:
        return config
    from . import _dsse

    try:
        pred = _dsse.unverified_statement(json.loads(matches[0].read_text()))["predicate"]
    except (ValueError, KeyError, _dsse.EnvelopeError):
        return config
    secs = pred.get("sections") or {}
    trail = (secs.get("audit") or {}).get("trail")
    if trail and not any(k in config for k in ("audit", "audit_logging", "audit_everything")):
        # Read only (the excerpt): an unkeyed trail is opened unkeyed, a keyed one with the
        # default key file (configure audit yourself for another key).
        keyed = (secs.get("audit") or {}).get("alg") != "sha256"
        config["audit"] = {"path": trail, **({} if keyed else {"keyed": False})}
    file = (secs.get("lineage") or {}).get("file")
    if file and not any(k in config for k in ("lineage", "data_lineage")):
        config["lineage"] = {"transport": {"type": "file", "path": file}}
    return config


def _build(args: argparse.Namespace) -> int:
    from ._pack import build

    config = _build_config(args)
    if args.run_id == "latest":
        probe = open_store(config["store"]["path"])
        try:
            newest = probe.list_runs(limit=1)
        finally:
            probe.close()
        if not newest:
            raise StoreError("the run store holds no run yet", path=config["store"]["path"])
        args.run_id = newest[0].run_id
    config = _with_sources(config, args.run_id)
    ev = config.get("evidence")
    key_file = args.key or (ev.get("signing_key_file") if isinstance(ev, dict) else None)
    key_path = Path(key_file).expanduser() if key_file else _keys.default_key_file()
    key = _keys.load_private(key_path)
    if isinstance(ev, dict):  # building never signs runs; only the pack
        config["evidence"] = {**ev, "enabled": False}
    with PipelineManager(config) as pm:
        folder = build(pm, args.run_id, args.output, key)
    from . import _dsse

    print(f"wrote evidence pack {folder} (signed by key {_dsse.key_id(key.public_key())})")
    pub = _keys.public_file_of(key_path)
    print(f"verify: xlib-pipeline evidence verify {folder} --public-key {pub}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from ._verify import verify

    audit_key = Path(args.audit_key_file).read_bytes().strip() if args.audit_key_file else None
    result = verify(args.folder, public_key=args.public_key, audit_key=audit_key)
    if args.json:
        print(
            json.dumps(
                {
                    "ok": bool(result),
                    "checks": [
                        {"check": c.name, "file": c.file, "ok": c.ok, "detail": c.detail}
                        for c in result.checks
                    ],
                },
                indent=2,
            )
        )
    else:
        for c in result.checks:
            mark = "ok  " if c.ok else "FAIL"
            extra = f": {c.detail}" if c.detail else ""
            print(f"{mark} {c.name:<12} {c.file}{extra}")
        if result:
            print(f"evidence pack {args.folder} verifies")
        else:
            names = sorted({f"{c.name} ({c.file})" for c in result.failures})
            print(
                f"evidence pack {args.folder} does NOT verify: {', '.join(names)}", file=sys.stderr
            )
    return 0 if result else 1


def _run(args: argparse.Namespace) -> int:
    action = args.evidence_command
    if action == "keygen":
        return _keygen(args)
    if action == "build":
        return _build(args)
    return _verify(args)


def evidence_command() -> CliCommand:
    """The ``evidence`` sub-command record."""
    return CliCommand(
        name="evidence",
        help="signed run evidence: keygen, build a pack, verify a pack offline",
        add_arguments=_add_arguments,
        run=_run,
    )
