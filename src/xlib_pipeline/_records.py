"""Frozen records exchanged between the core and plugins through hooks."""

from __future__ import annotations

import enum
import math
import re
import time
from collections.abc import Callable, Hashable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar, final

import attrs

# Collector records live in ._contributions; imported here for the modules that name them.
from ._contributions import (
    CliCommand as CliCommand,
)
from ._contributions import (
    ConfigKey as ConfigKey,
)
from ._contributions import (
    EvidenceSection as EvidenceSection,
)
from ._contributions import (
    Executor as Executor,
)
from ._contributions import (
    ExecutorSpec as ExecutorSpec,
)
from ._contributions import (
    ManagerDecorator as ManagerDecorator,
)
from ._contributions import (
    PluginInfo as PluginInfo,
)
from ._contributions import (
    RenderTarget as RenderTarget,
)
from ._contributions import (
    RunOption as RunOption,
)
from ._contributions import (
    StreamConnector as StreamConnector,
)
from ._contributions import (
    TaskOption as TaskOption,
)
from ._contributions import (
    flatten as flatten,
)

if TYPE_CHECKING:  # pragma: no cover
    from ._config import Config
    from ._task import Pipeline, Task


#: The grammar of tenant ids: a letter or digit, then up to 62 letters, digits, ``_``, ``.``
#: or ``-``. Tenant ids name worker pools, key files, audit records and Kubernetes labels,
#: so separators such as ``:`` or ``/``, whitespace and markup are refused.
TENANT_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def tenant_id_pattern() -> re.Pattern[str]:
    """The compiled tenant-id grammar (for tools and property tests)."""
    return TENANT_ID_PATTERN


def check_tenant_id(value: Any, *, what: str = "tenant_id") -> str:
    """Return ``value`` when it is a valid tenant id; ``ValueError`` naming ``what`` if not."""
    if not isinstance(value, str) or TENANT_ID_PATTERN.fullmatch(value) is None:
        raise ValueError(
            f"{what} must be 1-63 characters: a letter or digit, then letters, digits, "
            f"'_', '.' or '-'; got {value!r}"
        )
    return value


class Status(enum.StrEnum):
    """A task's state. ``pending`` and ``running`` are transient; the rest are terminal.

    ``cached`` (the output came from the result cache, the function did not run) and
    ``fallback`` (the task failed for good and its ``fallback=`` supplied the output) carry
    an output like ``succeeded``: dependents run with it (see :attr:`has_output`).
    """

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    UPSTREAM_FAILED = "upstream_failed"
    CANCELLED = "cancelled"
    CACHED = "cached"
    FALLBACK = "fallback"

    @property
    def has_output(self) -> bool:
        """Whether a task in this state has an output its dependents receive."""
        return self in _WITH_OUTPUT


_WITH_OUTPUT = frozenset({Status.SUCCEEDED, Status.CACHED, Status.FALLBACK})


def utc(ts: float | None) -> datetime | None:
    """Convert a POSIX timestamp to an aware UTC datetime (``None`` stays ``None``)."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


T = TypeVar("T")
D = TypeVar("D")


@final
class StashKey(Generic[T]):
    """A typed key into :attr:`RunContext.stash`, on pytest's ``StashKey`` model.

    Each plugin makes its own keys at module level (``STATE = StashKey[MyState]()``); a key is
    compared by identity, so two plugins can never collide, and mypy knows the value's type.
    Keys several plugins share are defined in the core (:data:`CLASSIFICATION`).
    """

    __slots__ = ("name",)

    def __init__(self, name: str = "") -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"StashKey({self.name!r})" if self.name else object.__repr__(self)


@final
class Stash:
    """Per-run, type-safe storage shared by plugins: ``run.stash[KEY] = value``.

    Thread-safe for single operations (a dict under the GIL); plugins that read-modify-write
    from several lanes keep a lock in the value they store.
    """

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data: dict[StashKey[Any], Any] = {}

    def __setitem__(self, key: StashKey[T], value: T) -> None:
        if not isinstance(key, StashKey):
            raise TypeError(f"stash keys are StashKey objects, got {key!r}")
        self._data[key] = value

    def __getitem__(self, key: StashKey[T]) -> T:
        try:
            value: T = self._data[key]
        except KeyError:
            raise KeyError(f"no value under {key!r} in this run's stash") from None
        return value

    def get(self, key: StashKey[T], default: D) -> T | D:
        """The value under ``key``, or ``default``."""
        value: T | D = self._data.get(key, default)
        return value

    def setdefault(self, key: StashKey[T], default: T) -> T:
        """The value under ``key``, storing ``default`` first when there is none."""
        value: T = self._data.setdefault(key, default)
        return value

    def pop(self, key: StashKey[T], default: D) -> T | D:
        """Remove and return the value under ``key`` (``default`` when absent)."""
        value: T | D = self._data.pop(key, default)
        return value

    def __delitem__(self, key: StashKey[Any]) -> None:
        del self._data[key]

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)


@attrs.frozen(kw_only=True, eq=False)
class RunContext:
    """One execution of a pipeline, passed to every hook as ``run``. Frozen.

    What plugins decide for a run they decide through hooks that answer before the context
    is built (``resolve_principal``, ``select_executor``); state they share goes in
    ``stash`` under :class:`StashKey` keys. ``tasks`` lists the pipeline's tasks in
    topological order (upstreams first). ``options`` holds the run options given to
    ``execute_pipeline`` (``isolation_mode=`` ...).
    """

    run_id: str
    pipeline: Pipeline
    tasks: tuple[Task, ...]
    config: Config
    manager: Any
    tenant_id: str | None = None
    principal: str | None = None
    executor: str = "threads"
    options: Mapping[str, Any] = attrs.field(factory=dict)
    params: Mapping[str, Any] = attrs.field(factory=dict)
    started: float = attrs.field(factory=time.time)
    resumed_from: str | None = None
    stash: Stash = attrs.field(factory=Stash)
    log: Any = None
    #: The date or time the run is *for* (aware UTC): param ``logical_date`` when given,
    #: else the start of the run (of the first run, for a resumed one).
    logical_date: datetime | None = None
    #: Tasks (or mapped items) at once for this run: ``execute_pipeline(max_workers=)``,
    #: else config ``max_workers``; 1 for an inline run (``parallel=False``).
    max_workers: int | None = None
    #: How the scheduler waits between retries (``PipelineManager.sleep`` at the start).
    sleep: Callable[[float], None] = time.sleep

    @property
    def pipeline_name(self) -> str:
        """The pipeline's name."""
        return self.pipeline.name

    @property
    def task_names(self) -> tuple[str, ...]:
        """The tasks' names, in the order of :attr:`tasks`."""
        return tuple(t.name for t in self.tasks)

    def tenant_of(self, task: Task) -> str | None:
        """The tenant a task runs for: its ``tenant_id`` option, else the run's tenant."""
        return task.options.get("tenant_id") or self.tenant_id

    def recorded_params(self) -> dict[str, Any]:
        """The run's params as records leaving the run hold them (audit trail, lineage):
        JSON values (dates as ISO-8601), each string passed through the manager's
        ``redact`` (PII detection of the classification plugin, when on). The reserved
        ``stream`` param of a stream's batch runs is left out (recorded on its own)."""
        from ._context import params_json

        out = params_json({k: v for k, v in self.params.items() if k != "stream"})
        redact = getattr(self.manager, "redact", None)
        if redact is None or not out:
            return out
        tenant = self.tenant_id

        def clean(value: Any) -> Any:
            if isinstance(value, str):
                return redact(value, tenant=tenant)
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, list):
                return [clean(v) for v in value]
            return value

        return {k: clean(v) for k, v in out.items()}


# --- keys shared by several plugins ---------------------------------------------------------


@attrs.frozen(kw_only=True)
class OutputLevel:
    """The classification of one task's output (see :data:`CLASSIFICATION`)."""

    #: The effective level: ``public`` < ``internal`` < ``confidential`` < ``restricted``.
    level: str
    #: The task's own ``classification=`` option, when it declared one.
    declared: str | None = None
    #: The upstream task whose level this output inherited, when propagation raised it.
    inherited_from: str | None = None
    #: Names of the PII detectors that matched the output.
    detected: tuple[str, ...] = ()


@attrs.define(kw_only=True, eq=False)
class Classification:
    """Per-run classification levels, published by the classification plugin.

    ``outputs`` gains a task's :class:`OutputLevel` when that task succeeds, before any
    other plugin's ``after_task`` for it runs (the classification plugin's ``after_task``
    is ``tryfirst``). Read it with ``run.stash.get(CLASSIFICATION, None)``.
    """

    levels: tuple[str, ...]
    outputs: dict[str, OutputLevel] = attrs.field(factory=dict)

    def level_of(self, task: str) -> str | None:
        """The level of ``task``'s output, or ``None`` when it has none (yet)."""
        entry = self.outputs.get(task)
        return entry.level if entry is not None else None


#: Where the classification plugin publishes levels for audit, lineage and others.
CLASSIFICATION: StashKey[Classification] = StashKey("classification")

#: Whether something in the driver reads task outputs as soon as tasks end in this run: the
#: core sets it before ``before_pipeline`` (true when the run store records outputs), and a
#: plugin whose ``after_task`` reads ``outcome.output`` (audit digests, PII scanning) sets it
#: true in its ``before_pipeline``. An executor that can keep outputs where they were
#: computed (Dask) fetches every output when it is true; otherwise only what the driver
#: needs (final results, inputs of conditions) and successors receive the rest as futures.
OUTPUTS_IN_DRIVER: StashKey[bool] = StashKey("outputs_in_driver")

#: Stale run leases this run took over (their owner's process was gone): one mapping per
#: lease with ``run_id``, ``pid``, ``host`` and ``holder``. The audit plugin records them.
LEASE_TAKEOVERS: StashKey[list[dict[str, Any]]] = StashKey("lease_takeovers")


class TaskOutcome(NamedTuple):
    """How one attempt of a task ended; given to ``after_task`` and ``on_task_error``.

    Immutable. A named tuple rather than an attrs class because the scheduler builds one
    per attempt of every task (about 2.5x cheaper to make); build it with keywords and
    derive a changed copy with :meth:`replace`.
    """

    task: str
    status: Status
    output: Any = None
    error: BaseException | None = None
    traceback: str | None = None
    attempt: int = 1
    started: float | None = None
    finished: float | None = None
    #: False when a retry follows this attempt; True for the task's last word.
    final: bool = True

    @property
    def duration(self) -> float | None:
        """Seconds the attempt took, when it ran."""
        if self.started is None or self.finished is None:
            return None
        return self.finished - self.started

    def replace(self, **changes: Any) -> TaskOutcome:
        """A copy with ``changes`` applied (``outcome.replace(final=False)``)."""
        return self._replace(**changes)


@attrs.frozen(kw_only=True)
class RetryDecision:
    """An ``on_task_error`` answer: retry after ``delay`` seconds, or veto (``retry=False``).

    ``max_attempts`` is how many attempts the deciding policy allows the task in all (the
    first included), when it has a bound: progress displays show ``attempt 2/3`` with it.
    """

    retry: bool = True
    delay: float = 0.0
    reason: str | None = None
    max_attempts: int | None = None


@attrs.frozen(kw_only=True)
class ResourceLimits:
    """Operating-system limits for a task's worker process."""

    memory_bytes: int | None = None
    cpu_cores: int | None = None
    wall_seconds: float | None = None

    @classmethod
    def from_mapping(cls, value: Mapping[str, Any] | None) -> ResourceLimits:
        """Build from the guide's form: ``{"cpu_cores": 2, "memory_gb": 4}``."""
        if not value:
            return cls()
        known = {"cpu_cores", "memory_gb", "memory_mb", "memory_bytes", "wall_seconds"}
        unknown = set(value) - known
        if unknown:
            raise ValueError(
                f"unknown resource limit(s) {sorted(unknown)}; expected some of {sorted(known)}"
            )

        def finite(name: str, v: Any, *, integer: bool = False) -> float | None:
            if v is None:
                return None
            kind = int if integer else (int, float)
            if (
                isinstance(v, bool)
                or not isinstance(v, kind)
                or (isinstance(v, float) and not math.isfinite(v))
                or v <= 0
                or v > _LIMIT_MAX.get(name, 2**62)
            ):
                what = "a positive integer" if integer else "a positive finite number"
                cap = _LIMIT_MAX.get(name)
                raise ValueError(
                    f"resource limit {name} must be {what}"
                    + (f" of at most {cap:g}" if cap is not None else "")
                    + f", got {v!r}"
                )
            return float(v)

        mem: int | None = None
        for name, scale in (("memory_bytes", 1), ("memory_mb", 1024**2), ("memory_gb", 1024**3)):
            amount = finite(name, value.get(name), integer=name == "memory_bytes")
            if amount is not None and mem is None:
                mem = int(amount * scale)
        if mem is not None and mem > 2**62:
            raise ValueError(f"resource limit memory must be at most 4 EiB, got {mem} bytes")
        cores = finite("cpu_cores", value.get("cpu_cores"), integer=True)
        wall = finite("wall_seconds", value.get("wall_seconds"))
        return cls(
            memory_bytes=mem,
            cpu_cores=int(cores) if cores is not None else None,
            wall_seconds=wall,
        )


#: Upper bounds of resource limits (a year of wall time; more cores than any machine).
_LIMIT_MAX = {"wall_seconds": 365 * 24 * 3600.0, "cpu_cores": 4096}


@attrs.frozen(kw_only=True)
class Isolation:
    """Where a task runs, answered by the ``isolate`` hook.

    ``executor`` names a registered executor (``None``: the run's default); ``pool`` keys a
    separate set of warm workers (one per tenant, say); ``limits`` apply to that pool.
    ``pool`` is any hashable value, best a tuple: executors key their pools by
    ``(tenant, pool, limits)`` so two tenants never share a worker process, whatever
    ``pool`` says.
    """

    executor: str | None = None
    pool: Hashable | None = None
    tenant: str | None = None
    limits: ResourceLimits = attrs.field(factory=ResourceLimits)


@attrs.frozen(kw_only=True)
class PayloadRef:
    """Identifies a payload at rest, for ``encrypt``/``decrypt`` and as AAD binding."""

    run_id: str
    pipeline: str
    task: str
    tenant: str | None = None
    kind: str = "output"

    def aad(self) -> bytes:
        """Canonical associated data binding a ciphertext to its run, task and tenant."""
        parts = (self.kind, self.pipeline, self.run_id, self.task, self.tenant or "")
        return "\x1f".join(parts).encode()
