"""``local_map``: ``map_over`` tasks of runs that are not distributed.

The items of a mapped task run in parallel on the run's own executor: in helper threads of
the calling lane (``threads``), in the worker processes of the process executor
(``processes``, whose pool size bounds them too), or one after the other in the lane itself
(``inline``, which runs nothing at once). At most ``max_workers`` items (of the run; fewer
with ``distribute_across_nodes(parallelism=N)``) are in flight at a time, and under a
resource budget (config ``resources``) no more than the budget has room for, each item
holding the task's ``resources=`` (extra shares are taken when the task starts, from what is
free and no waiting task needs; see :class:`xlib_pipeline.ResourceSlots`). The results
come back in the order of the items. The first item to fail stops further items from
starting; the items already running finish, then the task fails with that item's own
exception, noted with its position. Other tasks go straight to the run's executor, so a run
behaves as without this plugin.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from xlib_pipeline import RESOURCE_SLOTS, DefinitionError, Isolation, RunContext, Task

from ._executor import STASH, DaskRun


class LocalMapExecutor:
    """Runs ``map_over`` tasks item by item, in parallel, on the run's own executor."""

    name = "local_map"

    def __init__(self, manager: Any) -> None:
        self._manager = manager

    def lanes(self) -> int | None:
        return None

    def close(self) -> None:
        pass

    def call(
        self,
        task: Task,
        args: tuple[Any, ...],
        *,
        run: RunContext,
        isolation: Isolation | None,
        timeout: float | None,
    ) -> Any:
        state: DaskRun = run.stash[STASH]
        inner = self._manager.executor(state.inner)
        spec, index = state.spec(task)
        if index is None:
            return inner.call(task, args, run=run, isolation=isolation, timeout=timeout)
        items = local_items(task, args, index)
        width = map_width(run, state.inner, spec.parallelism if spec is not None else "auto")

        def one(item: Any) -> Any:
            part = (*args[:index], item, *args[index + 1 :])
            return inner.call(task, part, run=run, isolation=isolation, timeout=timeout)

        # Under a resource budget each item in flight holds the task's resources=: the task
        # holds one share while it runs, and one more per item beyond the first is taken
        # from what the budget has free now (never from a task that waits for it).
        slots = run.stash.get(RESOURCE_SLOTS, None) if width > 1 and len(items) > 1 else None
        extra = slots.take(task.name, min(width, len(items)) - 1) if slots is not None else None
        if extra is not None:
            width = 1 + extra
        try:
            return map_ordered(task.name, one, items, width)
        finally:
            if slots is not None and extra:
                slots.give_back(task.name, extra)


def map_width(run: RunContext, inner: str, parallelism: int | str) -> int:
    """How many items of a mapped task run at once: 1 inline, else the run's
    ``max_workers`` (capped by an int ``parallelism``)."""
    if inner == "inline":
        return 1
    width = run.max_workers or run.config.core.max_workers
    if isinstance(parallelism, int) and not isinstance(parallelism, bool):
        width = min(width, parallelism)
    return max(1, width)


def local_items(task: Task, args: tuple[Any, ...], index: int) -> Sequence[Any]:
    """The list a ``map_over`` task maps over (upstream argument ``index``), checked."""
    if index >= len(args):
        raise DefinitionError(
            f"task {task.name!r}: map_over={index} but the task has {len(args)} upstream "
            f"argument(s) ({', '.join(task.depends_on) or 'none'})",
            task=task.name,
        )
    items = args[index]
    if isinstance(items, str | bytes | Mapping) or not isinstance(items, Sequence):
        upstream = task.depends_on[index] if index < len(task.depends_on) else "?"
        raise TypeError(
            f"task {task.name!r}: map_over={index} expects upstream argument {index} "
            f"(the output of {upstream!r}) to be a list or tuple, got {type(items).__name__}"
        )
    return items


def map_ordered(name: str, fn: Any, items: Sequence[Any], width: int) -> list[Any]:
    """``[fn(item) for item in items]`` with up to ``width`` calls at once (the calling
    thread is one of them); results in item order. The first failure (lowest position
    among those that failed) is raised once running calls ended; no call starts after it."""
    n = len(items)
    results: list[Any] = [None] * n
    if width <= 1 or n <= 1:
        for k, item in enumerate(items):
            try:
                results[k] = fn(item)
            except BaseException as exc:
                _noted(exc, name, k, n)
                raise
        return results
    lock = threading.Lock()
    state = {"next": 0}
    errors: dict[int, BaseException] = {}

    def work() -> None:
        while True:
            with lock:
                k = state["next"]
                if k >= n or errors:
                    return
                state["next"] = k + 1
            try:
                results[k] = fn(items[k])
            except BaseException as exc:
                with lock:
                    errors[k] = exc

    helpers = [
        threading.Thread(target=work, name=f"xlib-map-{name}-{j}", daemon=True)
        for j in range(min(width, n) - 1)
    ]
    for t in helpers:
        t.start()
    work()  # the calling lane is one of the workers
    for t in helpers:
        t.join()
    if errors:
        k = min(errors)
        raise _noted(errors[k], name, k, n)
    return results


def _noted(exc: BaseException, name: str, k: int, n: int) -> BaseException:
    note = f"map_over: item {k} of {n} of task {name!r} failed"
    if note not in getattr(exc, "__notes__", ()):
        try:
            exc.add_note(note)
        except Exception:  # pragma: no cover - an exception refusing attributes
            pass
    return exc
