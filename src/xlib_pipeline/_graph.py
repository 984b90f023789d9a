"""Graph validation and the compiled execution plan.

:func:`plan` validates a pipeline once per structural version and compiles it into integer
arrays (predecessors, successors, in-degrees, priorities) so the scheduler's per-task work
is list indexing, never dict look-ups by name or re-validation.
"""

from __future__ import annotations

import hashlib
import inspect
import types
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from ._async import is_async_callable
from ._context import CallSpec, call_spec
from ._names import suggest as suggest  # its importers may keep importing it from here
from ._task import Pipeline, Task
from .exceptions import ArityError, CycleError, EmptyPipelineError, UnknownDependencyError


@attrs.frozen(kw_only=True, eq=False)
class Plan:
    """A validated pipeline compiled to index arrays. Built by :func:`plan`, cached."""

    pipeline_name: str
    version: int
    names: tuple[str, ...]
    tasks: tuple[Task, ...]
    index: Mapping[str, int]
    preds: tuple[tuple[int, ...], ...]
    succs: tuple[tuple[int, ...], ...]
    npreds: tuple[int, ...]
    roots: tuple[int, ...]
    sinks: tuple[int, ...]
    order: tuple[int, ...]
    #: Longest path (in tasks) from each task to a sink; the "intelligent" priority.
    height: tuple[int, ...]
    #: Which tasks are coroutine functions (``async def``), and whether any is.
    is_async: tuple[bool, ...] = ()
    has_async: bool = False
    #: How each task takes run params and its :class:`~._context.TaskContext` (``None``:
    #: neither; the task is called with its upstream results only), and whether any does.
    calls: tuple[CallSpec | None, ...] = ()
    has_calls: bool = False
    #: Per task: whether it runs with what its upstreams have (``collect_available``), its
    #: ``timeout`` option, and its own ``freeze_inputs`` option (``None``: not set; the
    #: whole tuple is ``None`` when no task sets it).
    collect: tuple[bool, ...] = ()
    timeouts: tuple[float | None, ...] = ()
    freeze: tuple[bool | None, ...] | None = None
    #: Whether any task carries options (``False``: the option checks and the per-task
    #: feature compilation have nothing to look at).
    has_options: bool = True

    #: The structure digest, computed on first read (only a run store records it).
    _fingerprint: list[str] = attrs.field(factory=list, init=False, repr=False)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def fingerprint(self) -> str:
        """A digest of the pipeline's structure: names, edges, strategies, code identity."""
        if not self._fingerprint:
            self._fingerprint.append(_fingerprint(self.pipeline_name, self.tasks))
        return self._fingerprint[0]

    def frozen(self, default: bool) -> tuple[bool, ...] | None:
        """Which tasks get deep copies of their inputs when config ``freeze_inputs`` is
        ``default``; ``None`` when none does."""
        if self.freeze is None:
            return (True,) * len(self.names) if default else None
        out = tuple(default if f is None else f for f in self.freeze)
        return out if any(out) else None


def plan(pipeline: Pipeline) -> Plan:
    """Validate ``pipeline`` and return its compiled :class:`Plan` (cached per version)."""
    cached = pipeline._plan
    if cached is not None and cached.version == pipeline._version:
        return cached  # type: ignore[no-any-return]
    compiled = _compile(pipeline)
    pipeline._plan = compiled
    return compiled


def _compile(pipeline: Pipeline) -> Plan:
    # Once per pipeline version, so a cold first run pays it per task: the per-edge and
    # per-task passes below use C-level map/zip where they can (issue 16: cold start).
    tasks = tuple(pipeline.tasks.values())
    if not tasks:
        raise EmptyPipelineError(pipeline.name)
    n = len(tasks)
    names = tuple([t.name for t in tasks])
    index = dict(zip(names, range(n)))
    position = index.__getitem__
    preds: list[tuple[int, ...]] = []
    optioned = False
    for t in tasks:
        deps = t.depends_on
        if deps:
            try:
                preds.append(tuple(map(position, deps)))
            except KeyError:
                dep = next(d for d in deps if d not in index)
                raise UnknownDependencyError(t.name, dep, suggest(dep, index)) from None
        else:
            preds.append(())
        if t.options:
            optioned = True
    succ_lists: list[list[int]] = [[] for _ in range(n)]
    for i, upstream in enumerate(preds):
        for j in upstream:
            succ_lists[j].append(i)
    npreds = list(map(len, preds))
    order: list[int] = _toposort(npreds, succ_lists)
    if len(order) != n:
        raise CycleError(pipeline.name, _find_cycle(names, preds, set(order)))
    calls = _check_arity(tasks, preds, names)
    seen: dict[int, bool] = {}
    is_async: list[bool] = []
    for t in tasks:
        a = seen.get(id(t.fn))
        if a is None:
            a = seen[id(t.fn)] = is_async_callable(t.fn)
        is_async.append(a)
    height = [1] * n
    level = height.__getitem__
    for i in reversed(order):
        below = succ_lists[i]
        if below:
            height[i] = max(map(level, below)) + 1
    return Plan(
        pipeline_name=pipeline.name,
        version=pipeline._version,
        names=names,
        tasks=tasks,
        index=index,
        preds=tuple(preds),
        succs=tuple(map(tuple, succ_lists)),
        npreds=tuple(npreds),
        roots=tuple([i for i, row in enumerate(preds) if not row]),
        sinks=tuple([i for i, below in enumerate(succ_lists) if not below]),
        order=tuple(order),
        height=tuple(height),
        is_async=tuple(is_async),
        has_async=any(is_async),
        calls=calls,
        has_calls=any(c is not None for c in calls),
        collect=tuple([t.merge_strategy == "collect_available" for t in tasks]),
        timeouts=tuple([t.options.get("timeout") for t in tasks]) if optioned else (None,) * n,
        freeze=_freeze_options(tasks) if optioned else None,
        has_options=optioned,
    )


def _freeze_options(tasks: tuple[Task, ...]) -> tuple[bool | None, ...] | None:
    if not any("freeze_inputs" in t.options for t in tasks):
        return None
    return tuple(
        bool(t.options["freeze_inputs"]) if "freeze_inputs" in t.options else None for t in tasks
    )


def _toposort(npreds: list[int], succs: list[list[int]]) -> list[int]:
    remaining = list(npreds)
    order = [i for i, k in enumerate(remaining) if k == 0]
    pos = 0
    while pos < len(order):
        i = order[pos]
        pos += 1
        for s in succs[i]:
            remaining[s] -= 1
            if remaining[s] == 0:
                order.append(s)
    return order


def _find_cycle(
    names: tuple[str, ...], preds: list[tuple[int, ...]], acyclic: set[int]
) -> list[str]:
    """Return one cycle among the nodes Kahn's algorithm could not order, as names."""
    start = next(i for i in range(len(names)) if i not in acyclic)
    # Walk upstream edges: every unordered node has an unordered predecessor.
    seen: dict[int, int] = {}
    path: list[int] = []
    node = start
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = next(p for p in preds[node] if p not in acyclic)
    cycle = path[seen[node] :]
    # We walked dependency edges backwards (task -> its upstream); show data-flow order.
    cycle.reverse()
    # Start at the task defined first, so the same cycle always reads the same way.
    k = cycle.index(min(cycle))
    cycle = cycle[k:] + cycle[:k]
    return [names[i] for i in cycle] + [names[cycle[0]]]


def _check_arity(
    tasks: tuple[Task, ...], preds: list[tuple[int, ...]], names: tuple[str, ...]
) -> tuple[CallSpec | None, ...]:
    """Check each function takes its upstream results; return how it takes run params
    and its context (``None``: neither). A plain function with no parameter beyond its
    upstream results is decided from its code object alone (cached per code object)."""
    plain = _plain_call
    checked: dict[tuple[int, int], CallSpec | None] = {}
    out: list[CallSpec | None] = []
    for t, row in zip(tasks, preds):
        n = len(row)
        if plain(t.fn, n):
            out.append(None)
            continue
        key = (id(t.fn), n)
        if key in checked:
            out.append(checked[key])
            continue
        spec = checked[key] = _check_callable(t, t.fn, n, [names[j] for j in row])
        out.append(spec)
    return tuple(out)


def _has_extra(fn: Any, count: int) -> bool:
    """Whether plain function ``fn`` has parameters beyond ``count`` upstream results
    (param slots or a context): those need :func:`~._context.call_spec`."""
    bound = 0
    if fn.__class__ is _MethodType:
        fn = fn.__func__
        bound = 1
    code = fn.__code__
    return bool(code.co_argcount + code.co_kwonlyargcount > count + bound)


_FunctionType = types.FunctionType
_MethodType = types.MethodType
_CO_VARARGS = inspect.CO_VARARGS
#: (code object, number of defaults, number of keyword-only defaults, bound, count) -> ok.
_ARITY: dict[tuple[Any, int, int, int, int], bool] = {}


def _code_key(fn: Any, count: int) -> tuple[Any, int, int, int, int] | None:
    """The cache key of plain function (or bound method) ``fn`` called with ``count``
    positional arguments: (code object, number of defaults, number of keyword-only
    defaults, bound, count); ``None`` when ``fn`` is no plain function or carries a
    signature of its own (``__wrapped__``, ``__signature__``)."""
    bound = 0
    if fn.__class__ is _MethodType:
        fn = fn.__func__
        bound = 1
    if fn.__class__ is not _FunctionType:
        return None
    attrs_ = fn.__dict__
    if attrs_ and ("__wrapped__" in attrs_ or "__signature__" in attrs_):
        return None
    defaults = fn.__defaults__
    kwdefaults = fn.__kwdefaults__
    return (
        fn.__code__,
        len(defaults) if defaults else 0,
        len(kwdefaults) if kwdefaults else 0,
        bound,
        count,
    )


def _accepts(fn: Any, count: int) -> bool | None:
    """Whether plain function ``fn`` accepts ``count`` positional arguments, from its code
    object (cached per code object, so 10,000 closures of one ``def`` cost one check);
    ``None`` when ``fn`` is no plain function or carries a signature of its own
    (``__wrapped__``, ``__signature__``): :func:`inspect.signature` decides those."""
    key = _code_key(fn, count)
    if key is None:
        return None
    ok = _ARITY.get(key)
    if ok is None:
        code = key[0]
        given = count + key[3]
        nargs = code.co_argcount
        ok = (
            code.co_kwonlyargcount == key[2]  # no keyword-only argument without a default
            and nargs - key[1] <= given
            and (given <= nargs or bool(code.co_flags & _CO_VARARGS))
        )
        if len(_ARITY) > 65_536:  # code objects of long-gone functions: start afresh
            _ARITY.clear()
        _ARITY[key] = ok
    return ok


#: Like :data:`_ARITY`: whether the function takes exactly its upstream results (it accepts
#: ``count`` positional arguments and has no parameter beyond them).
_PLAIN: dict[tuple[Any, int, int, int, int], bool] = {}


def _plain_call(fn: Any, count: int) -> bool:
    """Whether plain function ``fn`` is called with its ``count`` upstream results alone:
    :func:`_accepts` and not :func:`_has_extra`, in one look-up per code object."""
    key = _code_key(fn, count)
    if key is None:
        return False
    ok = _PLAIN.get(key)
    if ok is None:
        ok = bool(_accepts(fn, count)) and not _has_extra(fn, count)
        if len(_PLAIN) > 65_536:  # code objects of long-gone functions: start afresh
            _PLAIN.clear()
        _PLAIN[key] = ok
    return ok


def _check_callable(
    task: Task, fn: Callable[..., Any], count: int, upstreams: list[str]
) -> CallSpec | None:
    spec, ok = call_spec(fn, count)
    if not ok:
        raise ArityError(task.name, count, str(inspect.signature(fn)), upstreams)
    return spec


def _fingerprint(name: str, tasks: tuple[Task, ...]) -> str:
    """A digest of the pipeline's structure: names, edges, strategies and code identity."""
    h = hashlib.sha256(name.encode())
    for t in tasks:
        code = getattr(t.fn, "__code__", None)
        qual = getattr(t.fn, "__qualname__", type(t.fn).__name__)
        h.update(b"\0" + t.name.encode() + b"\1" + "\1".join(t.depends_on).encode())
        h.update(b"\2" + t.merge_strategy.encode() + b"\3" + qual.encode())
        h.update(b"\4" + (b"c" if t.condition is not None else b"-"))
        if code is not None:
            h.update(code.co_code)
    return h.hexdigest()[:16]


def critical_path(p: Plan, weight: Callable[[int], float]) -> tuple[float, list[str]]:
    """Return the heaviest path through the plan with task weights ``weight(i)``."""
    best = [0.0] * len(p.names)
    back = [-1] * len(p.names)
    for i in p.order:
        base, link = 0.0, -1
        for j in p.preds[i]:
            if link == -1 or best[j] > base:
                base, link = best[j], j
        best[i] = base + weight(i)
        back[i] = link
    end = max(range(len(best)), key=best.__getitem__)
    path = [end]
    while back[path[-1]] != -1:
        path.append(back[path[-1]])
    path.reverse()
    return best[end], [p.names[i] for i in path]


def _edges(pipeline: Pipeline) -> list[tuple[str, str]]:
    return [(dep, t.name) for t in pipeline.tasks.values() for dep in t.depends_on]


def _mermaid_id(name: str) -> str:
    return (
        "t_"
        + "".join(c if c.isalnum() else "_" for c in name)
        + "_"
        + hashlib.md5(name.encode(), usedforsecurity=False).hexdigest()[:4]
    )


def mermaid_label(text: str) -> str:
    """``text`` as the inside of a quoted Mermaid label: quotes, ``#``, angle brackets and
    line breaks become entity codes, so no name can end the label or start a statement."""
    out = text.replace("#", "#35;")
    for ch, code in (('"', "#quot;"), ("<", "#lt;"), (">", "#gt;"), ("\r", "#13;"), ("\n", "#10;")):
        out = out.replace(ch, code)
    return out


def dot_string(text: str) -> str:
    """``text`` as a quoted DOT string (backslashes, quotes and line breaks escaped)."""
    out = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + out.replace("\r", "\\r").replace("\n", "\\n") + '"'


def to_mermaid(pipeline: Pipeline) -> str:
    """Render the DAG as a Mermaid ``flowchart LR``; conditional tasks get a rhombus."""
    lines = ["flowchart LR"]
    for t in pipeline.tasks.values():
        label = mermaid_label(t.name)
        shape = f'{{"{label}"}}' if t.condition is not None else f'["{label}"]'
        lines.append(f"    {_mermaid_id(t.name)}{shape}")
    for a, b in _edges(pipeline):
        lines.append(f"    {_mermaid_id(a)} --> {_mermaid_id(b)}")
    return "\n".join(lines) + "\n"


def to_dot(pipeline: Pipeline) -> str:
    """Render the DAG in Graphviz DOT."""

    q = dot_string
    lines = [f"digraph {q(pipeline.name)} {{", "    rankdir=LR;"]
    for t in pipeline.tasks.values():
        shape = "diamond" if t.condition is not None else "box"
        lines.append(f"    {q(t.name)} [shape={shape}];")
    for a, b in _edges(pipeline):
        lines.append(f"    {q(a)} -> {q(b)};")
    lines.append("}")
    return "\n".join(lines) + "\n"
