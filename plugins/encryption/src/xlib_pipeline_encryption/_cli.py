"""``xlib-pipeline keys``: generate, add, list and rotate master keys."""

from __future__ import annotations

import argparse
import json
import sys

from xlib_pipeline import CliCommand

from ._keyring import Keyring, add_key, generate_key_file


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    gen = sub.add_parser("generate", help="create a key file with one new master key (0600)")
    gen.add_argument("path", help="key file to create (refuses to overwrite)")
    add = sub.add_parser("add", help="add a new master key to a key file; it becomes active")
    add.add_argument("path", help="the key file to add a key to")
    lst = sub.add_parser("list", help="list master key ids (never the keys)")
    src = lst.add_mutually_exclusive_group(required=True)
    src.add_argument("path", nargs="?", help="key file")
    src.add_argument("--env", help="environment variable holding the keyring")
    lst.add_argument("--json", action="store_true", help="print JSON")
    rot = sub.add_parser(
        "rotate",
        help="re-wrap stored data keys under the active master key (old keys keep decrypting "
        "until then)",
    )
    rot.add_argument("--config", help="config file (.json, .toml, .yaml) naming the keyring")
    rot.add_argument("--store", help="run store file (default: the config's / data folder's)")
    rot.add_argument("--dry-run", action="store_true", help="count, change nothing")
    rot.add_argument("--principal", help="who rotates (checked when access control is on)")
    sh = sub.add_parser(
        "shred",
        help="crypto-shred a tenant (right to erasure): destroy its data keys in the run store; "
        "its outputs and error texts can never be read again",
    )
    sh.add_argument("--tenant", required=True, help="the tenant whose data keys are destroyed")
    sh.add_argument("--config", help="config file (.json, .toml, .yaml)")
    sh.add_argument("--store", help="run store file (default: the config's / data folder's)")
    sh.add_argument("--principal", help="who shreds (checked when access control is on)")


def _run(args: argparse.Namespace) -> int:
    action = args.keys_command
    if action == "generate":
        key = generate_key_file(args.path)
        print(f"created {args.path} (mode 0600) with master key {key.id}")
        return 0
    if action == "add":
        key = add_key(args.path)
        print(f"added master key {key.id} to {args.path}; it now encrypts new data keys")
        print("run 'xlib-pipeline keys rotate' to re-wrap stored data keys", file=sys.stderr)
        return 0
    if action == "list":
        ring = Keyring.from_env(args.env) if args.env else Keyring.from_file(args.path)
        ids = list(ring.key_ids)
        if args.json:
            print(json.dumps({"source": ring.source, "active": ring.active_key_id, "keys": ids}))
        else:
            for kid in ids:
                print(kid + ("  (active)" if kid == ring.active_key_id else ""))
        return 0
    if action == "shred":
        from ._shred import shred_command

        return shred_command(args)
    from ._rotate import rotate_command

    return rotate_command(args)


def keys_command() -> CliCommand:
    """The ``keys`` sub-command record."""
    return CliCommand(
        name="keys",
        help="manage encryption master keys (generate, add, list, rotate, shred)",
        add_arguments=_add_arguments,
        run=_run,
    )
