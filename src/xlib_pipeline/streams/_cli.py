"""``xlib-pipeline stream`` and the stream part of ``runs show``."""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import closing
from typing import Any

from ..exceptions import PipelineError


def add_parser(sub: Any, add_config_arg: Any) -> None:
    """Add the ``stream`` sub-command to the CLI's sub-parsers."""
    sp = sub.add_parser(
        "stream", help="run a pipeline over a source in micro-batches into a sink (checkpointed)"
    )
    sp.add_argument("target", help="FILE[:PIPELINE_OR_FACTORY]")
    add_config_arg(sp)
    sp.add_argument("--source", required=True, help="source URL: jsonl:PATH, redis://... ")
    sp.add_argument("--follow", action="store_true", help="tail a growing JSON-lines file")
    sp.add_argument(
        "--source-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a source option (repeatable; VALUE read as JSON, else text): poll_interval=0.1",
    )
    sp.add_argument("--sink", help="sink URL: jsonl:PATH, redis://... (default: none)")
    sp.add_argument(
        "--sink-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a sink option (repeatable; VALUE read as JSON, else text): fsync=true",
    )
    sp.add_argument("--late-sink", help="sink URL for late records of windowed tasks")
    sp.add_argument(
        "--dead-letter", help="sink URL for records of a failed batch that fail alone (PII ...)"
    )
    sp.add_argument("--store", help="run store file or postgresql:// URL (checkpoints live there)")
    sp.add_argument("--name", help="stream name (default: the pipeline's name)")
    sp.add_argument("--batch-size", type=int, default=1000, help="records per batch at most")
    sp.add_argument("--batch-timeout", type=float, default=0.5, help="seconds per batch at most")
    sp.add_argument("--max-in-flight", type=int, default=1, help="batches running at once")
    sp.add_argument("--from-start", action="store_true", help="start over (sink back to origin)")
    sp.add_argument("--output-task", help="the task whose output goes to the sink")
    sp.add_argument("--max-batches", type=int, help="stop after this many batches")
    sp.add_argument("--max-records", type=int, help="stop after this many records")
    sp.add_argument("--idle-timeout", type=float, help="stop after this many idle seconds")
    sp.add_argument("--tenant", help="tenant id of every batch run")
    sp.add_argument("--principal", help="who runs the stream (access control)")
    sp.add_argument("--executor", help="executor name (threads, processes ...)")
    sp.add_argument(
        "--monitor", action=argparse.BooleanOptionalAction, default=None, help="live progress"
    )


def connector_options(flag: str, items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` items as options: each VALUE read as JSON (``true``, ``0.1``, ``"x"``)
    and otherwise kept as text. The connector names the options it does not know."""
    from ..exceptions import ConfigError

    options: dict[str, Any] = {}
    for item in items:
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE, e.g. {flag} fsync=true")
        try:
            options[key.strip()] = json.loads(text)
        except ValueError:
            options[key.strip()] = text
    return options


def cmd_stream(args: argparse.Namespace) -> int:
    """Run ``xlib-pipeline stream``; exit 0 when it completed or stopped, 1 when it failed."""
    from ..cli._config import cli_config
    from ..cli._run import sigterm_as_interrupt
    from ..loading import load_pipeline, with_store
    from ._run import print_progress

    pipeline, module = load_pipeline(args.target)
    config = with_store(cli_config(args, module), args.store)
    sigterm_as_interrupt()
    options: dict[str, Any] = {}
    for key, attr in (("tenant_id", "tenant"), ("principal", "principal")):
        if getattr(args, attr, None):
            options[key] = getattr(args, attr)
    if args.executor:
        options["executor"] = args.executor
    monitor = sys.stderr.isatty() if args.monitor is None else args.monitor
    source_options = connector_options("--source-option", args.source_option)
    if args.follow:
        source_options["follow"] = True
    sink_options = connector_options("--sink-option", args.sink_option)
    from .._manager import PipelineManager

    name = args.name or pipeline.name
    with PipelineManager(config) as pm:
        try:
            stream: Any = pm.stream(
                pipeline,
                source=args.source,
                source_options=source_options or None,
                sink=args.sink,
                sink_options=sink_options or None,
                late_sink=args.late_sink,
                dead_letter=args.dead_letter,
                name=name,
                batch_size=args.batch_size,
                batch_timeout=args.batch_timeout,
                max_in_flight=args.max_in_flight,
                from_start=args.from_start,
                output_task=args.output_task,
                max_batches=args.max_batches,
                max_records=args.max_records,
                idle_timeout=args.idle_timeout,
                on_batch=print_progress if monitor else None,
                **options,
            )
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM: the stream stopped (see Stream.run)
            stream = _stopped(pm, name)
            if stream is None:
                raise
        if monitor:
            sys.stderr.write("\n")
        print(
            f"stream {stream.name} {stream.status}: {stream.records} records, "
            f"{stream.batches} batches, {stream.outputs} outputs, {stream.late} late",
            file=sys.stderr,
        )
        if stream.error is not None:
            # Error texts quote records: they leave through redaction (PII detectors).
            print(f"error: {pm.describe_error(stream.error, tenant=args.tenant)}", file=sys.stderr)
            return 1
    return 0


def _stopped(pm: Any, name: str) -> Any:
    """Stream ``name`` as its checkpoint records it after a Ctrl-C or SIGTERM, when that
    stopped it (the stream records the stop before the interrupt reaches the CLI)."""
    from types import SimpleNamespace

    from .._tables import open_checkpoints

    with closing(open_checkpoints(pm.store, "stream")) as ckpt:
        rec = ckpt.load(name)
    if rec is None or rec.status != "stopped":
        return None
    return SimpleNamespace(
        name=name,
        status=rec.status,
        records=rec.records,
        batches=rec.seq,
        outputs=rec.outputs,
        late=rec.late,
        error=None,
    )


#: Columns ``runs show STREAM``'s table needs unfolded (a run id and small numbers).
ID_WIDTH_TABLE = 100


def _check_access(store: Any, rec: Any, batches: Any, guard: Any) -> None:
    """Apply the access policy of the stream's latest batch run to reading the stream: its
    last committed batch's run, else (none committed: the first batch failed, or the runs
    were pruned) its newest recorded run. A stream of a tenant with no run to take the
    policy from is shown only under ``--config``'s policy."""
    from ..exceptions import UsageError

    run = None
    last = next((b.run_id for b in batches if b.run_id), None)
    if last is not None:
        try:
            run = store.get_run(last)
        except PipelineError:
            run = None
    if run is None:
        runs = store.list_runs(pipeline=rec.pipeline, limit=200)
        run = next((r for r in runs if r.source == f"stream:{rec.name}"), None)
    if run is not None:
        guard.check(run, store.get_tasks(run.run_id).values())
        return
    if rec.tenant is None:
        return
    if guard.forced is None:
        raise UsageError(
            f"stream {rec.name!r} (tenant {rec.tenant!r}) has no recorded batch run to take "
            "its access policy from; pass the policy with --config"
        )
    from types import SimpleNamespace

    stand_in = SimpleNamespace(
        run_id=f"(stream {rec.name})", pipeline=rec.pipeline, tenant=rec.tenant, config={}
    )
    guard.check(stand_in)


def stream_hint(store: Any, name: str) -> str | None:
    """The stream of ``store`` whose name is closest to ``name`` (a did-you-mean), if any."""
    from .._names import suggest

    opener = getattr(store, "open_checkpoints", None)
    if opener is None:
        return None
    with closing(opener()) as ckpt:
        names = [r.name for r in ckpt.list_streams()]
    return suggest(name, names)


def show_stream(store: Any, name: str, *, as_json: bool, guard: Any) -> bool:
    """Print stream ``name`` of the open run ``store``; ``False`` when there is none."""
    from .._tables import open_checkpoints
    from ..cli._format import id_column, iso

    with closing(open_checkpoints(store, "runs show")) as ckpt:
        rec = ckpt.load(name)
        if rec is None:
            return False
        batches = ckpt.batches(name, limit=10)
    if guard is not None:  # the stream's data is read under its policy
        _check_access(store, rec, batches, guard)
    span = (rec.updated or 0) - (rec.started or 0)
    info = {
        "stream": rec.name,
        "pipeline": rec.pipeline,
        "status": rec.status,
        "source": rec.source,
        "sink": rec.sink,
        "records": rec.records,
        "batches": rec.seq,
        "outputs": rec.outputs,
        "late": rec.late,
        "dead_letter": rec.dead,
        "lag": rec.lag,
        "throughput": round(rec.records / span, 1) if span > 0 and rec.records else None,
        "checkpoint": {"seq": rec.seq, "offset": rec.offset, "position": rec.position},
        "tenant": rec.tenant,
        "started": iso(rec.started),
        "updated": iso(rec.updated),
        "error": rec.error,
        "last_batches": [
            {
                "seq": b.seq,
                "run_id": b.run_id,
                "offsets": [b.start_offset, b.end_offset],
                "records": b.records,
                "outputs": b.outputs,
                "late": b.late,
                "committed": iso(b.committed),
            }
            for b in batches
        ],
    }
    if as_json:
        print(json.dumps(info, indent=2, default=repr))
        return True
    from rich.table import Table
    from rich.text import Text

    from ..cli._format import console as make_console
    from ._batch import brief_offset

    # Stored strings (names, URLs, offsets, the error) are shown as plain Text, never rich
    # markup: a redacted error reads "[redacted: ...]"; the table is as wide as it needs.
    console = make_console(ID_WIDTH_TABLE)
    head = Text(rec.pipeline, style="bold")
    head.append(
        f" stream {rec.name}: {rec.status}, {rec.records} records in {rec.seq} batches, "
        f"{rec.outputs} outputs, {rec.late} late, {rec.dead} dead-lettered, lag "
        f"{'?' if rec.lag is None else rec.lag}"
    )
    console.print(head, highlight=False, soft_wrap=True)
    console.print(Text(f"source {rec.source} -> sink {rec.sink}"), highlight=False)
    console.print(
        Text(
            f"last checkpoint: batch {rec.seq}, source offset {brief_offset(rec.offset)!r}, "
            f"sink position {rec.position!r}"
        ),
        highlight=False,
    )
    if span > 0 and rec.records:
        console.print(f"average {rec.records / span:,.0f} records/s since the stream started")
    table = Table(title="latest batches")
    for col in ("batch", "run id", "offsets", "records", "outputs", "late"):
        if col == "run id":
            id_column(table, col)  # never folded: ids are copied from here
        else:
            table.add_column(col, overflow="fold")
    for b in batches:
        table.add_row(
            str(b.seq),
            b.run_id or "(sink catch-up)",
            Text(f"{brief_offset(b.start_offset)!r}..{brief_offset(b.end_offset)!r}"),
            str(b.records),
            str(b.outputs),
            str(b.late),
        )
    console.print(table)
    if rec.error:
        console.print(Text(f"error: {rec.error}"), highlight=False)
    return True
