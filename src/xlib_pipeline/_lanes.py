"""How a run's lanes are driven, stopped and released: the driver thread alone (inline) or
``max_workers`` lane threads pulling ready tasks from a queue; Ctrl-C and cancellation (start
nothing new, a grace period, then cancel what still runs); successors released after their
upstream's commit. A mixin of :class:`~._scheduler.Run`: the names below are the run's own."""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._records import RunContext, Status

if TYPE_CHECKING:  # pragma: no cover
    from ._async import LoopThread
    from ._graph import Plan
    from ._hooks import Hooks
    from ._outcomes import Columns

CANCELLED = Status.CANCELLED


class Flag:
    """A :class:`threading.Event` (``is_set``, ``set``, ``wait``) whose Event is made on the
    first ``wait`` only. A run has two (stopping, finished), set on every run but waited on
    only by lanes, retry back-offs and a cancel's grace thread: two Events (a Condition
    each) were 7 µs of every small run's fixed cost."""

    __slots__ = ("_event", "_flag", "_lock")

    def __init__(self, lock: threading.Lock | None = None) -> None:
        self._flag = False
        self._event: threading.Event | None = None
        #: May be shared by a run's two flags: held only to set a flag or make its Event.
        self._lock = threading.Lock() if lock is None else lock

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        with self._lock:  # either a waiter's Event exists now, or it will see the flag
            self._flag = True
            event = self._event
        if event is not None:
            event.set()

    def wait(self, timeout: float | None = None) -> bool:
        if self._flag:
            return True
        with self._lock:
            event = self._event
            if event is None:
                event = self._event = threading.Event()
                if self._flag:
                    event.set()
        return event.wait(timeout)


class LaneDriver:
    """Driving, stopping and releasing lanes for :class:`~._scheduler.Run`."""

    ctx: RunContext
    hooks: Hooks
    plan: Plan
    cols: Columns
    lock: threading.Lock
    lanes: int
    grace: float | None
    stopping: bool
    fatal: BaseException | None
    done: int
    finished_event: Flag
    stop_event: Flag
    cancel_reason: str | None
    aloop: LoopThread | None
    _push: Callable[[Any], None]
    _queue: Any

    if TYPE_CHECKING:  # provided by Run

        def _process(self, i: int) -> int | None: ...
        def _log(self, event: str, **kw: Any) -> None: ...

    def _drive_inline(self, roots: list[int]) -> BaseException | None:
        interrupted: BaseException | None = None
        dq: deque[int] = deque(roots)
        self._push = dq.append
        try:
            while dq:
                i: int | None = dq.popleft()
                while i is not None:
                    i = self._process(i)
        except KeyboardInterrupt as exc:
            interrupted = exc
            self._stop()
            try:
                self._interrupt_notice()
                # Drain: everything left ends cancelled, nothing re-runs.
                while dq:
                    j: int | None = dq.popleft()
                    while j is not None:
                        j = self._process(j)
            except KeyboardInterrupt:  # a second Ctrl-C, anywhere in here: stop at once
                pass
            self._abandon()
        except BaseException as exc:  # a bug in the core or a hook: end the run cleanly
            self.fatal = exc
            self._stop()
            self._abandon()
        return interrupted

    def _drive_lanes(self, roots: list[int]) -> BaseException | None:
        interrupted: BaseException | None = None
        q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._push = q.put
        self._queue = q
        for i in roots:
            q.put(i)
        threads = [
            threading.Thread(target=self._lane, name=f"xlib-lane-{k}", daemon=True)
            for k in range(min(self.lanes, len(self.plan)))
        ]
        try:
            # Lanes start inside the try: a Ctrl-C that lands while they start (a task may
            # already run on the first) still takes the graceful path below.
            for t in threads:
                t.start()
            self.finished_event.wait()
        except KeyboardInterrupt as exc:
            interrupted = exc
            self._stop()
            try:
                # The notice is what tells the user to press Ctrl-C again: a second Ctrl-C
                # may land while it is still being written, before the wait below.
                self._interrupt_notice()
                if not self.finished_event.wait(self.grace):
                    self._abandon()
            except KeyboardInterrupt:  # a second Ctrl-C: stop at once
                self._abandon()
        for _ in threads:
            q.put(None)
        return interrupted

    def _interrupt_notice(self) -> None:
        """Say at once that the run is stopping, and for how long running tasks may go on."""
        self._log("pipeline.cancelling", grace=self.grace)
        notice = getattr(self.ctx.manager, "interrupt_notice", None)
        if notice is not None:
            notice(self.ctx.run_id, self.grace)

    def _stop(self) -> None:
        """Start no new task or attempt from now on (cancellation, ``on_failure: stop``)."""
        self.stopping = True
        self.stop_event.set()
        if self.aloop is not None:
            self.aloop.hurry()  # retry back-offs of coroutine tasks end now

    def request_stop(self, reason: str) -> None:
        """Stop the run from another thread, as Ctrl-C would: start nothing new, give
        running tasks ``grace`` seconds to finish, then cancel the rest."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
        self._stop()
        self._log("pipeline.cancelling", grace=self.grace)

        def after_grace() -> None:
            if not self.finished_event.wait(self.grace):
                self._abandon()

        threading.Thread(target=after_grace, name="xlib-cancel-grace", daemon=True).start()

    def _lane(self) -> None:
        q = self._queue
        process = self._process
        idle = self.hooks.has["lane_idle"]
        while True:
            try:
                i = q.get() if not idle else self._idle_get(q)  # lane_idle may raise
                if i is None:
                    return
                while i is not None:
                    i = process(i) if i.__class__ is int else i.complete(self)
            except BaseException as exc:  # a bug in the core or a hook: never hang the run
                self.fatal = exc
                self._stop()
                self._abandon()
                return

    def _idle_get(self, q: Any) -> Any:
        """The lane's next item; when none is ready, ``lane_idle`` is called first (an
        observer holding a record back writes it before the lane waits)."""
        try:
            return q.get(False)
        except queue.Empty:
            pass
        self.hooks.lane_idle(run=self.ctx)
        return q.get()

    def _abandon(self) -> None:
        """Mark everything not terminal as cancelled and release the driver."""
        with self.lock:
            st = self.cols.status
            for i in range(len(st)):
                if st[i] is None:
                    st[i] = CANCELLED
            self.done = len(st)
            self.finished_event.set()
        if self.aloop is not None:
            self.aloop.cancel_all()  # coroutines are cancelled, not abandoned

    def _store_failed(self, exc: BaseException | None) -> None:
        """A commit failed: stop starting work; the run fails with the storage error."""
        if exc is None:
            return
        if self.fatal is None:
            self.fatal = exc
        self._stop()

    def _release(self, ready: list[int], exc: BaseException | None) -> None:
        """Committed (or failed to commit, then stopping): let ``ready`` tasks be decided."""
        if exc is not None:
            self._store_failed(exc)
        push = self._push
        for s in ready:
            push(s)
