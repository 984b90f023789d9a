"""Configuration: the core's keys and validation of every key plugins register.

``PipelineManager(config)`` takes a plain dict. Each key is owned by the core or by a
plugin (through ``register_config_keys``); dotted names such as ``security.access_control``
address nested dicts. An unknown key is a :class:`ConfigError` naming the key and the
closest valid one; a key owned by a plugin that is not installed names the package.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from ._names import suggest
from ._plugins import KNOWN_CONFIG_KEYS, package_for
from ._records import ConfigKey
from .exceptions import ConfigError, MissingPluginConfigError

EXECUTION_STRATEGIES = ("intelligent", "fifo")
FAILURE_POLICIES = ("continue", "stop", "fallback_only")


def data_dir() -> Path:
    """Where embedded defaults live (run store, audit trail, lineage file): the folder named
    by ``XLIB_PIPELINE_HOME``, else ``.xlib-pipeline`` in the current directory."""
    env = os.environ.get("XLIB_PIPELINE_HOME")
    return Path(env) if env else Path.cwd() / ".xlib-pipeline"


def default_max_workers() -> int:
    """The standard library ThreadPoolExecutor default: ``min(32, cpu_count + 4)``."""
    return min(32, (os.cpu_count() or 1) + 4)


def positive_int_or_none(value: Any) -> int | None:
    """Convert to a positive int, or ``None``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a positive integer, got {value!r}")
    return value


#: The longest duration any seconds-valued key or option accepts (a year): longer values
#: overflow the operating system's timers.
MAX_SECONDS = 365 * 24 * 3600.0


def number(
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    integer: bool = False,
    exclusive_minimum: bool = False,
    what: str = "value",
) -> Callable[[Any], Any]:
    """A converter accepting a finite int (or float unless ``integer``) within the bounds.

    Booleans and strings are refused (``"10"`` is a mistake, not ten); so are NaN and the
    infinities. The error names ``what`` and the accepted range.
    """

    def describe() -> str:
        kind = "an integer" if integer else "a number"
        parts = []
        if minimum is not None:
            parts.append(f"{'>' if exclusive_minimum else '>='} {minimum:g}")
        if maximum is not None:
            parts.append(f"<= {maximum:g}")
        return kind + (" " + " and ".join(parts) if parts else "")

    def convert(value: Any) -> Any:
        ok_type = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, ok_type):
            raise ValueError(f"{what} must be {describe()}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{what} must be {describe()} (finite), got {value!r}")
        if minimum is not None and (value < minimum or (exclusive_minimum and value == minimum)):
            raise ValueError(f"{what} must be {describe()}, got {value!r}")
        if maximum is not None and value > maximum:
            raise ValueError(f"{what} must be {describe()}, got {value!r}")
        return value if integer else float(value)

    return convert


def seconds(*, positive: bool = False, what: str = "value") -> Callable[[Any], float]:
    """A converter for a duration: a finite number of seconds, at most :data:`MAX_SECONDS`."""
    return number(minimum=0.0, maximum=MAX_SECONDS, exclusive_minimum=positive, what=what)


def boolean(value: Any) -> bool:
    """Accept only real booleans (``"false"`` is a mistake, not a truthy value)."""
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def one_of(*choices: str) -> Any:
    """A converter accepting one of ``choices``."""

    def convert(value: Any) -> str:
        if value not in choices:
            hint = suggest(str(value), choices)
            extra = f"; did you mean {hint!r}?" if hint else ""
            raise ValueError(f"expected one of {list(choices)}, got {value!r}{extra}")
        return str(value)

    return convert


def check_keys(value: Any, allowed: Iterable[str], *, example: str) -> dict[str, Any]:
    """Validate a config section: a mapping whose keys are all in ``allowed``.

    Raises ``ValueError`` naming the unknown key, the closest allowed one and the
    expected shape (``example``); returns a plain dict copy.
    """
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a mapping like {example}, got {value!r}")
    allowed = list(allowed)
    for k in value:
        if k not in allowed:
            hint = suggest(str(k), allowed)
            extra = f"; did you mean {hint!r}?" if hint else ""
            raise ValueError(f"unknown key {k!r}; expected some of {allowed}{extra}")
    return dict(value)


def _yaml(file: Path) -> Any:
    """The ``yaml`` module (PyYAML, the ``[yaml]`` extra), or an error naming ``file``."""
    try:
        import yaml  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        raise ValueError(
            f"file {str(file)!r}: reading YAML needs PyYAML, which is not installed: install "
            "the extra xlib-pipeline[yaml] (or pip install PyYAML), or use a .json or .toml "
            "file"
        ) from None
    return yaml


def read_mapping_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a JSON, TOML or YAML file holding a mapping (config files, policy files).

    Raises ``ValueError`` naming the file and what was wrong with it.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"file {str(file)!r} does not exist")
    suffix = file.suffix.lower()
    if suffix not in (".json", ".toml", ".yaml", ".yml"):
        raise ValueError(f"file {str(file)!r}: expected .json, .toml, .yaml or .yml")
    text = file.read_text()
    loader: Any = _yaml(file) if suffix in (".yaml", ".yml") else None
    try:
        if suffix == ".json":
            data = json.loads(text)
        elif suffix == ".toml":
            data = tomllib.loads(text)
        else:
            data = loader.safe_load(text)
    except ValueError as exc:  # JSON, TOML and YAML errors all derive from ValueError
        raise ValueError(f"file {str(file)!r} is not valid {suffix[1:].upper()}: {exc}") from exc
    except Exception as exc:  # yaml.YAMLError
        raise ValueError(f"file {str(file)!r} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"file {str(file)!r} must hold a mapping at the top level")
    return data


def string_list(value: Any) -> tuple[str, ...]:
    """A list of strings."""
    if isinstance(value, str) or not all(isinstance(v, str) for v in value or ()):
        raise ValueError(f"expected a list of names, got {value!r}")
    return tuple(value or ())


def plugins_section(value: Any) -> dict[str, Any]:
    """The ``plugins`` section: ``{"disable": [...], "entry_points": bool}``."""
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a mapping like {{'disable': ['audit']}}, got {value!r}")
    unknown = set(value) - {"disable", "entry_points"}
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)}; expected 'disable', 'entry_points'")
    return {
        "disable": string_list(value.get("disable", ())),
        "entry_points": boolean(value.get("entry_points", True)),
    }


@attrs.frozen(kw_only=True)
class CoreConfig:
    """The core's settings. See docs/configuration.md for every key."""

    max_workers: int = attrs.field(factory=default_max_workers)
    executor: str = "threads"
    execution_strategy: str = "intelligent"
    dependency_optimization: bool = True
    parallel_execution: bool = True
    on_failure: str = "continue"
    actor: str | None = None


CORE_KEYS = (
    ConfigKey(
        name="max_workers",
        convert=positive_int_or_none,
        doc="Tasks run at once with parallel=True (default: ThreadPoolExecutor's).",
    ),
    ConfigKey(name="executor", convert=str, default="threads", doc="Default executor name."),
    ConfigKey(
        name="execution_strategy",
        convert=one_of(*EXECUTION_STRATEGIES),
        default="intelligent",
        doc="Order of ready tasks: 'intelligent' runs the longest remaining path first; "
        "'fifo' runs them in definition order.",
    ),
    ConfigKey(
        name="dependency_optimization",
        convert=boolean,
        default=True,
        doc="Run a task's lone ready successor on the same worker, skipping a thread hand-off.",
    ),
    ConfigKey(
        name="parallel_execution",
        convert=boolean,
        default=True,
        doc="Default for execute_pipeline(parallel=...): threads when true, inline when false.",
    ),
    ConfigKey(
        name="on_failure",
        convert=one_of(*FAILURE_POLICIES),
        default="continue",
        doc="'continue' runs every task not downstream of a failure; 'stop' starts nothing "
        "new after the first failure, even one a fallback= absorbed (those tasks end "
        "cancelled); 'fallback_only' lets only fallbacks absorb failures: a task without a "
        "fallback that fails stops the run as 'stop' does, a task whose fallback stood in "
        "does not.",
    ),
    ConfigKey(
        name="actor", convert=str, doc="Who runs pipelines (audit records); default: OS user."
    ),
    ConfigKey(name="plugins", convert=plugins_section, doc="{'disable': [names]}."),
    ConfigKey(
        name="store",
        convert=lambda v: __import__("xlib_pipeline._store", fromlist=["x"]).store_section(v),
        doc="Run store: {'path': FILE, 'synchronous': 'normal'|'full', "
        "'record_outputs': True, 'busy_timeout_ms': 30000}.",
    ),
    ConfigKey(
        name="compliance_mode",
        convert=boolean,
        default=False,
        doc="true turns on the whole compliance set with embedded defaults: the run store, "
        "audit trail, lineage, classification with PII detection and encryption at rest "
        "(keys you set yourself win). Refuses to start if one of those plugins is missing.",
    ),
    ConfigKey(
        name="freeze_inputs",
        convert=boolean,
        default=False,
        doc="Give every task its own deep copies of its inputs (threads executor: tasks "
        "share objects otherwise, so a task mutating an input changes what siblings and "
        "result.tasks see). The task option freeze_inputs= overrides it per task.",
    ),
    ConfigKey(
        name="cancel_grace_seconds",
        convert=seconds(what="cancel_grace_seconds"),
        default=10.0,
        doc="On cancellation (Ctrl-C, SIGTERM), how long running tasks may finish.",
    ),
)


#: What ``compliance_mode: true`` turns on: (dotted key, value, plugin owning it, what it
#: is, the plugin's own section key, which must not say ``false``).
COMPLIANCE_SET: tuple[tuple[str, Any, str | None, str, str], ...] = (
    ("store", True, None, "the run store", "store"),
    ("audit_logging", True, "audit", "the audit trail", "audit"),
    ("data_lineage", True, "lineage", "OpenLineage lineage", "lineage"),
    (
        "security_scanning",
        True,
        "classification",
        "classification with PII detection",
        "classification",
    ),
    ("security.encryption_at_rest", True, "encryption", "encryption at rest", "encryption"),
)


def expand_compliance_mode(raw: Mapping[str, Any], keys: Mapping[str, ConfigKey]) -> dict[str, Any]:
    """``raw`` with the keys ``compliance_mode: true`` implies, where the user set none.

    Raises :class:`MissingPluginConfigError` naming ``compliance_mode`` and the package when
    a plugin of the set is not installed (or is disabled).
    """
    out = dict(raw)
    if out.get("compliance_mode") is not True:
        return out
    for key, value, plugin, what, section in COMPLIANCE_SET:
        off = out.get(section) is False
        if off or (isinstance(out.get(section), Mapping) and out[section].get("enabled") is False):
            said = f"{section}: false" if off else f"{section}.enabled: false"
            raise ConfigError(
                f"compliance_mode: true turns on {what}, but config says {said}; drop one of them",
                key=section,
            )
        if key not in keys:
            err = MissingPluginConfigError("compliance_mode", package_for(plugin or key))
            err.args = (
                f"compliance_mode: true turns on {what}, which needs the plugin "
                f"{package_for(plugin or key)!r}; it is not installed or is disabled: "
                f"pip install {package_for(plugin or key)}",
            )
            raise err
        head, _, leaf = key.rpartition(".")
        node = out
        if head:
            sub = node.get(head)
            if sub is None:
                sub = {}
            elif not isinstance(sub, Mapping):
                continue  # a malformed section: validation names it
            node[head] = node = dict(sub)
        node.setdefault(leaf, value)
    return out


@attrs.frozen(kw_only=True)
class Config:
    """A validated configuration: the core's :class:`CoreConfig` plus every plugin key."""

    core: CoreConfig
    values: Mapping[str, Any]
    raw: Mapping[str, Any]

    def get(self, key: str, default: Any = None) -> Any:
        """The converted value of dotted ``key`` (its registered default when absent)."""
        return self.values.get(key, default)

    def given(self, key: str) -> bool:
        """Whether the user set ``key`` explicitly."""
        node: Any = self.raw
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return False
            node = node[part]
        return True


def validate(raw: Mapping[str, Any] | None, keys: Mapping[str, ConfigKey]) -> Config:
    """Validate ``raw`` against the registered ``keys``; see the module docstring."""
    raw = dict(raw or {})
    if not isinstance(raw, Mapping):  # pragma: no cover - guarded by dict()
        raise ConfigError(f"config must be a mapping, got {type(raw).__name__}")
    raw = expand_compliance_mode(raw, keys)
    values: dict[str, Any] = {}
    _walk(raw, "", keys, values)
    for name, key in keys.items():
        if name not in values and key.default is not None:
            values[name] = key.default
    core = CoreConfig(
        max_workers=values.get("max_workers") or default_max_workers(),
        executor=values.get("executor", "threads"),
        execution_strategy=values.get("execution_strategy", "intelligent"),
        dependency_optimization=values.get("dependency_optimization", True),
        parallel_execution=values.get("parallel_execution", True),
        on_failure=values.get("on_failure", "continue"),
        actor=values.get("actor"),
    )
    return Config(core=core, values=values, raw=raw)


def _walk(
    node: Mapping[str, Any], prefix: str, keys: Mapping[str, ConfigKey], out: dict[str, Any]
) -> None:
    for k, v in node.items():
        if not isinstance(k, str):
            raise ConfigError(f"config keys must be strings, got {k!r}", key=repr(k))
        path = prefix + k
        key = keys.get(path)
        if key is not None:
            try:
                out[path] = key.convert(v)
            except ConfigError:
                raise
            except (ValueError, TypeError, ArithmeticError) as exc:
                raise ConfigError(f"config key {path!r}: {exc}", key=path) from exc
            continue
        is_namespace = any(n.startswith(path + ".") for n in keys) or any(
            n.startswith(path + ".") for n in KNOWN_CONFIG_KEYS
        )
        if is_namespace and isinstance(v, Mapping):
            _walk(v, path + ".", keys, out)
            continue
        plugin = KNOWN_CONFIG_KEYS.get(path)
        if plugin is not None:
            raise MissingPluginConfigError(path, package_for(plugin))
        candidates = [n for n in (*keys, *KNOWN_CONFIG_KEYS) if n.startswith(prefix)]
        hint = suggest(path, candidates)
        if hint is None and prefix:
            hint = suggest(k, [n[len(prefix) :] for n in candidates])
            hint = prefix + hint if hint else None
        extra = f"; did you mean {hint!r}?" if hint else ""
        raise ConfigError(f"unknown config key {path!r}{extra}", key=path, suggestion=hint)
