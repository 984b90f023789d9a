"""``xlib-pipeline graph``, ``plugins`` and ``render``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .._manager import PipelineManager
from ..exceptions import UsageError
from ..loading import load_pipeline
from ._config import cli_config


def build_manager(args: argparse.Namespace, module: Any = None) -> PipelineManager:
    """The manager for a CLI invocation: ``--config`` (or ``$XLIB_PIPELINE_CONFIG``) or the
    file's ``PIPELINE_CONFIG``, with ``XLIB_PIPELINE_*`` environment overrides."""
    return PipelineManager(cli_config(args, module))


def cmd_graph(args: argparse.Namespace) -> int:
    pipeline, _ = load_pipeline(args.target)
    pipeline.validate()
    print(pipeline.to_mermaid() if args.format == "mermaid" else pipeline.to_dot(), end="")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    pm = PipelineManager(entry_points=True)
    infos = pm.plugins
    if args.json:
        rows = [
            {
                "name": i.name,
                "dist": i.dist,
                "version": i.version,
                "hooks": list(i.hooks),
                "builtin": i.builtin,
            }
            for i in infos
        ]
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title="xlib-pipeline plugins")
    for col in ("name", "distribution", "version", "hooks"):
        table.add_column(col)
    for i in infos:
        cells = (
            i.name + (" (builtin)" if i.builtin else ""),
            i.dist or "-",
            i.version or "-",
            ", ".join(i.hooks),
        )
        table.add_row(*map(Text, cells))
    Console().print(table)
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    pipeline, module = load_pipeline(args.target)
    pm = build_manager(args, module)
    target = pm.render_targets.get(args.render_target)
    if target is None:  # pragma: no cover - argparse restricts choices
        raise UsageError(f"unknown render target {args.render_target!r}")
    files = target.render(pipeline, pm, args)
    out = getattr(args, "output", None)
    if out:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (folder / name).write_text(text)
        print(f"wrote {len(files)} file(s) to {folder}", file=sys.stderr)
    else:
        docs = [text.strip() for text in files.values()]
        print("\n---\n".join(d.removeprefix("---").strip() for d in docs))
    return 0
