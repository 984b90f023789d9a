"""Reading lineage back from the file transport and rendering a run as Mermaid."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from xlib_pipeline import data_dir

from ._events import CLASSIFICATION_FACET, RUN_FACET


def read_events(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield the events of a lineage file (one JSON event per line; blank lines skipped)."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not a JSON event: {exc}") from exc


def run_events(events: Iterable[dict[str, Any]], run_id: str) -> list[dict[str, Any]]:
    """The events of pipeline run ``run_id`` and of its task runs, in file order."""
    out = []
    for e in events:
        run = e.get("run") or {}
        parent = (run.get("facets") or {}).get("parent") or {}
        if run.get("runId") == run_id or (parent.get("run") or {}).get("runId") == run_id:
            out.append(e)
    return out


def _label(text: str) -> str:
    """A quoted Mermaid label: quotes, ``#``, angle brackets and line breaks become entity
    codes, so a job or dataset name can neither end the label nor start a statement."""
    out = str(text).replace("#", "#35;")
    for ch, code in (('"', "#quot;"), ("<", "#lt;"), (">", "#gt;"), ("\r", "#13;"), ("\n", "#10;")):
        out = out.replace(ch, code)
    return '"' + out + '"'


def _one_line(text: str) -> str:
    return " ".join(str(text).splitlines())


def to_mermaid(events: list[dict[str, Any]], run_id: str) -> str:
    """Render a run's lineage as a Mermaid flowchart: jobs and datasets are nodes.

    Edges: dataset --> task (input), task --> dataset (output), task --> task (depends_on).
    Task nodes carry a class named after their final status; output datasets show the
    classification level when the classification facet is present.
    """
    pipeline = None
    pipeline_state = None
    tasks: dict[str, dict[str, Any]] = {}
    datasets: dict[tuple[str, str], str | None] = {}
    for e in events:
        job = e["job"]["name"]
        run = e["run"]
        facets = run.get("facets") or {}
        xf = facets.get(RUN_FACET) or {}
        if run["runId"] == run_id:
            pipeline = job
            if e.get("eventType") != "START":
                pipeline_state = e.get("eventType")
            continue
        task = xf.get("task") or job
        info = tasks.setdefault(task, {"status": "running", "upstream": [], "in": [], "out": []})
        deps = facets.get("jobDependencies") or {}
        if deps.get("upstream"):  # the standard facet: jobs named <pipeline>.<task>
            prefix = job[: len(job) - len(task)] if job.endswith(task) else ""
            info["upstream"] = [
                str(u["job"]["name"]).removeprefix(prefix) for u in deps["upstream"]
            ]
        elif xf.get("upstream"):  # files written before jobDependencies
            info["upstream"] = list(xf["upstream"])
        if e.get("eventType") != "START":
            info["status"] = xf.get("status") or e.get("eventType", "").lower()
        for d in e.get("inputs") or ():
            key = (d["namespace"], d["name"])
            datasets.setdefault(key, None)
            if key not in info["in"]:
                info["in"].append(key)
        for d in e.get("outputs") or ():
            key = (d["namespace"], d["name"])
            level = ((d.get("facets") or {}).get(CLASSIFICATION_FACET) or {}).get("level")
            if level or key not in datasets:
                datasets[key] = level or datasets.get(key)
            if key not in info["out"]:
                info["out"].append(key)
    lines = ["flowchart LR"]
    title = f"pipeline {pipeline or '?'} run {run_id}"
    if pipeline_state:
        title += f": {pipeline_state}"
    lines.append(f"  %% {_one_line(title)}")
    tid = {name: f"t{i}" for i, name in enumerate(tasks)}
    did = {key: f"d{i}" for i, key in enumerate(datasets)}
    for name, info in tasks.items():
        # a class name from the file: only word characters, never a statement
        status = re.sub(r"\W", "_", str(info["status"])) or "running"
        lines.append(f"  {tid[name]}[{_label(name)}]:::{status}")
    for key, level in datasets.items():
        sep = "" if key[1].startswith("/") else ":"
        text = f"{key[0]}{sep}{key[1]}" + (f" [{level}]" if level else "")
        lines.append(f"  {did[key]}[({_label(text)})]")
    for name, info in tasks.items():
        for up in info["upstream"]:
            if up in tid:
                lines.append(f"  {tid[up]} --> {tid[name]}")
        for key in info["in"]:
            lines.append(f"  {did[key]} -.-> {tid[name]}")
        for key in info["out"]:
            lines.append(f"  {tid[name]} -.-> {did[key]}")
    lines += [
        "  classDef succeeded fill:#d4f7d4,stroke:#2a2",
        "  classDef failed fill:#f7d4d4,stroke:#a22",
        "  classDef skipped fill:#eee,stroke:#999",
        "  classDef upstream_failed fill:#f7e4d4,stroke:#a62",
        "  classDef cancelled fill:#eee,stroke:#666",
        "  classDef running fill:#d4e4f7,stroke:#22a",
    ]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``xlib-pipeline lineage``."""
    sub = parser.add_subparsers(dest="lineage_command", required=True)
    show = sub.add_parser("show", help="print a run's lineage graph as Mermaid")
    show.add_argument("run_id", metavar="RUN_ID", help="the pipeline run id (result.run_id)")
    show.add_argument(
        "--file",
        default=None,
        help="lineage file written by the file transport (default: data_dir()/lineage.jsonl)",
    )
    show.add_argument(
        "--format", choices=("mermaid", "json"), default="mermaid", help="output format"
    )


def run_cli(args: argparse.Namespace) -> int:
    """Run ``xlib-pipeline lineage show``."""
    path = Path(args.file) if args.file else data_dir() / "lineage.jsonl"
    if not path.exists():
        print(f"lineage file {str(path)!r} does not exist; pass --file PATH", file=sys.stderr)
        return 2
    try:
        events = run_events(read_events(path), args.run_id)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if not events:
        print(f"no lineage events for run {args.run_id!r} in {str(path)!r}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps(events, indent=2))
    else:
        print(to_mermaid(events, args.run_id), end="")
    return 0
