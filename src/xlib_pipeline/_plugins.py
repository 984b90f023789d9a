"""Plugin discovery, registration and the typed :class:`Hooks` facade.

The facade caches each hook caller, knows which hooks have implementations (so the
scheduler skips empty ones on its hot path) and turns an exception raised inside a
plugin into an error that names the plugin and the hook.
"""

from __future__ import annotations

import functools
import importlib.metadata as md
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pluggy

from . import hookspecs
from ._records import PluginInfo, flatten
from .exceptions import PipelineError, PluginError, PluginLoadError

# Names the core knows belong to first-party plugins, so a missing plugin can be named.
# Strings only: the core never imports a plugin.
PLUGIN_PACKAGES = {
    "audit": "xlib-pipeline-audit",
    "lineage": "xlib-pipeline-lineage",
    "classification": "xlib-pipeline-classification",
    "encryption": "xlib-pipeline-encryption",
    "tenancy": "xlib-pipeline-tenancy",
    "retries": "xlib-pipeline-retries",
    "kubernetes": "xlib-pipeline-kubernetes",
    "dask": "xlib-pipeline-dask",
    "redis": "xlib-pipeline-redis",
}
KNOWN_CONFIG_KEYS = {
    "audit": "audit",
    "audit_logging": "audit",
    "audit_everything": "audit",
    "lineage": "lineage",
    "data_lineage": "lineage",
    "classification": "classification",
    "security_scanning": "classification",
    "encryption": "encryption",
    "security.encryption_at_rest": "encryption",
    "security.encryption_in_transit": "encryption",
    "security.access_control": "tenancy",
    "multi_tenant": "tenancy",
    "resource_isolation": "tenancy",
    "tenancy": "tenancy",
    "retries": "retries",
    "distributed": "dask",
    "distributed_mode": "dask",
    "cluster_type": "dask",
    "kubernetes": "kubernetes",
    "auto_scaling": "kubernetes",
    "resource_management": "kubernetes",
}
KNOWN_TASK_OPTIONS = {
    "retries": "retries",
    "inputs": "lineage",
    "outputs": "lineage",
    "classification": "classification",
    "clearance": "classification",
    "audit": "audit",
    "encrypt": "encryption",
    "isolate": "tenancy",
    "resource_limits": "tenancy",
    "distribute": "dask",
    "map_over": "dask",
}
KNOWN_RUN_OPTIONS = {
    "isolation_mode": "tenancy",
    "resource_limits": "tenancy",
    "distributed": "dask",
}
KNOWN_DECORATORS = {
    "audit_log": "audit",
    "isolate_resources": "tenancy",
    "encrypt_data": "encryption",
}


def package_for(plugin: str) -> str:
    """The distribution that provides first-party plugin ``plugin``."""
    return PLUGIN_PACKAGES.get(plugin, f"xlib-pipeline-{plugin}")


@functools.lru_cache(maxsize=1)
def _packages_distributions() -> Mapping[str, list[str]]:
    try:
        return md.packages_distributions()
    except Exception:  # pragma: no cover - broken metadata
        return {}


def _plugin_dist(obj: object) -> tuple[str | None, str | None]:
    module = getattr(type(obj), "__module__", "") or ""
    top = module.split(".")[0]
    dists = _packages_distributions().get(top) or []
    for dist in dists:
        try:
            return dist, md.version(dist)
        except md.PackageNotFoundError:  # pragma: no cover
            continue
    return None, None


def create_plugin_manager(
    *,
    explicit: Iterable[object] = (),
    disabled: Iterable[str] = (),
    entry_points: bool = True,
    builtin: Iterable[tuple[str, object]] = (),
) -> tuple[pluggy.PluginManager, list[PluginInfo]]:
    """Build a fresh plugin manager: builtins, installed entry points, then ``explicit``.

    Each entry point is loaded in its own ``try``; a failure raises :class:`PluginLoadError`
    naming the plugin and its distribution. Names in ``disabled`` are blocked.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs.HookSpecs)
    infos: list[PluginInfo] = []
    blocked = set(disabled)
    for name in blocked:
        pm.set_blocked(name)
    for name, obj in builtin:
        pm.register(obj, name=name)
        infos.append(_info(pm, name, obj, builtin=True))
    if entry_points:
        for ep in sorted(md.entry_points(group=hookspecs.ENTRY_POINT_GROUP), key=lambda e: e.name):
            if ep.name in blocked or pm.has_plugin(ep.name):
                continue
            dist = ep.dist.name if ep.dist else None
            version = ep.dist.version if ep.dist else None
            try:
                loaded = ep.load()
                plugin = loaded() if isinstance(loaded, type) else loaded
                pm.register(plugin, name=ep.name)
            except PipelineError:
                raise
            except Exception as exc:
                raise PluginLoadError(ep.name, dist, version, exc) from exc
            infos.append(_info(pm, ep.name, plugin, dist=dist, version=version))
    for plugin in explicit:
        name = getattr(plugin, "name", None) or type(plugin).__name__
        if not isinstance(name, str):  # pragma: no cover
            name = type(plugin).__name__
        if name in blocked:
            continue
        if pm.has_plugin(name):
            pm.unregister(name=name)
            infos = [i for i in infos if i.name != name]
        try:
            pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {name!r} is invalid: {exc}", plugin=name) from exc
        dist, version = _plugin_dist(plugin)
        infos.append(_info(pm, name, plugin, dist=dist, version=version))
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        bad = pm.get_name(exc.plugin) or repr(exc.plugin)
        raise PluginError(f"plugin {bad!r} implements an unknown hook: {exc}", plugin=bad) from exc
    return pm, infos


def _info(
    pm: pluggy.PluginManager,
    name: str,
    plugin: object,
    *,
    dist: str | None = None,
    version: str | None = None,
    builtin: bool = False,
) -> PluginInfo:
    hooks = tuple(sorted(h.name for h in pm.get_hookcallers(plugin) or ()))
    return PluginInfo(name=name, dist=dist, version=version, hooks=hooks, builtin=builtin)


class Hooks:
    """Typed access to the hooks of one plugin manager, with error attribution."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self._pm = pm
        self._h = pm.hook
        # Which observer hooks have non-builtin implementations, computed once.
        self.has: dict[str, bool] = {
            name: bool(getattr(pm.hook, name).get_hookimpls())
            for name in (
                "before_task",
                "after_task",
                "on_task_error",
                "isolate",
                "before_pipeline",
                "after_pipeline",
                "validate_pipeline",
            )
        }
        self._codes: dict[types.CodeType, str] | None = None
        self.owners: dict[str, dict[str, str]] = {}

    @property
    def pluggy(self) -> pluggy.PluginManager:
        """The underlying pluggy manager."""
        return self._pm

    # -- attribution ---------------------------------------------------------------------

    def _owner_of(self, exc: BaseException) -> str | None:
        if self._codes is None:
            codes: dict[types.CodeType, str] = {}
            for name, plugin in self._pm.list_name_plugin():
                if plugin is None:
                    continue
                for hc in self._pm.get_hookcallers(plugin) or ():
                    for impl in hc.get_hookimpls():
                        if impl.plugin is plugin:
                            code = getattr(impl.function, "__code__", None)
                            if code is not None:
                                codes[code] = name
            self._codes = codes
        tb = exc.__traceback__
        owner = None
        while tb is not None:
            found = self._codes.get(tb.tb_frame.f_code)
            if found is not None:
                owner = found
            tb = tb.tb_next
        return owner

    def call(self, hook: str, **kwargs: Any) -> Any:
        """Call ``hook`` with keyword arguments; wrap a plugin's exception in PluginError.

        A :class:`~xlib_pipeline.exceptions.PipelineError` raised on purpose by a plugin
        (``SecurityError``, ``ComplianceError`` ...) passes through with ``.plugin`` set.
        """
        try:
            return getattr(self._h, hook)(**kwargs)
        except PipelineError as exc:
            if getattr(exc, "plugin", None) is None:
                exc.plugin = self._owner_of(exc)  # type: ignore[attr-defined]
            raise
        except Exception as exc:
            owner = self._owner_of(exc) or "unknown"
            raise PluginError(
                f"plugin {owner!r} failed in hook {hook!r}: {type(exc).__name__}: {exc}",
                plugin=owner,
                hook=hook,
            ) from exc

    def observer(self, hook: str, argnames: tuple[str, ...]) -> Callable[..., None]:
        """A direct caller for a per-task observer hook: ``call(*args)`` in ``argnames`` order.

        It calls the implementations pluggy would, in pluggy's order, without pluggy's
        per-call dispatch work; a failure is attributed to its plugin like :meth:`call`.
        Hooks with wrapper implementations fall back to :meth:`call`. Snapshot: plugins
        registered afterwards are not seen by the returned caller.
        """
        impls = getattr(self._h, hook).get_hookimpls()
        if any(i.hookwrapper or i.wrapper for i in impls):

            def through_pluggy(*args: Any) -> None:
                self.call(hook, **dict(zip(argnames, args)))

            return through_pluggy
        plan = []
        for impl in reversed(impls):  # pluggy calls the last (tryfirst) first
            idx = tuple(argnames.index(a) for a in impl.argnames)
            plan.append(
                (
                    impl.function,
                    None if idx == tuple(range(len(argnames))) else idx,
                    impl.plugin_name,
                )
            )

        def call(*args: Any) -> None:
            for fn, idx, name in plan:
                try:
                    if idx is None:
                        fn(*args)
                    else:
                        fn(*[args[k] for k in idx])
                except PipelineError as exc:
                    if getattr(exc, "plugin", None) is None:
                        exc.plugin = name  # type: ignore[attr-defined]
                    raise
                except Exception as exc:
                    raise PluginError(
                        f"plugin {name!r} failed in hook {hook!r}: {type(exc).__name__}: {exc}",
                        plugin=name,
                        hook=hook,
                    ) from exc

        return call

    def collect(self, hook: str, key: Callable[[Any], str] = lambda r: r.name) -> dict[str, Any]:
        """Call a collector hook and merge its records by ``key``, rejecting duplicates."""
        out: dict[str, Any] = {}
        owners: dict[str, str] = {}
        caller = getattr(self._h, hook)
        for impl in reversed(caller.get_hookimpls()):  # registration order
            try:
                records = flatten([impl.function(**{a: None for a in impl.argnames})])
            except Exception as exc:
                raise PluginError(
                    f"plugin {impl.plugin_name!r} failed in hook {hook!r}: "
                    f"{type(exc).__name__}: {exc}",
                    plugin=impl.plugin_name,
                    hook=hook,
                ) from exc
            for record in records:
                k = key(record)
                if k in out:
                    raise PluginError(
                        f"{hook}: {k!r} is registered by both plugin {owners[k]!r} and "
                        f"plugin {impl.plugin_name!r}",
                        plugin=impl.plugin_name,
                        hook=hook,
                    )
                out[k] = record
                owners[k] = impl.plugin_name
        self.owners[hook] = owners
        return out

    def owner(self, hook: str, name: str) -> str | None:
        """Which plugin registered ``name`` through collector ``hook``."""
        return self.owners.get(hook, {}).get(name)
