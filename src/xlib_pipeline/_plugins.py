"""Plugin discovery and registration (the hook facade itself is in :mod:`._hooks`).

Registration refuses a plugin that marks an unknown hook (``def befor_task``) with the
closest hook name.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import FunctionType, ModuleType
from typing import Any

import pluggy

from . import hookspecs
from ._entrypoints import entry_points as installed_entry_points
from ._entrypoints import packages_distributions, version_of
from ._hooks import Hooks
from ._names import suggest
from ._records import PluginInfo
from .exceptions import ConfigError, PipelineError, PluginError, PluginLoadError
from .hookspecs import HOOK_NAMES

__all__ = ["HOOK_NAMES", "Hooks", "create_plugin_manager", "package_for", "register_checked"]


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
    "evidence": "xlib-pipeline-evidence",
    "redis": "xlib-pipeline-redis",
    "metrics": "xlib-pipeline-metrics",
    "alerting": "xlib-pipeline-alerting",
    "tracing": "xlib-pipeline-tracing",
    "postgres": "xlib-pipeline-postgres",
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
    "evidence": "evidence",
    "metrics": "metrics",
    "alerting": "alerting",
    "tracing": "tracing",
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
#: CLI sub-commands and render targets of first-party plugins, so that a command of a plugin
#: that is not installed gets an install hint instead of "invalid choice".
KNOWN_CLI_COMMANDS = {
    "audit": "audit",
    "lineage": "lineage",
    "keys": "encryption",
    "tenants": "tenancy",
    "worker": "kubernetes",
    "evidence": "evidence",
}
KNOWN_RENDER_TARGETS = {"kubernetes": "kubernetes"}
KNOWN_DECORATORS = {
    "audit_log": "audit",
    "isolate_resources": "tenancy",
    "encrypt_data": "encryption",
    "compliance_report": "evidence",
}


def package_for(plugin: str) -> str:
    """The distribution that provides first-party plugin ``plugin``."""
    return PLUGIN_PACKAGES.get(plugin, f"xlib-pipeline-{plugin}")


def _plugin_dist(obj: object) -> tuple[str | None, str | None]:
    module = getattr(type(obj), "__module__", "") or ""
    top = module.split(".")[0]
    dists = packages_distributions().get(top) or []
    for dist in dists:
        version = version_of(dist)
        if version is not None:
            return dist, version
    return None, None


_MISSING = object()


def _raw_attr(plugin: object, name: str) -> tuple[Any, bool]:
    """``name`` as stored on ``plugin`` or its class, without running descriptors, and
    whether it was found in the class of an instance (not on the plugin itself, and not
    on a class or module registered as a plugin)."""
    own = getattr(plugin, "__dict__", None)
    if type(own) is dict and name in own:
        return own[name], False
    if isinstance(plugin, type | ModuleType):
        return _MISSING, False
    for klass in type(plugin).__mro__:
        found = klass.__dict__.get(name, _MISSING)
        if found is not _MISSING:
            return found, True
    return _MISSING, False


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, with a fast look at each attribute during registration.

    pluggy inspects every name of ``dir(plugin)`` with :func:`inspect.getattr_static`;
    most names of a plugin are no hooks. Names whose stored value carries no hookimpl
    marker are skipped here at dict-lookup speed; a marked plain function found in the
    plugin's class (the usual hook method) gives its options as pluggy would read them;
    anything else (instance attributes, slots, static and class methods, modules and
    classes as plugins) goes through pluggy's own checks. The names of the hooks parsed
    are kept for :func:`register_checked` (no walk over every hook caller afterwards).
    """

    def __init__(self, project_name: str) -> None:
        super().__init__(project_name)
        self._marker = project_name + "_impl"
        #: Hook names marked on the plugin being registered (by ``register_checked``).
        self.parsed: list[str] | None = None
        #: Plugin name -> the hooks it implements (as registered by ``register_checked``).
        self.hook_names: dict[str, tuple[str, ...]] = {}
        #: pluggy's own hook executor; a tracing or monitoring one installed later
        #: (``add_hookcall_monitoring``) sends the per-task hooks back through pluggy.
        self.own_hookexec = self.__dict__.get("_inner_hookexec")

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        raw, in_class = _raw_attr(plugin, name)
        opts: Any
        if raw is not _MISSING:
            marker = self._marker
            opts = getattr(raw, marker, None)
            if opts is None:
                inner = getattr(raw, "__func__", None)  # staticmethod, classmethod
                if inner is None or getattr(inner, marker, None) is None:
                    return None
            elif in_class and type(raw) is FunctionType:
                # pluggy binds it to the instance and reads the marker off the function
                opts = opts if isinstance(opts, dict) else None
                self._note(name, opts)
                return opts
        opts = super().parse_hookimpl_opts(plugin, name)
        self._note(name, opts)
        return opts

    def _note(self, name: str, opts: Any) -> None:
        parsed = self.parsed
        if parsed is not None and opts is not None:
            parsed.append(opts.get("specname") or name)


def register_checked(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    """Register ``plugin`` as ``name``; refuse unknown hook names and wrong arguments.

    A method marked ``@hookimpl`` whose name is no hook (``befor_task``) is refused with the
    closest hook name, and the plugin is left unregistered.
    """
    mine = pm if isinstance(pm, PluginManager) else None
    if mine is not None:
        mine.parsed = []
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {name!r} is invalid: {exc}", plugin=name) from exc
    finally:
        parsed = mine.parsed if mine is not None else None
        if mine is not None:
            mine.parsed = None
    if mine is not None and parsed is not None:
        if pm.get_plugin(name) is not plugin:  # blocked: nothing registered
            return
        names = sorted(set(parsed))
        unknown = [n for n in names if getattr(getattr(pm.hook, n, None), "spec", None) is None]
        mine.hook_names[name] = tuple(names)
    else:
        unknown = sorted(hc.name for hc in pm.get_hookcallers(plugin) or () if hc.spec is None)
    if unknown:
        pm.unregister(plugin)
        bad = unknown[0]
        hint = suggest(bad, HOOK_NAMES)
        extra = f"; did you mean {hint!r}?" if hint else f"; hooks: {', '.join(HOOK_NAMES)}"
        where = f"{type(plugin).__name__}.{bad}"
        raise PluginError(
            f"plugin {name!r} marks {where} with @hookimpl, but {bad!r} is not a hook{extra}",
            plugin=name,
            hook=bad,
        )


def check_disabled(disabled: Iterable[str], explicit: Iterable[object] = ()) -> None:
    """Refuse a ``plugins.disable`` name that is no plugin: not installed (entry point), not
    given explicitly, not a first-party plugin. A first-party plugin that is not installed
    may be named (a shared config disables it everywhere)."""
    names = list(disabled)
    if not names:
        return
    known = {"core", *PLUGIN_PACKAGES}
    known.update(ep.name for ep in installed_entry_points(hookspecs.ENTRY_POINT_GROUP))
    known.update(str(getattr(p, "name", None) or type(p).__name__) for p in explicit)
    for name in names:
        if name not in known:
            hint = suggest(name, sorted(known))
            raise ConfigError(
                f"config key 'plugins.disable': no plugin named {name!r}"
                + (f"; did you mean {hint!r}?" if hint else "")
                + f" (plugins: {', '.join(sorted(known))})",
                key="plugins.disable",
                suggestion=hint,
            )


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
    pm = PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs.HookSpecs)
    infos: list[PluginInfo] = []
    blocked = set(disabled)
    for name in blocked:
        pm.set_blocked(name)
    for name, obj in builtin:
        register_checked(pm, obj, name)
        infos.append(_info(pm, name, obj, builtin=True))
    if entry_points:
        for ep in sorted(installed_entry_points(hookspecs.ENTRY_POINT_GROUP), key=lambda e: e.name):
            if ep.name in blocked or pm.has_plugin(ep.name):
                continue
            dist, version = ep.dist, ep.version
            try:
                loaded = ep.load()
                plugin = loaded() if isinstance(loaded, type) else loaded
                register_checked(pm, plugin, ep.name)
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
        register_checked(pm, plugin, name)
        dist, version = _plugin_dist(plugin)
        infos.append(_info(pm, name, plugin, dist=dist, version=version))
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
    known = getattr(pm, "hook_names", {}).get(name)
    if known is not None and pm.get_plugin(name) is plugin:
        hooks = known
    else:
        hooks = tuple(sorted(h.name for h in pm.get_hookcallers(plugin) or ()))
    return PluginInfo(name=name, dist=dist, version=version, hooks=hooks, builtin=builtin)
