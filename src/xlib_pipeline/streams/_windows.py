"""Event-time windows: the ``window=`` task option of stream pipelines.

``window={"size": 60, "slide": 30, "field": "ts", "delay": 5, "allowed_lateness": 10}``
(``slide`` defaults to ``size``: tumbling). Records are assigned in arrival order to every
window ``[k*slide, k*slide + size)`` holding their event time ``record[field]`` (a number
of seconds). The **watermark** is the largest event time seen so far minus ``delay``. A
window closes once the watermark reaches its end plus ``allowed_lateness``; the task is
then called once with that window's records (a :class:`Window`, a list with ``start`` and
``end``). A record arriving for a window already closed is **late**: it goes to the late
side output (counted, audited), never silently dropped. When the source ends, the open
windows close. Window state is saved with every checkpoint.
"""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from ..exceptions import DefinitionError

if TYPE_CHECKING:  # pragma: no cover
    from .._task import Pipeline, Task


class Window(list[Any]):
    """The records of one closed window, in arrival order; ``start <= t < end``."""

    start: float
    end: float

    def __init__(self, records: list[Any], start: float, end: float) -> None:
        super().__init__(records)
        self.start = start
        self.end = end

    def __reduce__(self) -> Any:
        return (Window, (list(self), self.start, self.end))


@attrs.frozen(kw_only=True)
class WindowSpec:
    """A validated ``window=`` option."""

    size: float
    slide: float
    field: str
    delay: float = 0.0
    allowed_lateness: float = 0.0

    @classmethod
    def from_value(cls, value: Any) -> WindowSpec:
        """Validate a ``window=`` option (a mapping, or a WindowSpec)."""
        if isinstance(value, WindowSpec):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(
                "expected a mapping like {'size': 60, 'field': 'ts'} (optional: slide, "
                f"delay, allowed_lateness), got {value!r}"
            )
        allowed = {"size", "slide", "field", "delay", "allowed_lateness", "type"}
        unknown = set(value) - allowed
        if unknown:
            raise ValueError(f"unknown key(s) {sorted(unknown)}; expected {sorted(allowed)}")
        if "size" not in value or "field" not in value:
            raise ValueError("'size' (seconds) and 'field' (the event-time field) are required")

        def num(key: str, default: float, positive: bool) -> float:
            v = value.get(key, default)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ValueError(f"{key!r} must be a number of seconds, got {v!r}")
            if (v <= 0) if positive else (v < 0):
                raise ValueError(f"{key!r} must be {'> 0' if positive else '>= 0'}, got {v!r}")
            return float(v)

        size = num("size", 0, True)
        slide = num("slide", size, True)
        kind = value.get("type", "tumbling" if slide == size else "sliding")
        if kind not in ("tumbling", "sliding"):
            raise ValueError(f"'type' must be 'tumbling' or 'sliding', got {kind!r}")
        if kind == "tumbling" and slide != size:
            raise ValueError("a tumbling window has slide == size; use type 'sliding'")
        if kind == "sliding" and slide == size:
            raise ValueError(
                "a sliding window has slide < size (with slide == size, the default, it is "
                "tumbling); give 'slide'"
            )
        if slide > size:
            raise ValueError(f"'slide' ({slide}) larger than 'size' ({size}) would skip records")
        field = value["field"]
        if not isinstance(field, str) or not field:
            raise ValueError(f"'field' must be a record key, got {field!r}")
        return cls(
            size=size,
            slide=slide,
            field=field,
            delay=num("delay", 0.0, False),
            allowed_lateness=num("allowed_lateness", 0.0, False),
        )

    def starts(self, t: float) -> list[float]:
        """Starts of every window holding event time ``t``, oldest first."""
        last = math.floor(t / self.slide)
        out = []
        k = last
        while k * self.slide + self.size > t:
            out.append(k * self.slide)
            k -= 1
        out.reverse()
        return out


class WindowState:
    """One windowed task's open windows and watermark (plain data: checkpointed)."""

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec
        self.watermark = -math.inf
        self.open: dict[float, list[Any]] = {}
        self.closed_upto = -math.inf  # every window ending <= this has been emitted

    def feed(self, task: str, records: list[Any]) -> tuple[list[Window], list[Any]]:
        """Assign ``records``; return the windows that closed and the late records."""
        spec = self.spec
        late: list[Any] = []
        for r in records:
            try:
                t = r[spec.field]
            except (KeyError, TypeError, IndexError):
                raise DefinitionError(
                    f"task {task!r}: window field {spec.field!r} is missing from a record "
                    f"({_brief(r)})",
                    task=task,
                ) from None
            if isinstance(t, bool) or not isinstance(t, int | float):
                raise DefinitionError(
                    f"task {task!r}: window field {spec.field!r} must be a number of seconds, "
                    f"got {t!r}",
                    task=task,
                )
            was_late = False
            for s in spec.starts(t):
                if s + spec.size + spec.allowed_lateness <= self.watermark:
                    was_late = True
                else:
                    self.open.setdefault(s, []).append(r)
            if was_late:
                late.append(r)
            self.watermark = max(self.watermark, t - spec.delay)
        return self._close(self.watermark), late

    def _close(self, upto: float) -> list[Window]:
        spec = self.spec
        done = sorted(s for s in self.open if s + spec.size + spec.allowed_lateness <= upto)
        return [Window(self.open.pop(s), s, s + spec.size) for s in done]

    def flush(self) -> list[Window]:
        """Close every open window (the source ended)."""
        return self._close(math.inf)


def _brief(record: Any) -> str:
    text = repr(record)
    return text if len(text) <= 80 else text[:77] + "..."


def windowed_tasks(pipeline: Pipeline) -> dict[str, WindowSpec]:
    """The tasks of ``pipeline`` with a ``window=`` option, validated."""
    out: dict[str, WindowSpec] = {}
    for t in pipeline.tasks.values():
        value = t.options.get("window")
        if value is None:
            continue
        try:
            out[t.name] = WindowSpec.from_value(value)
        except ValueError as exc:
            raise DefinitionError(
                f"task {t.name!r}: option window={value!r} is invalid: {exc}", task=t.name
            ) from exc
        if t.is_async:
            raise DefinitionError(
                f"task {t.name!r}: a windowed task must be a plain function (not async def)",
                task=t.name,
            )
    return out


class WindowOperator:
    """The window state of every windowed task of one stream."""

    def __init__(self, specs: Mapping[str, WindowSpec]) -> None:
        self.specs = dict(specs)
        self.tasks = tuple(specs)
        self.states = {name: WindowState(spec) for name, spec in specs.items()}
        self.final = False
        self._late: list[Any] = []
        self._lock = threading.Lock()

    @classmethod
    def for_pipeline(cls, pipeline: Pipeline) -> WindowOperator | None:
        """An operator for ``pipeline``'s windowed tasks, or ``None`` when it has none."""
        specs = windowed_tasks(pipeline)
        return cls(specs) if specs else None

    def check_stream(self, name: str, max_in_flight: int, run_kwargs: Mapping[str, Any]) -> None:
        """Refuse a stream that cannot keep this state: overlapping batches, or windowed
        tasks run in other processes (their state would stay there)."""
        from ..exceptions import ConfigError

        tasks = ", ".join(self.tasks)
        if max_in_flight > 1:
            raise ConfigError(
                f"stream {name!r}: windowed tasks ({tasks}) keep state from batch to batch, "
                "so their batches run one at a time: use max_in_flight=1",
                key="max_in_flight",
            )
        if run_kwargs.get("executor") not in (None, "threads", "inline") or run_kwargs.get(
            "isolation_mode"
        ) not in (None, "none"):
            raise ConfigError(
                f"stream {name!r}: windowed tasks ({tasks}) keep their window state in this "
                "process: run them on the 'threads' or 'inline' executor, without process "
                "isolation",
                key="executor",
            )

    def wrap(self, task: Task) -> Task:
        """``task`` with its function called once per closed window (others unchanged)."""
        if task.name not in self.specs:
            return task
        fn = task.fn
        name = task.name
        op = self

        def windowed(records: Any) -> list[Any]:
            with op._lock:
                # Work on a copy: a failed attempt (retried or not) leaves the state as it was.
                state = copy.deepcopy(op.states[name])
                windows, late = state.feed(name, list(records or ()))
                if op.final:
                    windows += state.flush()
                out: list[Any] = []
                for w in windows:
                    value = fn(w)
                    if isinstance(value, list):
                        out.extend(value)
                    elif value is not None:
                        out.append(value)
                op.states[name] = state
                op._late.extend(late)
                return out

        windowed.__name__ = getattr(fn, "__name__", name)
        windowed.__qualname__ = getattr(fn, "__qualname__", name)
        options = {k: v for k, v in task.options.items() if k != "window"}
        return attrs.evolve(task, fn=windowed, options=options)

    def snapshot(self) -> dict[str, WindowState]:
        """A copy of every task's state (to roll back a batch that is run again)."""
        with self._lock:
            return copy.deepcopy(self.states)

    def rollback(self, snapshot: dict[str, WindowState]) -> None:
        """Return to :meth:`snapshot` and forget the late records since."""
        with self._lock:
            self.states = snapshot
            self._late = []

    def take_late(self) -> list[Any]:
        """The late records of the batch just run (and forget them)."""
        with self._lock:
            late, self._late = self._late, []
        return late

    def has_open(self) -> bool:
        """Whether any window still holds records."""
        return any(s.open for s in self.states.values())

    def state(self) -> dict[str, Any]:
        """Plain-data state for the checkpoint."""
        return {
            name: {"watermark": s.watermark, "open": [[k, v] for k, v in sorted(s.open.items())]}
            for name, s in self.states.items()
        }

    def restore(self, data: Mapping[str, Any] | None) -> None:
        """Load a checkpointed :meth:`state` (``None``: fresh windows)."""
        self.states = {name: WindowState(spec) for name, spec in self.specs.items()}
        for name, saved in (data or {}).items():
            st = self.states.get(name)
            if st is None:
                continue
            st.watermark = float(saved["watermark"])
            st.open = {float(k): list(v) for k, v in saved["open"]}
