"""``xlib-pipeline audit verify PATH`` and ``xlib-pipeline audit show PATH``.

Exit codes of ``verify``: 0 intact, 1 tampered (first bad record named), 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``verify`` and ``show`` sub-commands to the ``audit`` parser."""
    sub = parser.add_subparsers(dest="audit_command", required=True, metavar="ACTION")

    v = sub.add_parser("verify", help="check the hash chain and head anchor of a trail")
    v.add_argument("path", help="the trail file (its PATH.head must sit beside it)")
    keys = v.add_mutually_exclusive_group()
    keys.add_argument("--key", help="HMAC key of a keyed trail (prefer --key-env)")
    keys.add_argument("--key-env", help="environment variable holding the HMAC key")
    keys.add_argument("--key-file", help="file holding the HMAC key")
    v.add_argument("--head", help="head anchor file (default: PATH.head)")
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.add_argument(
        "--checkpoints",
        metavar="DIR",
        help="also check the signed checkpoints in DIR: detects a rollback of the trail and "
        "its head to an older consistent copy",
    )
    v.add_argument(
        "--public-key",
        help="the checkpoint signer's public key (PEM; default DIR/public-key.pem)",
    )

    s = sub.add_parser("show", help="list the records of a trail (rich table or JSON)")
    s.add_argument("path", help="the trail file")
    s.add_argument("--run", help="run id (or a prefix of it)")
    s.add_argument("--task", help="task (or audited function) name")
    s.add_argument("--tenant", help="only records of this tenant")
    s.add_argument("--action", help="action, e.g. task.finished, or a prefix like 'run.'")
    s.add_argument("--outcome", help="succeeded, failed, skipped ...")
    s.add_argument("--since", help="ISO-8601 time (inclusive; naive means UTC)")
    s.add_argument("--until", help="ISO-8601 time (inclusive)")
    s.add_argument("--limit", type=int, help="show only the last N matching records")
    s.add_argument("--json", action="store_true", help="print JSON lines instead of a table")


def _key(args: argparse.Namespace) -> bytes | None:
    if args.key is not None:
        return str(args.key).encode()
    if args.key_env:
        value = os.environ.get(args.key_env)
        if not value:
            raise _Usage(f"environment variable {args.key_env!r} is not set or empty")
        return value.encode()
    if args.key_file:
        try:
            return Path(args.key_file).read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise _Usage(f"cannot read key file {args.key_file!r}: {exc.strerror}") from exc
    return None


class _Usage(Exception):
    pass


def run(args: argparse.Namespace) -> int:
    """Dispatch ``audit verify`` / ``audit show``."""
    try:
        if args.audit_command == "verify":
            return _verify(args)
        return _show(args)
    except _Usage as exc:
        print(f"xlib-pipeline audit: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"xlib-pipeline audit: no such file: {exc.filename}", file=sys.stderr)
        return 2
    except IsADirectoryError as exc:
        print(
            f"xlib-pipeline audit: {exc.filename!r} is a directory; expected an audit trail "
            "file (.jsonl)",
            file=sys.stderr,
        )
        return 2
    except OSError as exc:
        print(f"xlib-pipeline audit: cannot read {exc.filename!r}: {exc.strerror}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"xlib-pipeline audit: {exc}", file=sys.stderr)
        return 2


def _verify(args: argparse.Namespace) -> int:
    from ._verify import is_series, verify, verify_series  # not at --help: rfc8785

    report: Any
    if args.head is None and is_series(args.path):  # a rotated trail: the whole series
        report = verify_series(args.path, _key(args))
    else:
        report = verify(args.path, _key(args), head=args.head)
    problems: list[str] = []
    checked = 0
    if args.checkpoints:
        from ._checkpoint import verify_checkpoints

        problems, checked = verify_checkpoints(args.path, args.checkpoints, args.public_key)
    ok = report.ok and not problems
    if args.json:
        out = report.as_dict()
        if args.checkpoints:
            out["checkpoints"] = {"checked": checked, "problems": problems}
        out["ok"] = ok
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        print(str(report), file=sys.stdout if report.ok else sys.stderr)
        if args.checkpoints and not problems:
            print(f"OK {checked} signed checkpoint(s) in {args.checkpoints} hold")
        for p in problems:
            print(f"CHECKPOINT {p}", file=sys.stderr)
    return 0 if ok else 1


def _show(args: argparse.Namespace) -> int:
    from ._verify import read

    records = list(
        read(
            args.path,
            run=args.run,
            task=args.task,
            tenant=args.tenant,
            action=args.action,
            outcome=args.outcome,
            since=args.since,
            until=args.until,
        )
    )
    if args.limit is not None:
        records = records[-args.limit :] if args.limit > 0 else []
    if args.json:
        out = sys.stdout
        for rec in records:
            out.write(json.dumps(rec, sort_keys=True) + "\n")
        return 0
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title="audit trail")
    columns = ("seq", "ts", "action", "outcome", "pipeline", "run", "task", "tenant", "actor")
    for col in columns:
        table.add_column(col, overflow="fold")
    for rec in records:
        # Text, never markup: task names and errors in the trail are data ("t[/]" is a name)
        table.add_row(*(Text(_cell(rec, col)) for col in columns))
    Console().print(table)
    # Plain print: rich would wrap a long path at the terminal's width.
    print(f"({len(records)} record(s)) in {args.path}")
    return 0


def _cell(rec: dict[str, Any], col: str) -> str:
    if col == "run":
        v = rec.get("run_id")
        return str(v)[:13] if v else "-"
    if col == "task":
        v = rec.get("task") or rec.get("function")
        op = rec.get("operation")
        text = str(v) if v else "-"
        return f"{text} [{op}]" if op else text
    if col == "outcome":
        v = rec.get("outcome")
        err = rec.get("error_class")
        attempt = rec.get("attempt")
        text = str(v) if v is not None else "-"
        if attempt and attempt > 1:
            text += f" (attempt {attempt})"
        return f"{text}: {str(err).rsplit('.', 1)[-1]}" if err else text
    if col == "ts":
        v = rec.get("ts")
        return str(v)[:23].replace("T", " ") if v else "-"
    v = rec.get(col)
    return "-" if v is None else str(v)
