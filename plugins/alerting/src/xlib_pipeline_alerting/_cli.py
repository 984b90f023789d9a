"""``xlib-pipeline alerts test``: send a test alert to every configured channel."""

from __future__ import annotations

import argparse
import sys
import time

from xlib_pipeline import CliCommand, ConfigError, PipelineManager, read_mapping_file

from ._channels import Alert
from ._channels import DeliveryError as DeliveryFailure


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="alerts_command", required=True, metavar="ACTION")
    t = sub.add_parser("test", help="send a test alert to every channel; exit 1 if one fails")
    t.add_argument("--config", required=True, help="config file (.json, .toml, .yaml)")
    t.add_argument("--pipeline", default="xlib-pipeline-test", help="pipeline name to show")


def _run(args: argparse.Namespace) -> int:
    try:
        config = read_mapping_file(args.config)
    except ValueError as exc:
        print(f"error: config {exc}", file=sys.stderr)
        return 2
    try:
        pm = PipelineManager(config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with pm:
        plugin = pm.get_plugin("alerting")
        if plugin is None or plugin.settings is None:
            print(f"error: {args.config} has no 'alerting' section with channels", file=sys.stderr)
            return 2
        alert = Alert(
            rule="test",
            pipeline=args.pipeline,
            severity="info",
            time=time.time(),
            message="test alert from `xlib-pipeline alerts test`",
            labels=dict(plugin.settings.labels),
        )
        failed = 0
        for name, sender in plugin.senders.items():
            try:
                sender.send_now(alert)
            except DeliveryFailure as exc:
                failed += 1
                print(f"FAILED  {name} ({sender.channel.type}): {exc}")
            else:
                print(f"sent    {name} ({sender.channel.type})")
    return 1 if failed else 0


def alerts_command() -> CliCommand:
    return CliCommand(
        name="alerts",
        help="alerting: send a test alert to every channel",
        add_arguments=_add_arguments,
        run=_run,
    )
