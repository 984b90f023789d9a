"""The core's own defaults, registered like any plugin (``trylast`` where they provide)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ._budget import budget_section, needs_option
from ._config import CORE_KEYS, boolean, seconds
from ._records import (
    CliCommand,
    ConfigKey,
    ExecutorSpec,
    PayloadRef,
    StreamConnector,
    TaskOption,
    check_tenant_id,
)
from .exceptions import MissingPluginError
from .hookspecs import hookimpl

#: Prefix of every ciphertext the encryption plugin writes (versioned header follows).
ENCRYPTED_MAGIC = b"XLPENC"


_timeout = seconds(positive=True, what="timeout")


def _tenant(value: Any) -> str:
    return check_tenant_id(value)


def _local(name: str) -> Any:
    from ._executors import LocalExecutor

    return LocalExecutor(name)


def _processes(manager: Any) -> Any:
    from ._executors import ProcessExecutor

    return ProcessExecutor(manager)


def _callable(value: Any) -> Any:
    if not callable(value):
        raise ValueError(f"expected a function of the task's inputs, got {value!r}")
    return value


def cache_section(value: Any) -> dict[str, Any]:
    """Config ``cache``: ``{"enabled": bool, "default_ttl": seconds | None}``."""
    from ._config import check_keys

    out = check_keys(value, ("enabled", "default_ttl"), example="{'enabled': True}")
    if "enabled" in out:
        out["enabled"] = boolean(out["enabled"])
    if out.get("default_ttl") is not None:
        out["default_ttl"] = seconds(positive=True, what="default_ttl")(out["default_ttl"])
    return out


def _window(value: Any) -> Any:
    from .streams import WindowSpec

    return WindowSpec.from_value(value)


class CorePlugin:
    """Config keys, task options, executors and the pass-through payload codec."""

    name = "core"

    @hookimpl
    def register_config_keys(self) -> Iterable[ConfigKey]:
        return (
            *CORE_KEYS,
            ConfigKey(
                name="cache",
                convert=cache_section,
                doc="The result cache: {'enabled': False, 'default_ttl': None}. enabled: true "
                "caches every task (cache=False opts one out); default_ttl in seconds.",
            ),
            ConfigKey(
                name="resources",
                convert=budget_section,
                doc="The scheduling budget tasks' resources= draw on, e.g. {'cpu': 8, "
                "'memory_gb': 32, 'db_connections': 4} (cpu defaults to os.cpu_count(), "
                "memory_gb to the available memory), plus max_bypass (4). Not an OS limit: "
                "see the tenancy plugin's resource_limits for that.",
            ),
        )

    @hookimpl
    def register_task_options(self) -> Iterable[TaskOption]:
        return (
            TaskOption(
                name="timeout",
                convert=_timeout,
                doc="Seconds a task may run; past it the task fails as timed out.",
            ),
            TaskOption(
                name="freeze_inputs",
                convert=boolean,
                doc="Pass this task deep copies of its inputs (see config freeze_inputs).",
            ),
            TaskOption(
                name="window",
                convert=_window,
                doc="Event-time window of a stream task (size, slide, field, delay, "
                "allowed_lateness); see docs/streams.md.",
            ),
            TaskOption(
                name="fallback",
                doc="What stands in when the task fails for good: a value (FallbackValue(...) "
                "for a string or None), a callable receiving the exception (and the inputs), "
                "or the name of another task, which then runs only as the fallback. "
                "See docs/fallbacks.md.",
            ),
            TaskOption(
                name="contract",
                doc="Validate the output before dependents, the store or classification see "
                "it: a pydantic model (or list[Model], or {field: type}), a pandera schema, "
                "or a callable returning bool. See docs/contracts.md.",
            ),
            TaskOption(
                name="input_contract",
                doc="Validate the inputs before the task runs: one contract (one upstream) or "
                "{upstream name: contract}. See docs/contracts.md.",
            ),
            TaskOption(
                name="resources",
                convert=needs_option,
                doc="What the task needs while it runs, e.g. {'cpu': 2, 'memory_gb': 8, "
                "'gpu': 1}: tasks never run together beyond config 'resources' (the budget). "
                "See docs/resources.md.",
            ),
            TaskOption(
                name="cache",
                convert=boolean,
                doc="Serve the output from the result cache when code, inputs, cache_version, "
                "params and tenant match a stored entry (status 'cached'). See docs/caching.md.",
            ),
            TaskOption(
                name="cache_ttl",
                convert=seconds(positive=True, what="cache_ttl"),
                doc="Seconds a cache entry of this task serves (default: cache.default_ttl, "
                "else forever).",
            ),
            TaskOption(
                name="cache_key",
                convert=_callable,
                doc="A function of the task's inputs whose (hashable) return value replaces the "
                "code and input fingerprints in the key; tenant and version stay in it.",
            ),
            TaskOption(
                name="cache_version",
                convert=str,
                doc="A string in the cache key: change it to invalidate the task's entries.",
            ),
            TaskOption(
                name="tenant_id",
                convert=_tenant,
                doc="The tenant a task runs for (audit, encryption keys, isolation).",
            ),
        )

    @hookimpl
    def register_cli_commands(self) -> Iterable[CliCommand]:
        from ._core_cli import core_cli_commands

        return core_cli_commands()

    @hookimpl
    def register_executors(self) -> Iterable[ExecutorSpec]:
        # The executors (cloudpickle, worker pools) load when a run first needs one.
        return (
            ExecutorSpec(
                name="inline",
                factory=lambda manager: _local("inline"),
                doc="Every task in the calling thread, one at a time (parallel=False).",
            ),
            ExecutorSpec(
                name="threads",
                factory=lambda manager: _local("threads"),
                doc="Tasks on max_workers threads of the driver process (parallel=True).",
            ),
            ExecutorSpec(
                name="processes",
                factory=_processes,
                doc="Tasks in warm worker processes (fresh interpreters; cloudpickle).",
            ),
        )

    @hookimpl
    def register_stream_connectors(self) -> Iterable[StreamConnector]:
        # Imported when a stream is built, so plain batch runs never load the streams package.
        def jsonl_source(url: str, options: Any) -> Any:
            from .streams import JsonLinesSource

            return JsonLinesSource.from_url(url, options)

        def jsonl_sink(url: str, options: Any) -> Any:
            from .streams import JsonLinesSink

            return JsonLinesSink.from_url(url, options)

        return (
            StreamConnector(
                scheme="jsonl",
                source=jsonl_source,
                sink=jsonl_sink,
                doc="JSON-lines file: jsonl:PATH (source options: follow, poll_interval).",
            ),
        )

    @hookimpl(trylast=True)
    def encrypt(self, data: bytes, ref: PayloadRef) -> bytes | None:
        return data

    @hookimpl(trylast=True)
    def decrypt(self, data: bytes, ref: PayloadRef) -> bytes | None:
        if data.startswith(ENCRYPTED_MAGIC):
            raise MissingPluginError(
                f"decrypting the stored output of task {ref.task!r} (run {ref.run_id})",
                "xlib-pipeline-encryption",
            )
        return data
