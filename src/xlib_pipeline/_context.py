"""What a task may ask for: run params by name and a :class:`TaskContext`.

A task function's parameters split in two at plan compile time (:func:`call_spec`): the
first ones take the upstream results positionally, in ``depends_on`` order; every parameter
after them that can be passed by keyword is a *param slot*, filled from the run's params
(``execute_pipeline(params=...)``, ``xlib-pipeline run --param``) when a param of that name
is given. A slot annotated :class:`TaskContext` (or named ``context``) receives the task's
context instead. Tasks without slots are called exactly as before: the decision is made
once per plan, never per call.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, date, datetime
from typing import Any

import attrs

from .exceptions import ConfigError, DefinitionError

#: Params with a meaning of their own, accepted by every pipeline: ``logical_date`` (the
#: date or time a run is *for*: a backfill's day) and ``stream`` (set by streams on each
#: micro-batch run).
RESERVED_PARAMS: tuple[str, ...] = ("logical_date", "stream")

_IMMUTABLE = (str, int, float, bool, bytes, type(None), date, datetime)


class Params(Mapping[str, Any]):
    """A read-only, picklable mapping of a run's params."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        self._data = dict(data or {})

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"Params({self._data!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self._data) == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (Params, (self._data,))


class TaskContext:
    """The read-only view of its run that a task may ask for.

    Declare a parameter annotated ``TaskContext`` (or named ``context``) after the upstream
    results to receive it::

        @p.task("extract")
        def extract(context: TaskContext):
            context.log.info("extracting", day=context.params["day"])

    It is small and picklable (it travels to worker processes and Dask workers with the
    task) and holds no manager, config or plan: ``params``, ``run_id``, ``pipeline``,
    ``task``, ``attempt`` (1 for the first try), ``tenant``, ``logical_date`` (an aware
    UTC datetime) and ``log``, a structlog logger bound to the pipeline, run, task and
    attempt (made on first use in the process that runs the task).
    """

    __slots__ = (
        "_log",
        "attempt",
        "logical_date",
        "params",
        "pipeline",
        "run_id",
        "task",
        "tenant",
    )

    _log: Any
    params: Params
    run_id: str
    pipeline: str
    task: str
    attempt: int
    tenant: str | None
    logical_date: datetime

    def __init__(
        self,
        *,
        params: Mapping[str, Any],
        run_id: str,
        pipeline: str,
        task: str,
        attempt: int,
        tenant: str | None,
        logical_date: datetime,
    ) -> None:
        s = object.__setattr__
        s(self, "params", params if isinstance(params, Params) else Params(params))
        s(self, "run_id", run_id)
        s(self, "pipeline", pipeline)
        s(self, "task", task)
        s(self, "attempt", attempt)
        s(self, "tenant", tenant)
        s(self, "logical_date", logical_date)
        s(self, "_log", None)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"TaskContext is read-only: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"TaskContext is read-only: cannot delete {name!r}")

    @property
    def log(self) -> Any:
        """A structlog logger bound to ``pipeline``, ``run_id``, ``task`` and ``attempt``;
        its events reach the standard ``logging`` logger ``"xlib_pipeline.task"``."""
        log = self._log
        if log is None:
            from ._events import get_logger

            log = get_logger(
                "xlib_pipeline.task",
                pipeline=self.pipeline,
                run_id=self.run_id,
                task=self.task,
                attempt=self.attempt,
            )
            object.__setattr__(self, "_log", log)
        return log

    def _fields(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__ if k != "_log"}

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self._fields(),))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TaskContext):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"TaskContext(pipeline={self.pipeline!r}, task={self.task!r}, run_id={self.run_id!r}, "
            f"attempt={self.attempt}, tenant={self.tenant!r}, "
            f"logical_date={self.logical_date.isoformat()!r}, params={dict(self.params)!r})"
        )


def _rebuild(fields: dict[str, Any]) -> TaskContext:
    return TaskContext(**fields)


@attrs.frozen
class CallSpec:
    """How a task function takes params and its context, decided at plan compile time."""

    #: Keyword parameters filled from run params of the same name, when given.
    params: tuple[str, ...] = ()
    #: Those of them without a default: a run must give them.
    required: tuple[str, ...] = ()
    #: The parameter receiving the :class:`TaskContext`, if any.
    context: str | None = None


def _is_context(p: inspect.Parameter) -> bool:
    ann = p.annotation
    if ann is TaskContext:
        return True
    if isinstance(ann, str):
        return ann.rsplit(".", 1)[-1] == "TaskContext"
    return ann is inspect.Parameter.empty and p.name == "context"


def call_spec(fn: Callable[..., Any], count: int) -> tuple[CallSpec | None, bool]:
    """``(spec, ok)`` for a function called with ``count`` upstream results.

    ``spec`` is ``None`` when the function takes no params and no context; ``ok`` is false
    when it cannot take ``count`` positional arguments at all (an arity error).
    """
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: trust them
        return None, True
    left = count
    names: list[str] = []
    required: list[str] = []
    context: str | None = None
    for p in sig.parameters.values():
        kind = p.kind
        if kind is p.VAR_POSITIONAL:
            left = 0
            continue
        if kind is p.VAR_KEYWORD:
            continue
        if left and kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            left -= 1
            continue
        if kind is p.POSITIONAL_ONLY:
            if p.default is p.empty:
                return None, False  # can be filled neither by an upstream nor by name
            continue
        if _is_context(p):
            context = p.name
            continue
        names.append(p.name)
        if p.default is p.empty:
            required.append(p.name)
    if left:
        return None, False  # more upstream results than positional parameters
    if not names and context is None:
        return None, True
    return CallSpec(params=tuple(names), required=tuple(required), context=context), True


# --- run-time checks --------------------------------------------------------------------------


def known_params(specs: tuple[CallSpec | None, ...]) -> tuple[set[str], bool]:
    """The param names a plan's tasks take, and whether some task takes the context
    (which can read any param)."""
    names: set[str] = set()
    ctx = False
    for s in specs:
        if s is not None:
            names.update(s.params)
            ctx = ctx or s.context is not None
    return names, ctx


def check_params(
    pipeline: str,
    names: tuple[str, ...],
    specs: tuple[CallSpec | None, ...],
    params: Mapping[str, Any],
    skip: set[int] | frozenset[int] = frozenset(),
    declared: Mapping[str, Any] | None = None,
) -> None:
    """Refuse unknown params (naming the known ones) and missing required ones.

    ``declared`` is the pipeline's own declaration (``Pipeline(params=...)``): with one,
    unknown params are refused even when a task takes the context."""
    if not isinstance(params, Mapping):
        raise ConfigError(f"params must be a dict of name -> value, got {type(params).__name__}")
    for key in params:
        if not isinstance(key, str) or not key.isidentifier():
            raise ConfigError(
                f"pipeline {pipeline!r}: param names are Python identifiers (they are passed "
                f"to task parameters of the same name), got {key!r}",
                key="params",
            )
    known, ctx = known_params(specs)
    if declared is not None:
        known.update(declared)
    if not ctx or declared is not None:
        unknown = sorted(k for k in params if k not in known and k not in RESERVED_PARAMS)
        if unknown:
            listed = ", ".join(sorted(known)) or "none"
            from ._graph import suggest

            hint = suggest(unknown[0], known)
            raise ConfigError(
                f"pipeline {pipeline!r} has no param {unknown[0]!r}"
                + (f" (also unknown: {', '.join(unknown[1:])})" if unknown[1:] else "")
                + (f"; did you mean {hint!r}?" if hint else "")
                + f"; it takes: {listed} (a task takes a param through a keyword "
                "parameter of that name after its upstream results; Pipeline(params=[...]) "
                "declares those its tasks read through their TaskContext)",
                key="params",
            )
    for i, s in enumerate(specs):
        if s is None or not s.required or i in skip:
            continue
        missing = [n for n in s.required if n not in params]
        if missing:
            raise DefinitionError(
                f"task {names[i]!r} of pipeline {pipeline!r} needs the run param "
                f"{missing[0]!r}"
                + (f" (and {', '.join(missing[1:])})" if missing[1:] else "")
                + ": its function has a parameter of that name with no default after its "
                "upstream results; pass params={"
                + repr(missing[0])
                + ": ...} (CLI: --param "
                + missing[0]
                + "=...), give the parameter a default, or list an upstream in depends_on",
                task=names[i],
            )


def logical_date(params: Mapping[str, Any], default: float) -> datetime:
    """The run's logical date: param ``logical_date`` (ISO date or datetime, ``date`` or
    ``datetime``; naive means UTC) or the POSIX time ``default``."""
    value = params.get("logical_date")
    if value is None:
        return datetime.fromtimestamp(default, UTC)
    parsed: datetime | None = None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            parsed = None
    if parsed is None:
        raise ConfigError(
            "param logical_date must be an ISO-8601 date or datetime (2024-05-01, "
            f"2024-05-01T06:00:00+00:00), a date or a datetime; got {value!r}",
            key="params",
        )
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def param_value(value: Any) -> Any:
    """A param as a task receives it: its own copy when it is mutable, so no task can
    change what another task (or the recorded run) sees."""
    if isinstance(value, _IMMUTABLE):
        return value
    try:
        return copy.deepcopy(value)
    except Exception:
        return value


def params_json(params: Mapping[str, Any]) -> dict[str, Any]:
    """Params as JSON can hold them (the run store, the audit trail, lineage facets): dates
    and times as ISO-8601, tuples and sets as lists, other objects as their ``repr``."""
    return {str(k): _json_value(v) for k, v in params.items()}


_PLAIN = frozenset((str, int, float, bool, type(None)))


def _json_value(value: Any) -> Any:
    t = type(value)
    if t in _PLAIN:  # exact types first: a stream batch's params are these, a dict, a list
        return value
    if t is dict:
        return {str(k): _json_value(v) for k, v in value.items()}
    if t is list:
        return [_json_value(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((_json_value(v) for v in value), key=repr)
    return repr(value)
