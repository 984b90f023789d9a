"""The two records of every task attempt, ``task.started`` and ``task.finished``.

:class:`TaskRecords` builds them for one run: pre-rendered from a fixed :class:`._render.Shape`
(keys and the run's constants baked in when the run starts) when it can, else as dicts for
the general encoder, for instance when user processors must see the fields. Both forms give
the same bytes on the wire (the tests check it with hypothesis).
"""

from __future__ import annotations

from typing import Any

from ._render import NotFast, Rendered, Shape, text
from ._render import jstr as _jstr  # what text() does for a str, without the call

_MAX = 2**53

#: Keys every ``task.started`` record has besides the run's constants, in value order.
STARTED = ("attempt", "task", "tenant", "ts")
#: Optional keys of ``task.started``: bit 1, the task's operation label; bit 2, digests on.
STARTED_OPTIONAL = ("operation", "input_digest")
FINISHED = ("attempt", "error_class", "outcome", "task", "tenant", "ts")
#: Optional keys of ``task.finished``, bit 1, 2, 4 ... in this order (``retrying`` is
#: always ``true`` when present, so it is baked into the shape).
FINISHED_OPTIONAL = (
    "operation",
    "retrying",
    "cache_key",
    "fallback",
    "output_digest",
    "classification",
    "pii_detected",
)
_RETRYING = 2
_OPTIONAL_BITS = tuple((1 << bit, k) for bit, k in enumerate(FINISHED_OPTIONAL))[1:]

#: A task's value texts: (task, tenant, operation or None); None when one is not a string
#: (or the like) whose text stands alone: its records then take the general encoder.
TaskTexts = tuple[str, str, str | None] | None


class TaskRecords:
    """Builds one run's task records; see the module docstring."""

    __slots__ = ("_const", "_finished", "_started", "actor", "pipeline", "run_id")

    def __init__(self, actor: Any, pipeline: Any, run_id: Any) -> None:
        self.actor = actor
        self.pipeline = pipeline
        self.run_id = run_id
        self._const: dict[str, str] | None
        try:
            self._const = {"actor": text(actor), "pipeline": text(pipeline), "run_id": text(run_id)}
        except ValueError:
            self._const = None
        self._started: dict[int, Shape] = {}
        self._finished: dict[int, Shape] = {}

    def texts(self, task: Any, tenant: Any, operation: Any) -> TaskTexts:
        """The value texts of a task's constant fields (computed once per task)."""
        if self._const is None:
            return None
        try:
            return (text(task), text(tenant), None if operation is None else text(operation))
        except ValueError:
            return None

    def _shape(self, started: bool, mask: int) -> Shape:
        shapes = self._started if started else self._finished
        shape = shapes.get(mask)
        if shape is None:
            assert self._const is not None
            const = dict(self._const)
            if started:
                const.update(action='"task.started"', error_class="null", outcome='"started"')
                base: tuple[str, ...] = STARTED
                optional: tuple[str, ...] = STARTED_OPTIONAL
            else:
                const["action"] = '"task.finished"'
                if mask & _RETRYING:
                    const["retrying"] = "true"
                base, optional = FINISHED, FINISHED_OPTIONAL
            extra = tuple(k for bit, k in enumerate(optional) if mask >> bit & 1 and k not in const)
            shape = shapes[mask] = Shape(base + extra, const)
        return shape

    def started(
        self,
        task: str,
        tenant: Any,
        operation: Any,
        texts: TaskTexts,
        attempt: int,
        ts: str,
        input_digest: str | None,
        *,
        fast: bool,
    ) -> dict[str, Any] | Rendered:
        """The ``task.started`` record (``input_digest`` None: none recorded)."""
        if fast and texts is not None:
            try:
                values = [
                    str(attempt) if type(attempt) is int and 0 <= attempt < _MAX else text(attempt),
                    texts[0],
                    texts[1],
                    _jstr(ts) if type(ts) is str else text(ts),
                ]
                mask = 0
                if texts[2] is not None:
                    mask = 1
                    values.append(texts[2])
                if input_digest is not None:
                    mask |= 2
                    values.append(text(input_digest))
                shape = self._started.get(mask) or self._shape(True, mask)
                return shape.render(values)
            except ValueError:
                pass  # the general encoder decides (and names a value that is not JSON)
        rec = {
            "ts": ts,
            "actor": self.actor,
            "tenant": tenant,
            "pipeline": self.pipeline,
            "run_id": self.run_id,
            "task": task,
            "action": "task.started",
            "outcome": "started",
            "error_class": None,
            "attempt": attempt,
        }
        if operation is not None:
            rec["operation"] = operation
        if input_digest is not None:
            rec["input_digest"] = input_digest
        return rec

    def finished(
        self,
        task: str,
        tenant: Any,
        operation: Any,
        texts: TaskTexts,
        attempt: int,
        ts: str,
        outcome: str,
        error_class: str | None,
        optional: dict[str, Any] | None,
        *,
        fast: bool,
    ) -> dict[str, Any] | Rendered:
        """The ``task.finished`` record. ``optional``: the keys of
        :data:`FINISHED_OPTIONAL` it holds besides ``operation`` (``retrying`` is True)."""
        if fast and texts is not None:
            try:
                values = [
                    str(attempt) if type(attempt) is int and 0 <= attempt < _MAX else text(attempt),
                    "null" if error_class is None else text(error_class),
                    _jstr(outcome) if type(outcome) is str else text(outcome),
                    texts[0],
                    texts[1],
                    _jstr(ts) if type(ts) is str else text(ts),
                ]
                mask = 0
                if texts[2] is not None:
                    mask = 1
                    values.append(texts[2])
                if optional:
                    for bit, k in _OPTIONAL_BITS:
                        if k in optional:
                            mask |= bit
                            if bit != _RETRYING:  # baked into the shape
                                values.append(text(optional[k]))
                            elif optional[k] is not True:
                                raise NotFast("retrying is true when present")
                shape = self._finished.get(mask) or self._shape(False, mask)
                return shape.render(values)
            except ValueError:
                pass
        rec = {
            "ts": ts,
            "actor": self.actor,
            "tenant": tenant,
            "pipeline": self.pipeline,
            "run_id": self.run_id,
            "task": task,
            "action": "task.finished",
            "outcome": outcome,
            "error_class": error_class,
            "attempt": attempt,
        }
        if operation is not None:
            rec["operation"] = operation
        if optional:
            rec.update(optional)
        return rec
