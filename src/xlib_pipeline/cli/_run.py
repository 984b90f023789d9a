"""``xlib-pipeline run`` and ``resume``: run a pipeline and report its result."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._manager import PipelineManager
from ..exceptions import UsageError
from ..loading import default_store_path, load_pipeline, open_store, with_store
from ._config import cli_config
from ._format import dumps, duration, iso


def parse_params(items: Sequence[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--param expects KEY=VALUE, got {item!r}")
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    return params


def sigterm_as_interrupt() -> None:
    import signal

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # pragma: no cover - not the main thread
        pass


def _source_of(target: str) -> str:
    file, sep, name = target.partition(":")
    return str(Path(file).resolve()) + (sep + name if sep else "")


def execute_cli(args: argparse.Namespace, target: str, **extra: Any) -> int:
    pipeline, module = load_pipeline(target)
    stored = extra.pop("config", None)
    # Layers: the config file (or the stored run's config on resume) < XLIB_PIPELINE_*
    # environment variables < flags (passed to execute_pipeline, which they override).
    config = with_store(cli_config(args, module, base=stored), args.store)
    sigterm_as_interrupt()
    with PipelineManager(config) as pm:
        pm.interrupt_notice = _interrupt_notice
        options: dict[str, Any] = {}
        if getattr(args, "tenant", None):
            options["tenant_id"] = args.tenant
        if getattr(args, "principal", None):
            options["principal"] = args.principal
        as_json = bool(getattr(args, "json", False))
        result = pm.execute_pipeline(
            pipeline,
            parallel=not getattr(args, "inline", False),
            executor=getattr(args, "executor", None),
            max_workers=getattr(args, "max_workers", None),
            monitor=getattr(args, "monitor", True) and not as_json,
            params=parse_params(getattr(args, "param", None) or ()),
            source=_source_of(target),
            **options,
            **extra,
        )
        if as_json:
            return _report_json(result, pm)
        return _report(result, pm)


def cmd_run(args: argparse.Namespace) -> int:
    return execute_cli(args, args.target)


def cmd_resume(args: argparse.Namespace) -> int:
    path = args.store or default_store_path()
    store = open_store(path)
    try:
        rec = store.get_run(args.run_id)
    finally:
        store.close()
    target = args.target or rec.source
    if not target:
        raise UsageError(
            f"run {rec.run_id} was not started from the CLI; "
            "name its pipeline with --target FILE:NAME"
        )
    return execute_cli(args, target, resume=rec.run_id, force=args.force, config=rec.config)


def _interrupt_notice(run_id: str, grace: float | None) -> None:
    """Printed at once on the first Ctrl-C / SIGTERM of a run."""
    wait = "until they finish" if grace is None else f"up to {grace:g} s to finish"
    print(
        f"xlib-pipeline: stopping run {run_id}: no new task starts; running tasks get {wait}. "
        "Press Ctrl-C again to stop at once.",
        file=sys.stderr,
        flush=True,
    )


def _exit_code(result: Any) -> int:
    if result.success:
        return 0
    return 130 if result.status == "cancelled" else 1


def _report_json(result: Any, manager: Any) -> int:
    """``run --json``: one JSON object on standard output, whatever the outcome."""
    err = result.error
    tasks = {}
    for name, t in result.tasks.items():
        tasks[name] = {
            "status": str(t.status),
            "attempts": t.attempts,
            "started": iso(t.started),
            "finished": iso(t.finished),
            "duration": duration(t.started, t.finished),
            "error_type": type(t.error).__name__ if t.error is not None else None,
            "error": manager.describe_error(t.error) if t.error is not None else None,
        }
    out = {
        "run_id": result.run_id,
        "pipeline": result.pipeline,
        "status": result.status,
        "success": result.success,
        "started": iso(result.started),
        "finished": iso(result.finished),
        "duration": round(result.duration, 6),
        "resumed_from": result.resumed_from,
        "failed_task": result.failed_task,
        "error_type": type(err).__name__ if err is not None else None,
        "error": manager.describe_error(err) if err is not None else None,
        "traceback": manager.redact(err.traceback) if getattr(err, "traceback", None) else None,
        "result": result.final_result if result.success else None,
        "tasks": tasks,
    }
    print(dumps(out))
    return _exit_code(result)


def _report(result: Any, manager: Any = None) -> int:
    print(f"run {result.run_id} {result.status} in {result.duration:.3f}s", file=sys.stderr)
    print(f"run_id: {result.run_id}")
    if result.success:
        try:
            print(dumps(result.final_result))
        except ValueError:  # a circular structure
            print(repr(result.final_result))
        return 0
    if result.status == "cancelled":
        print(
            f"xlib-pipeline: interrupted; `xlib-pipeline resume {result.run_id}` finishes it",
            file=sys.stderr,
        )
        return 130
    err = result.error
    # Error texts quote data: they leave through the manager's redaction (PII detectors).
    if manager is not None:
        print(f"error: {manager.describe_error(err)}", file=sys.stderr)
    else:
        print(f"error: {err}", file=sys.stderr)
    tb = getattr(err, "traceback", None)
    if tb:
        print(manager.redact(tb) if manager is not None else tb, file=sys.stderr)
    return 1
