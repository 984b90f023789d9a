"""Definitions: :class:`Task`, :class:`Pipeline` and the option-carrying decorator helpers."""

from __future__ import annotations

import functools
import types
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, Literal, TypeVar

import attrs

from ._async import is_async_callable
from ._direct import TASK_FN_ATTR as TASK_FN_ATTR
from ._direct import CallObserver as CallObserver
from ._direct import _direct_calls
from ._direct import observe_direct_calls as observe_direct_calls
from .exceptions import DefinitionError, DuplicateTaskError

F = TypeVar("F", bound=Callable[..., Any])

MergeStrategy = Literal["all_success", "collect_available"]
MERGE_STRATEGIES: tuple[str, ...] = ("all_success", "collect_available")

#: Attribute under which decorators stack task options onto a function.
OPTIONS_ATTR = "__xlib_pipeline_options__"
#: Attribute set on a function registered as a task: ``(pipeline, task name)``.
REGISTERED_ATTR = "__xlib_pipeline_task__"

_EMPTY: Mapping[str, Any] = MappingProxyType({})


class _Registration:
    """Marks a function registered as a task. Holds its pipeline weakly and pickles without
    it, so sending a task function to a worker never drags the whole pipeline along."""

    __slots__ = ("_ref", "name")

    def __init__(self, pipeline: Any, name: str) -> None:
        self._ref = weakref.ref(pipeline) if pipeline is not None else None
        self.name = name

    @property
    def pipeline(self) -> Any:
        return self._ref() if self._ref is not None else None

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Registration, (None, self.name))


def _freeze_options(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if not value:
        return _EMPTY
    return MappingProxyType(dict(value))


def _as_tuple(value: Iterable[str] | str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


_object_setattr = object.__setattr__
_FunctionType = types.FunctionType


@attrs.frozen(kw_only=True, init=False)
class Task:
    """One step of a pipeline: a function, its upstream tasks and its options.

    Upstream results are passed to ``fn`` as positional arguments in ``depends_on`` order.
    ``condition`` receives the same positional arguments; a false answer skips the task.
    ``options`` holds plugin-owned settings (``retries=``, ``timeout=``, ``inputs=`` ...).
    """

    name: str
    fn: Callable[..., Any] = attrs.field(eq=False)
    depends_on: tuple[str, ...] = ()
    condition: Callable[..., Any] | None = attrs.field(default=None, eq=False)
    merge_strategy: str = "all_success"
    options: Mapping[str, Any] = attrs.field(default=_EMPTY, eq=False)
    description: str | None = None

    def __init__(
        self,
        *,
        name: str,
        fn: Callable[..., Any],
        depends_on: Iterable[str] | str | None = (),
        condition: Callable[..., Any] | None = None,
        merge_strategy: str = "all_success",
        options: Mapping[str, Any] | None = _EMPTY,
        description: str | None = None,
    ) -> None:
        # Written out (attrs generates the rest): one task per decorated function, so the
        # converters and checks run inline, without a call each (issue 16: cold start).
        deps: tuple[str, ...] = (
            depends_on if depends_on.__class__ is tuple else _as_tuple(depends_on)
        )
        set_ = _object_setattr
        set_(self, "name", name)
        set_(self, "fn", fn)
        set_(self, "depends_on", deps)
        set_(self, "condition", condition)
        set_(self, "merge_strategy", merge_strategy)
        set_(self, "options", options if options is _EMPTY else _freeze_options(options))
        set_(self, "description", description)
        if not isinstance(name, str) or not name:
            raise DefinitionError(f"task name must be a non-empty string, got {name!r}")
        if not callable(fn):
            raise DefinitionError(f"task {name!r}: fn must be callable", task=name)
        if condition is not None and not callable(condition):
            raise DefinitionError(
                f"task {name!r}: condition must be callable, got {type(condition).__name__}",
                task=name,
            )
        if merge_strategy != "all_success" and merge_strategy not in MERGE_STRATEGIES:
            raise DefinitionError(
                f"task {name!r}: merge_strategy must be one of {MERGE_STRATEGIES}, "
                f"got {merge_strategy!r}",
                task=name,
            )
        for dep in deps:
            if dep.__class__ is not str and not isinstance(dep, str):
                raise DefinitionError(
                    f"task {name!r}: depends_on entries must be task names, got {dep!r}",
                    task=name,
                )
        if len(deps) > 1 and len(set(deps)) != len(deps):
            raise DefinitionError(
                f"task {name!r}: depends_on lists a task twice: {list(deps)}", task=name
            )

    def option(self, name: str, default: Any = None) -> Any:
        """Return the task option ``name`` (plugin-owned), or ``default``."""
        return self.options.get(name, default)

    @property
    def is_async(self) -> bool:
        """Whether ``fn`` is a coroutine function (``async def``); its output is then the
        awaited value, on every executor."""
        return is_async_callable(self.fn)


def task_options(fn: Callable[..., Any]) -> dict[str, Any]:
    """Return the task options stacked on ``fn`` by option-carrying decorators."""
    return dict(getattr(fn, OPTIONS_ATTR, None) or {})


def with_options(
    fn: F,
    options: Mapping[str, Any],
    *,
    call_wrapper: Callable[[Callable[..., Any]], Callable[..., Any]] | None = None,
) -> F:
    """Attach task ``options`` to ``fn`` for a later ``@pipeline.task`` to pick up.

    This is how manager decorators such as ``pm.audit_log(...)`` work. When ``call_wrapper``
    is given, the returned function is ``call_wrapper(fn)`` (used when ``fn`` is called
    directly, outside a pipeline) while a task built from it still runs the original ``fn``;
    the plugin then observes the task through its hooks instead.
    Conflicting values for the same option raise :class:`DefinitionError`.
    """
    merged = task_options(fn)
    for key, value in options.items():
        if key in merged and merged[key] != value:
            raise DefinitionError(
                f"function {getattr(fn, '__name__', fn)!r}: option {key!r} given twice "
                f"with different values ({merged[key]!r} and {value!r})"
            )
        merged[key] = value
    inner = getattr(fn, TASK_FN_ATTR, fn)
    if call_wrapper is None:
        try:
            setattr(fn, OPTIONS_ATTR, merged)
            return fn
        except (AttributeError, TypeError):  # builtins and C callables take no attributes
            call_wrapper = _identity_wrapper
    wrapped = call_wrapper(fn)
    if wrapped is fn:
        wrapped = _identity_wrapper(fn)
    functools.update_wrapper(wrapped, fn)
    setattr(wrapped, OPTIONS_ATTR, merged)
    setattr(wrapped, TASK_FN_ATTR, inner)
    return wrapped  # type: ignore[return-value]


def _identity_wrapper(fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return call


_NO_DEFAULT: Any = object()


def _declared_params(value: Any) -> Mapping[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if isinstance(value, Mapping):
        out = dict(value)
    elif isinstance(value, Iterable):
        out = dict.fromkeys(value, _NO_DEFAULT)
    else:
        raise DefinitionError(
            f"pipeline params must be a list of names or a dict of names to defaults, "
            f"got {type(value).__name__}"
        )
    for key in out:
        if not isinstance(key, str) or not key.isidentifier():
            raise DefinitionError(f"pipeline params: names are identifiers, got {key!r}")
    return out


def param_defaults(pipeline: Pipeline) -> dict[str, Any]:
    """The defaults a pipeline declares for its params (``Pipeline(params={...})``)."""
    return {k: v for k, v in (pipeline.params or {}).items() if v is not _NO_DEFAULT}


@attrs.define(eq=False)
class Pipeline:
    """A named DAG of tasks, built with the :meth:`task` decorator or :meth:`add_task`."""

    name: str
    description: str | None = None
    #: The run params the pipeline declares beyond those its tasks take by name: names, or
    #: a mapping of names to defaults (a run without the param gets the default). With a
    #: declaration, a param neither declared nor taken by a task is refused even when a task
    #: reads params through its :class:`~xlib_pipeline.TaskContext`.
    params: Mapping[str, Any] | None = attrs.field(default=None, converter=_declared_params)
    _tasks: dict[str, Task] = attrs.field(factory=dict, init=False, repr=False)
    _version: int = attrs.field(default=0, init=False, repr=False)
    _plan: Any = attrs.field(default=None, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise DefinitionError(f"pipeline name must be a non-empty string, got {self.name!r}")

    # -- building ---------------------------------------------------------------------------

    def task(
        self,
        name: str | None = None,
        *,
        depends_on: Iterable[str] | str | None = None,
        condition: Callable[..., Any] | None = None,
        merge_strategy: str = "all_success",
        **options: Any,
    ) -> Callable[[F], F]:
        """Decorate a function into a task named ``name`` (default: the function's name).

        ``depends_on`` lists upstream task names whose results are passed positionally;
        ``condition`` decides at run time whether the task runs; ``merge_strategy`` is
        ``"all_success"`` (a skipped upstream skips this task) or ``"collect_available"``
        (skipped upstreams arrive as ``None``). Other keyword arguments are task options
        owned by plugins (``retries=``, ``timeout=``, ``inputs=`` ...), validated at run time.
        """
        if callable(name) and not isinstance(name, str):
            raise DefinitionError(
                "use @pipeline.task('name', ...) or @pipeline.task() with parentheses"
            )

        def decorator(fn: F) -> F:
            task = self.add_task(
                name or getattr(fn, "__name__", None) or repr(fn),
                fn,
                depends_on=depends_on,
                condition=condition,
                merge_strategy=merge_strategy,
                **options,
            )
            return _direct_calls(fn, self.name, task)

        return decorator

    def add_task(
        self,
        name: str,
        fn: Callable[..., Any],
        *,
        depends_on: Iterable[str] | str | None = None,
        condition: Callable[..., Any] | None = None,
        merge_strategy: str = "all_success",
        **options: Any,
    ) -> Task:
        """Add a task built from ``fn``; the programmatic twin of :meth:`task`."""
        if name in self._tasks:
            raise DuplicateTaskError(self.name, name)
        if fn.__class__ is _FunctionType:  # its attributes are its __dict__'s: no getattr
            extra = fn.__dict__
            found = extra.get(OPTIONS_ATTR) if extra else None
            run_fn = extra.get(TASK_FN_ATTR, fn) if extra else fn
        else:
            found = getattr(fn, OPTIONS_ATTR, None)
            run_fn = getattr(fn, TASK_FN_ATTR, fn)
        stacked: Mapping[str, Any] = _EMPTY
        if found or options:
            stacked = merged = dict(found or {})
            for key, value in options.items():
                if key in merged and merged[key] != value:
                    raise DefinitionError(
                        f"task {name!r}: option {key!r} given twice with different values "
                        f"({merged[key]!r} and {value!r})",
                        task=name,
                    )
                merged[key] = value
        doc = getattr(run_fn, "__doc__", None)
        task = Task(
            name=name,
            fn=run_fn,
            depends_on=_as_tuple(depends_on),
            condition=condition,
            merge_strategy=merge_strategy,
            options=stacked,
            description=doc.strip().splitlines()[0] if doc and doc.strip() else None,
        )
        self._tasks[name] = task
        self._touch()
        try:
            setattr(fn, REGISTERED_ATTR, _Registration(self, name))
        except (AttributeError, TypeError):
            pass
        return task

    def replace(self, name: str, **changes: Any) -> Task:
        """Replace task ``name`` with a copy carrying ``changes`` (``options=`` merges)."""
        old = self[name]
        if "options" in changes:
            changes["options"] = {**old.options, **changes["options"]}
        new = attrs.evolve(old, **changes)
        self._tasks[name] = new
        self._touch()
        return new

    def distribute_across_nodes(
        self, parallelism: int | str = "auto", **options: Any
    ) -> Callable[[F], F]:
        """Mark a task to run on the distributed executor (needs ``xlib-pipeline-dask``).

        ``parallelism`` is ``"auto"`` (the cluster's worker threads) or a number of
        partitions to run at once; with ``map_over=`` the task is mapped over a list.
        Works above or below ``@pipeline.task``.
        """
        if not (parallelism == "auto" or (isinstance(parallelism, int) and parallelism > 0)):
            raise DefinitionError(
                f"distribute_across_nodes: parallelism must be 'auto' or a positive int, "
                f"got {parallelism!r}"
            )
        spec = {"parallelism": parallelism, **options}

        def decorator(fn: F) -> F:
            registered = getattr(fn, REGISTERED_ATTR, None)
            if registered is not None and registered.pipeline is self:
                self.replace(registered.name, options={"distribute": spec})
                return fn
            return with_options(fn, {"distribute": spec})

        return decorator

    def _touch(self) -> None:
        # Past attrs' on-setattr hooks (neither field has a validator): once per task added.
        object.__setattr__(self, "_version", self._version + 1)
        if self._plan is not None:  # plan() also compares versions: this frees it sooner
            object.__setattr__(self, "_plan", None)

    # -- reading ----------------------------------------------------------------------------

    @property
    def tasks(self) -> Mapping[str, Task]:
        """The tasks by name, in definition order (read-only view)."""
        return MappingProxyType(self._tasks)

    def __getitem__(self, name: str) -> Task:
        try:
            return self._tasks[name]
        except KeyError:
            from ._graph import suggest

            hint = suggest(name, self._tasks)
            raise KeyError(
                f"pipeline {self.name!r} has no task {name!r}"
                + (f"; did you mean {hint!r}?" if hint else "")
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __iter__(self) -> Iterator[Task]:
        return iter(self._tasks.values())

    def __len__(self) -> int:
        return len(self._tasks)

    def validate(self) -> None:
        """Check the graph (cycles, unknown dependencies, arity, emptiness); raise on error."""
        from ._graph import plan

        plan(self)

    def to_mermaid(self) -> str:
        """Render the DAG as a Mermaid flowchart."""
        from ._graph import to_mermaid

        return to_mermaid(self)

    def to_dot(self) -> str:
        """Render the DAG in Graphviz DOT."""
        from ._graph import to_dot

        return to_dot(self)
