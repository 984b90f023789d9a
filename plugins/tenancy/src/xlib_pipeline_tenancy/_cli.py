"""``xlib-pipeline tenants``: inspect the policy and check a principal's permissions."""

from __future__ import annotations

import argparse
import json

from xlib_pipeline import CliCommand, PipelineManager, SecurityError


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="tenants_command", required=True, metavar="ACTION")
    lst = sub.add_parser("list", help="tenants, roles and bindings of the policy")
    lst.add_argument("--config", help="config file (.json, .toml, .yaml)")
    lst.add_argument("--json", action="store_true", help="print JSON")
    chk = sub.add_parser(
        "check", help="exit 0 when PRINCIPAL holds PERMISSION on TENANT, else refuse"
    )
    chk.add_argument("--config", help="config file (.json, .toml, .yaml)")
    chk.add_argument("--principal", help="default: tenancy.default_principal or the OS user")
    chk.add_argument("--tenant", help="tenant (omit for tenant-less work)")
    chk.add_argument(
        "--permission", default="process_data", help="the permission to check (process_data)"
    )


def _manager(args: argparse.Namespace) -> PipelineManager:
    from xlib_pipeline.loading import load_config

    return PipelineManager(load_config(args.config))


def _run(args: argparse.Namespace) -> int:
    pm = _manager(args)
    plugin = pm.get_plugin("tenancy")
    policy = plugin.policy
    if args.tenants_command == "list":
        data = {
            "access_control": plugin.access_control,
            "default_policy": policy.default,
            "tenants": {
                name: {
                    "cpu_cores": t.limits.cpu_cores,
                    "memory_bytes": t.limits.memory_bytes,
                    "max_concurrent_tasks": t.max_concurrent_tasks,
                    "max_concurrent_runs": t.max_concurrent_runs,
                }
                for name, t in sorted(policy.tenants.items())
            },
            "roles": {r: sorted(p) for r, p in sorted(policy.roles.items())},
            "bindings": {
                who: {scope: sorted(roles) for scope, roles in scopes.items()}
                for who, scopes in sorted(policy.bindings.items())
            },
        }
        if policy.default:
            data["bindings"] = {policy.owner: {"*": ["admin"]}}
        if args.json:
            print(json.dumps(data, indent=2))
        else:
            print(f"access control: {data['access_control']}")
            for name, t in data["tenants"].items():
                print(f"tenant {name}: {t}")
            for who, scopes in data["bindings"].items():
                for scope, roles in scopes.items():
                    print(f"binding {who} on {scope}: {', '.join(roles)}")
        return 0
    principal = plugin.principal_of(args.principal)
    what = f"tenant {args.tenant!r}" if args.tenant else "tenant-less work"
    if plugin.access_control != "rbac":
        print(f"access control is off (security.access_control: none): {principal} may act")
        return 0
    if not policy.allows(principal, args.tenant, args.permission):
        raise SecurityError(
            f"access denied: principal {principal!r} lacks permission {args.permission!r} on {what}"
        )
    print(f"allowed: {principal} holds {args.permission} on {what}")
    return 0


def tenants_command() -> CliCommand:
    """The ``tenants`` sub-command record."""
    return CliCommand(
        name="tenants",
        help="inspect tenants, roles and bindings; check a principal's permission",
        add_arguments=_add_arguments,
        run=_run,
    )
