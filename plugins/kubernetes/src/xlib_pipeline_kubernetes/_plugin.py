"""The ``kubernetes`` plugin: a render target, a worker command and the config keys it owns.

No hooks run during pipeline execution: the plugin is inert for runs whatever the config.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from xlib_pipeline import CliCommand, ConfigKey, RenderTarget, boolean, hookimpl

if TYPE_CHECKING:  # pragma: no cover
    import argparse

    from ._settings import KubernetesSettings

# The entry point loads this module on every PipelineManager(): the settings module (attrs
# classes, ipaddress) is imported when a ``kubernetes`` key is given or a manifest rendered.


def _section(value: Any) -> KubernetesSettings:
    from ._settings import section

    return section(value)


def _resource_management(value: Any) -> str:
    from ._settings import resource_management

    return str(resource_management(value))


def settings_from_config(config: Any) -> KubernetesSettings:
    """The effective settings of a manager's config (section, then top-level keys)."""
    from ._settings import KubernetesSettings

    s: KubernetesSettings = config.get("kubernetes") or KubernetesSettings()
    changes: dict[str, Any] = {}
    if config.given("auto_scaling"):
        changes["auto_scaling"] = config.get("auto_scaling")
    if config.given("resource_management"):
        changes["resource_management"] = config.get("resource_management")
    return s.evolve(**changes)


def _add_render_arguments(p: argparse.ArgumentParser) -> None:
    import argparse

    p.add_argument("--namespace", help="namespace of every object (default: config or 'default')")
    p.add_argument("--image", help="container image of the workers (and Dask scheduler)")
    p.add_argument("--replicas", type=int, help="initial worker replicas")
    p.add_argument("--min-replicas", type=int, help="HPA minimum")
    p.add_argument("--max-replicas", type=int, help="HPA maximum")
    p.add_argument(
        "--executor", help="'dask' (the default and only choice: workers are Dask workers)"
    )
    p.add_argument("--name", dest="app_name", help="application name (default: the pipeline's)")
    p.add_argument("--instance", help="app.kubernetes.io/instance (default: the name)")
    p.add_argument("--app-version", help="app.kubernetes.io/version")
    p.add_argument(
        "--auto-scaling",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="render a HorizontalPodAutoscaler (default: config auto_scaling, else yes)",
    )
    p.add_argument("--egress-cidr", action="append", help="allow egress to a CIDR (repeatable)")
    p.add_argument(
        "--schedule",
        help="render the driver as a CronJob on this cron schedule ('0 2 * * *'); "
        "default: a Job that runs once",
    )
    p.add_argument(
        "--store-secret",
        metavar="SECRET[:KEY]",
        help="Secret holding the PostgreSQL run store URL (key default 'url')",
    )
    tls = p.add_mutually_exclusive_group()
    tls.add_argument(
        "--tls-issuer",
        metavar="[ClusterIssuer/]NAME",
        help="cert-manager issuer of the Dask TLS certificate",
    )
    tls.add_argument(
        "--tls-secret", help="kubernetes.io/tls Secret (with ca.crt) for Dask TLS instead"
    )


def render_target(pipeline: Any, manager: Any, args: Any) -> dict[str, str]:
    """``xlib-pipeline render kubernetes``: one YAML stream, or files + kustomization (-o)."""
    s = settings_from_config(manager.config)

    def get(key: str) -> Any:
        return getattr(args, key, None) if args is not None else None

    changes: dict[str, Any] = {
        "namespace": get("namespace"),
        "image": get("image"),
        "replicas": get("replicas"),
        "executor": get("executor"),
        "name": get("app_name"),
        "instance": get("instance"),
        "version": get("app_version"),
        "auto_scaling": get("auto_scaling"),
        "egress_cidrs": get("egress_cidr"),
        "schedule": get("schedule"),
    }
    store = get("store_secret")
    if store:
        secret, _, key = store.partition(":")
        changes["store_secret"] = {"secret": secret, "key": key or "url"}
    if get("tls_secret"):
        changes["tls"] = {"secret": get("tls_secret")}
    elif get("tls_issuer"):
        kind, _, issuer = get("tls_issuer").rpartition("/")
        changes["tls"] = {"issuer": issuer, "issuer_kind": kind or "Issuer"}
    lo, hi = get("min_replicas"), get("max_replicas")
    if lo is not None or hi is not None:
        changes["autoscaling"] = {
            **s.autoscaling,
            **({"min_replicas": lo} if lo is not None else {}),
            **({"max_replicas": hi} if hi is not None else {}),
        }
    try:
        s = s.evolve(**changes)
    except ValueError as exc:
        from xlib_pipeline import ConfigError

        raise ConfigError(f"render kubernetes: {exc}", key="kubernetes") from exc
    from ._manifests import render_manifests, to_files, to_yaml

    executor = s.executor
    objs = render_manifests(
        pipeline,
        settings=s,
        config=manager.config.raw,
        executor=executor,
        target=get("target"),
    )
    if get("output"):
        return to_files(objs)
    return {"manifests.yaml": to_yaml(objs)}


def _worker_arguments(p: argparse.ArgumentParser) -> None:
    from ._worker import add_arguments  # the worker module (HTTP server ...) on use only

    add_arguments(p)


def _worker_run(args: argparse.Namespace) -> int:
    from ._worker import run

    return run(args)


class KubernetesPlugin:
    """Kubernetes deployment: ``render kubernetes`` and the ``worker`` command."""

    name = "kubernetes"

    def __init__(self) -> None:
        self._manager_config: Any = None
        self._settings: KubernetesSettings | None = None
        self._config: Mapping[str, Any] = {}

    @property
    def settings(self) -> KubernetesSettings:
        """The effective settings of the manager's config (built on first read)."""
        if self._settings is None:
            if self._manager_config is None:
                from ._settings import KubernetesSettings

                return KubernetesSettings()
            self._settings = settings_from_config(self._manager_config)
        return self._settings

    @hookimpl
    def register_config_keys(self) -> Iterable[ConfigKey]:
        return (
            ConfigKey(
                name="kubernetes",
                convert=_section,
                doc="Deployment settings: {namespace, image, replicas, resources, autoscaling, "
                "port, run_as_user, egress_cidrs, env, ...} (see docs/plugins/kubernetes.md).",
            ),
            ConfigKey(
                name="auto_scaling",
                convert=boolean,
                doc="Render a HorizontalPodAutoscaler for the workers (default true).",
            ),
            ConfigKey(
                name="resource_management",
                convert=_resource_management,
                doc="'kubernetes': pods get resource requests and limits; 'local': requests "
                "only (limits left to xlib-pipeline's own isolation).",
            ),
        )

    @hookimpl
    def register_render_targets(self) -> Iterable[RenderTarget]:
        return (
            RenderTarget(
                name="kubernetes",
                render=render_target,
                add_arguments=_add_render_arguments,
                doc="Dask scheduler and workers, driver Job/CronJob, state PVC, TLS "
                "certificates, HPA, PDB, NetworkPolicies",
            ),
        )

    @hookimpl
    def register_cli_commands(self) -> Iterable[CliCommand]:
        return (
            CliCommand(
                name="worker",
                help="run a Dask worker serving /health and /metrics",
                add_arguments=_worker_arguments,
                run=_worker_run,
            ),
        )

    @hookimpl
    def configure(self, manager: Any, config: Any) -> None:
        self._manager_config = config
        self._settings = None
        self._config = config.raw
        if any(config.given(k) for k in ("kubernetes", "auto_scaling", "resource_management")):
            self._settings = settings_from_config(config)  # a bad combination fails here

    def render(self, pipeline: Any, **options: Any) -> list[dict[str, Any]]:
        """This manager's manifests for ``pipeline`` (``options`` override settings).

        The ConfigMap carries the manager's config; ``distributed_mode`` in it (or
        ``executor="dask"``) adds the Dask scheduler.
        """
        from ._manifests import render_manifests

        return render_manifests(
            pipeline, settings=self.settings.evolve(**options), config=self._config
        )
