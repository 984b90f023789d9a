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

#: The two common records of a task, cut around the values that vary per record (see
#: :meth:`TaskRecords.quick`): (``task.started`` pre, ``task.finished`` pre, mid, post
#: before the timestamp, post after it), for attempt 1 (and, finished, a plain success).
Quick = tuple[str, str, str, str, str]

# Sentinels for the values filled in per task and per record (never in a value's text:
# control characters are always escaped there).
_TS, _TASK, _TENANT, _OP, _RUN, _CLS = "\x02", "\x03", "\x04", "\x05", "\x06", "\x07"

#: The cut layouts by (actor text, pipeline text, operation or not), with ``_RUN`` for the
#: run id: a stream cuts them once, not once per batch (each batch is a run). Bounded.
_CUTS: dict[tuple[str, str, bool], Quick | None] = {}
#: The same for a plain success's ``task.finished`` pre text with a classification level
#: (``_CLS`` for the level's text), by (actor text, pipeline text).
_CLS_CUTS: dict[tuple[str, str], str | None] = {}
#: The two layouts' ``mid`` texts (``_RUN`` for the run id; None: no such layout) by
#: (actor text, pipeline text): what :meth:`TaskRecords.run_mid` needs of every run.
_MIDS: dict[tuple[str, str], tuple[str | None, str | None]] = {}
#: The bit of ``classification`` among FINISHED_OPTIONAL.
_CLASSIFIED = 1 << FINISHED_OPTIONAL.index("classification")


class TaskRecords:
    """Builds one run's task records; see the module docstring."""

    __slots__ = ("_const", "_finished", "_quick", "_started", "actor", "pipeline", "run_id")

    def __init__(self, actor: Any, pipeline: Any, run_id: Any) -> None:
        self.actor = actor
        self.pipeline = pipeline
        self.run_id = run_id
        self._const: dict[str, str] | None
        try:  # (strs, the common case, without the calls: once per run)
            self._const = {
                "actor": _jstr(actor) if type(actor) is str else text(actor),
                "pipeline": _jstr(pipeline) if type(pipeline) is str else text(pipeline),
                "run_id": _jstr(run_id) if type(run_id) is str else text(run_id),
            }
        except ValueError:
            self._const = None
        self._started: dict[int, Shape] = {}
        self._finished: dict[int, Shape] = {}
        #: Per operation-or-not: the two records' texts with sentinels for the task's values.
        self._quick: dict[bool, Quick | None] = {}

    def texts(self, task: Any, tenant: Any, operation: Any) -> TaskTexts:
        """The value texts of a task's constant fields (computed once per task)."""
        if self._const is None:
            return None
        try:
            return (text(task), text(tenant), None if operation is None else text(operation))
        except ValueError:
            return None

    def quick(self, texts: TaskTexts) -> Quick | None:
        """A task's two common records cut around what varies per record: the first
        attempt's ``task.started`` and a first attempt's plain success (no optional key but
        ``operation``, no error), for one run. A record is then ``[pre, mid, head + ts +
        tail]`` with the timestamp's canonical text between the quotes: no formatting on
        the audit path. Cut from the records' :class:`Shape` once per run (sentinels for the
        task's values, replaced per task), so the bytes are the shape's. None: the task's
        records take :meth:`started` / :meth:`finished` (texts not standalone, or a layout
        where the values fall elsewhere)."""
        if texts is None:
            return None
        has_op = texts[2] is not None
        if has_op in self._quick:
            cut = self._quick[has_op]
        else:
            cut = self._quick[has_op] = self._cut_for_run(has_op)
        if cut is None:
            return None
        spre, fpre, mid, head, tail = cut
        if has_op:
            op = texts[2]
            assert op is not None
            spre, fpre = spre.replace(_OP, op), fpre.replace(_OP, op)
        head = head.replace(_TASK, texts[0]).replace(_TENANT, texts[1])
        return spre, fpre, mid, head, tail

    def run_mid(self) -> str | None:
        """The text between ``prev`` and ``seq`` of this run's quick records (it holds the
        run id and nothing of the task: the same for every task of the run, with or without
        an operation). None: no quick record for this run."""
        const = self._const
        if const is None:
            return None
        key = (const["actor"], const["pipeline"])
        try:
            plain, with_op = _MIDS[key]
        except KeyError:  # once per actor and pipeline (a stream: once, not per batch)
            cuts = [self._layout_cut(has_op) for has_op in (False, True)]
            plain, with_op = (None if cut is None else cut[2] for cut in cuts)
            if len(_MIDS) >= 256:
                _MIDS.clear()
            _MIDS[key] = (plain, with_op)
        run = const["run_id"]
        if plain is None:
            return None if with_op is None else with_op.replace(_RUN, run)
        mid = plain.replace(_RUN, run)
        if with_op is None or with_op == plain:
            return mid
        return mid if with_op.replace(_RUN, run) == mid else None

    def _layout_cut(self, has_op: bool) -> Quick | None:
        """:meth:`_cut` for the actor and pipeline (cached across runs), ``_RUN`` for the
        run id."""
        assert self._const is not None
        key = (self._const["actor"], self._const["pipeline"], has_op)
        try:
            cut = _CUTS[key]
        except KeyError:
            cut = self._cut(has_op)
            if len(_CUTS) >= 256:
                _CUTS.clear()
            _CUTS[key] = cut
        return cut

    def _cut_for_run(self, has_op: bool) -> Quick | None:
        """:meth:`_cut` for this run: the layout cut for the actor and pipeline (cached
        across runs) with this run's id put in."""
        assert self._const is not None
        cut = self._layout_cut(has_op)
        if cut is None:
            return None
        spre, fpre, mid, head, tail = cut
        return spre, fpre, mid.replace(_RUN, self._const["run_id"]), head, tail

    def classified(self, level: Any) -> str | None:
        """The ``task.finished`` pre text of a first attempt's plain success whose output
        has the classification ``level`` (no operation, no PII detected): the rest of the
        record is the quick one's (:meth:`quick`). None: the general path decides."""
        if self._const is None or type(level) is not str:
            return None
        key = (self._const["actor"], self._const["pipeline"])
        try:
            pre = _CLS_CUTS[key]
        except KeyError:
            pre = self._cut_classified()
            if len(_CLS_CUTS) >= 256:
                _CLS_CUTS.clear()
            _CLS_CUTS[key] = pre
        return None if pre is None else pre.replace(_CLS, _jstr(level))

    def _cut_classified(self) -> str | None:
        plain = self._cut(False)
        ts = '"' + _TS + '"'
        f = Shape(*self._layout(False, _CLASSIFIED, _RUN)).render(
            ["1", "null", '"succeeded"', _TASK, _TENANT, ts, _CLS]
        )
        if (
            plain is None
            or len(f) != 3
            or (f[1], f[2]) != (plain[2], plain[3] + _TS + plain[4])
            or f[0].count(_CLS) != 1
            or any(c in f[0] for c in (_TS, _TASK, _TENANT, _OP, _RUN))
        ):
            return None
        return f[0]

    def _cut(self, has_op: bool) -> Quick | None:
        """The two records' layout with sentinels for the task's values and the run id."""
        mask = int(has_op)
        op = [_OP] if has_op else []
        ts = '"' + _TS + '"'
        s = Shape(*self._layout(True, mask, _RUN)).render(["1", _TASK, _TENANT, ts, *op])
        f = Shape(*self._layout(False, mask, _RUN)).render(
            ["1", "null", '"succeeded"', _TASK, _TENANT, ts, *op]
        )
        post = s[2]
        if (
            len(s) != 3
            or len(f) != 3
            or s[1:] != f[1:]
            or post.count(_TS) != 1
            or s[1].count(_RUN) != 1
            or any(c in s[0] + f[0] + s[1] for c in (_TS, _TASK, _TENANT))
            or any(c in post for c in (_OP, _RUN))
            or _RUN in s[0] + f[0]
            or _OP in s[1]
        ):
            return None  # not the layout assumed above: the general path stays right
        head, tail = post.split(_TS)
        return s[0], f[0], s[1], head, tail

    def _shape(self, started: bool, mask: int) -> Shape:
        shapes = self._started if started else self._finished
        shape = shapes.get(mask)
        if shape is None:
            shape = shapes[mask] = Shape(*self._layout(started, mask))
        return shape

    def _layout(
        self, started: bool, mask: int, run_id: str | None = None
    ) -> tuple[tuple[str, ...], dict[str, str]]:
        """A record's variable keys and constant texts (``run_id``: in place of the run's)."""
        assert self._const is not None
        const = dict(self._const)
        if run_id is not None:
            const["run_id"] = run_id
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
        return base + extra, const

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
