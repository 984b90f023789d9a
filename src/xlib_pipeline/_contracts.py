"""Output and input contracts ("data validation"): ``contract=`` and ``input_contract=``.

A contract is one of

* a pydantic model, a type pydantic validates (``list[Model]``, ``dict[str, Model]`` ...),
  or a mapping of field names to types (a model built on the fly);
* a pandera schema (``DataFrameSchema``, ``SeriesSchema``) or ``DataFrameModel`` class;
* any other callable, which passes unless it returns ``False`` or raises.

pydantic and pandera are optional dependencies of the core (``xlib-pipeline[contracts]``);
a contract that needs one of them when it is missing is a :class:`MissingExtraError`
naming the extra. Checking a value never changes it: the output dependents receive is the
one the task returned.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from ._task import Task
from .exceptions import DefinitionError, MissingExtraError

#: Longest quoted value in a contract error (longer ones are cut).
MAX_QUOTE = 120


@attrs.frozen
class Violation:
    """Why a value broke its contract: where (field, row, column) and what, and the failing
    value (quoted only when the data may be shown)."""

    location: str | None
    reason: str
    value: Any = None
    has_value: bool = False


def _from(spec: Any, prefix: str) -> bool:
    mro = getattr(spec, "__mro__", None) or type(spec).__mro__
    return any(getattr(c, "__module__", "").split(".")[0] == prefix for c in mro)


def _require(module: str, feature: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(feature, module, "contracts") from None


def _location(loc: tuple[Any, ...]) -> str | None:
    if not loc:
        return None
    parts = []
    for k in loc:
        parts.append(f"row {k}" if isinstance(k, int) else f"field {str(k)!r}")
    return ", ".join(parts)


class Checker:
    """A compiled contract: ``check(value)`` answers ``None`` or the first :class:`Violation`."""

    kind = "callable"

    def __init__(self, describe: str) -> None:
        self.describe = describe

    def check(self, value: Any) -> Violation | None:  # pragma: no cover - abstract
        raise NotImplementedError


class PydanticChecker(Checker):
    kind = "pydantic"

    def __init__(self, spec: Any, describe: str) -> None:
        super().__init__(describe)
        pydantic = _require("pydantic", f"contract {describe}")
        if isinstance(spec, Mapping):
            fields = {str(k): (v, ...) for k, v in spec.items()}
            spec = pydantic.create_model("Contract", **fields)
        self.adapter = pydantic.TypeAdapter(spec)
        self.error_type = pydantic.ValidationError

    def check(self, value: Any) -> Violation | None:
        try:
            self.adapter.validate_python(value)
        except self.error_type as exc:
            first = exc.errors()[0]
            return Violation(
                _location(tuple(first.get("loc", ()))),
                str(first.get("msg", "invalid")),
                first.get("input"),
                "input" in first,
            )
        return None


class PanderaChecker(Checker):
    kind = "pandera"

    def __init__(self, spec: Any, describe: str) -> None:
        super().__init__(describe)
        pandera = _require("pandera", f"contract {describe}")
        self.spec = spec
        errors = pandera.errors
        self.errors = (errors.SchemaError, errors.SchemaErrors)

    def check(self, value: Any) -> Violation | None:
        try:
            self.spec.validate(value, lazy=True)
        except self.errors as exc:
            return _pandera_violation(exc)
        except (TypeError, AttributeError) as exc:
            return Violation(None, f"not validatable by the schema ({type(exc).__name__})")
        return None


def _pandera_violation(exc: Any) -> Violation:
    cases = getattr(exc, "failure_cases", None)
    if cases is None or not hasattr(cases, "iloc") or len(cases) == 0:
        return Violation(None, type(exc).__name__)
    row = cases.iloc[0]
    column = row.get("column") if hasattr(row, "get") else None
    check = row.get("check") if hasattr(row, "get") else None
    index = row.get("index") if hasattr(row, "get") else None
    parts = []
    if index is not None and str(index) not in ("nan", "None", "<NA>"):
        parts.append(f"row {index}")
    if column is not None and str(column) not in ("nan", "None", "<NA>"):
        parts.append(f"column {str(column)!r}")
    reason = f"failed check {check}" if check is not None else "failed the schema"
    value = row.get("failure_case") if hasattr(row, "get") else None
    return Violation(", ".join(parts) or None, reason, value, value is not None)


class CallableChecker(Checker):
    def __init__(self, fn: Callable[[Any], Any], describe: str) -> None:
        super().__init__(describe)
        self.fn = fn

    def check(self, value: Any) -> Violation | None:
        try:
            ok = self.fn(value)
        except Exception as exc:
            return Violation(None, f"{type(exc).__name__}: {exc}")
        if ok is not None and not ok:
            return Violation(None, f"{self.describe} returned {ok!r}")
        return None


def _describe(spec: Any) -> str:
    if isinstance(spec, Mapping):
        return "{" + ", ".join(map(str, spec)) + "}"
    return str(getattr(spec, "__qualname__", None) or getattr(spec, "__name__", None) or spec)


def compile_contract(spec: Any) -> Checker:
    """The :class:`Checker` for a contract ``spec``; :class:`DefinitionError` when it is none
    of the accepted kinds, :class:`MissingExtraError` when its library is missing."""
    describe = _describe(spec)
    if isinstance(spec, Mapping) or typing.get_origin(spec) is not None:
        return PydanticChecker(spec, describe)
    if _from(spec, "pandera"):
        return PanderaChecker(spec, describe)
    if _from(spec, "pydantic"):
        return PydanticChecker(spec, describe)
    if callable(spec):
        return CallableChecker(spec, describe)
    raise DefinitionError(
        f"contract {spec!r} is not a pydantic model, a pandera schema, a mapping of field "
        "names to types or a callable"
    )


@attrs.frozen
class TaskContracts:
    """One task's compiled contracts: its output, and its inputs by position."""

    output: Checker | None
    inputs: tuple[tuple[int, str, Checker], ...] = ()


def compile_task_contracts(task: Task) -> TaskContracts | None:
    """The task's contracts (``None`` when it has none); errors name the task."""
    out_spec = task.options.get("contract")
    in_spec = task.options.get("input_contract")
    if out_spec is None and in_spec is None:
        return None
    try:
        output = compile_contract(out_spec) if out_spec is not None else None
        inputs: list[tuple[int, str, Checker]] = []
        if in_spec is not None:
            deps = task.depends_on
            if isinstance(in_spec, Mapping) and in_spec and all(k in deps for k in in_spec):
                for k, v in in_spec.items():
                    inputs.append((deps.index(k), k, compile_contract(v)))
            elif len(deps) == 1:
                inputs.append((0, deps[0], compile_contract(in_spec)))
            elif not deps:
                raise DefinitionError("input_contract= needs an upstream task (depends_on)")
            else:
                raise DefinitionError(
                    f"input_contract= with {len(deps)} upstream tasks must be a mapping of "
                    f"upstream name to contract, e.g. {{{deps[0]!r}: Model}}"
                )
    except MissingExtraError as exc:
        raise MissingExtraError(
            f"task {task.name!r}: {exc.feature}", exc.module, exc.extra
        ) from None
    except DefinitionError as exc:
        raise DefinitionError(f"task {task.name!r}: {exc}", task=task.name) from None
    return TaskContracts(output=output, inputs=tuple(inputs))


def quote(value: Any) -> str:
    """A short ``repr`` of a failing value."""
    text = repr(value)
    return text if len(text) <= MAX_QUOTE else text[: MAX_QUOTE - 3] + "..."
