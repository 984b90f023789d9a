"""``xlib-pipeline cache list | clear [--pipeline P] [--task T] [--older-than D]``."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

from ._config import data_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="cache_command", required=True)
    for name, text in (("list", "list cache entries"), ("clear", "delete cache entries")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument(
            "--store",
            help="run store file or server URL (postgresql://...; default: "
            "$XLIB_PIPELINE_HOME/runs.sqlite)",
        )
        sp.add_argument("--pipeline", help="only entries of this pipeline")
        sp.add_argument("--task", help="only entries of this task")
        sp.add_argument("--older-than", metavar="DURATION", help="e.g. 30d, 12h, 15m, 90s")


def run(args: argparse.Namespace) -> int:
    from ._prune import parse_duration
    from ._tables import open_cache
    from .loading import is_store_url, open_store

    target = args.store if args.store else str(data_dir() / "runs.sqlite")
    if not is_store_url(target) and not Path(target).is_file():
        print(f"no run store at {target!r}")
        return 1
    older = parse_duration(args.older_than) if args.older_than is not None else None
    run_store = open_store(target)
    try:
        store = open_cache(run_store)
    except BaseException:
        run_store.close()
        raise
    try:
        if args.cache_command == "clear":
            n = store.clear(args.pipeline, args.task, older)
            print(f"cleared {n} cache entr{'y' if n == 1 else 'ies'}")
            return 0
        entries = store.list(args.pipeline, args.task, older)
        print(
            f"{'key':16}  {'tenant':12}  {'pipeline':16}  {'task':16}  {'created (UTC)':19}  size"
        )
        for e in entries:
            created = datetime.fromtimestamp(e.created, UTC).strftime("%Y-%m-%d %H:%M:%S")
            print(
                f"{e.key[:16]}  {e.tenant or '-':12}  {e.pipeline:16}  {e.task:16}  "
                f"{created}  {e.size}"
            )
        print(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}")
        return 0
    finally:
        store.close()
        run_store.close()
