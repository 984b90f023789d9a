"""Group commit onto one SQLite connection, with no waiting window.

Callers add statements, then ask for a commit. Whoever commits writes everything pending in
one transaction, runs the callbacks registered with that batch, and goes on while more
arrived meanwhile: only what arrives while a commit is in flight is batched into the next
one. So at low load a record costs one commit, and under load batches form by themselves
(PostgreSQL's group commit with ``commit_delay = 0``). No thread ever sleeps through a window
while a record waits.

Who writes (flat combining, with a writer thread for callers that must not wait):

- :meth:`GroupCommitter.flush` (a caller that waits for the commit anyway: a run driven
  inline, a stream's batch, the end of a run) writes the batch itself when no commit is in
  flight: no thread hand-off, which cost two GIL hand-offs per commit.
- :meth:`GroupCommitter.commit` with a callback (the scheduler's lanes, which go on with other
  ready work meanwhile) wakes the writer thread: a lane waiting in SQLite for the GIL to come
  back would hold up its ready work, and the writer's batches are larger (same-run A/B on the
  10,000-task DAG: lanes committing themselves made 4x more, smaller commits and cost more).
- :meth:`GroupCommitter.commit_here` with a callback (a stream on a store whose commit does
  not wait for the disk: its batches' commits are already grouped, and the stream has
  nothing else to run meanwhile) writes the batch itself when no commit is in flight, else
  leaves it to the combiner in flight: no writer thread, whose Python work on the other CPU
  took the GIL from the stream's thread at each of its system calls (same-run, every
  plugin on: 1.13 -> 0.95 ms per batch of 10 records).

A commit writes what was queued **before it was asked for** (the queue's length then, the
*cut*), never statements queued after it: a caller that queues a unit of statements and then
asks for its commit (a stream's batch: its run's rows, then its checkpoint) has them
committed in one transaction, even while an earlier commit is in flight when it starts
queueing (the combiner does not sweep up the first half of the unit).

A failed commit drops nothing: the batch goes back to the front of the queue, the batch's
callbacks learn the error, and later commits fail fast with the same error until
:meth:`GroupCommitter.flush` (called at the end of a run) retries.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from .exceptions import StoreError

Then = Callable[[BaseException | None], None]
Statement = tuple[str, tuple[Any, ...]]


class GroupCommitter:
    """Windowless group commit: the queue, the combiner, the writer thread, the failure rules.

    A backend subclasses it and implements :meth:`write` (one batch, in order, raising one
    of :attr:`faults` when it could not be written: what was written stays, the rest is
    retried), :meth:`fault` (the :class:`StoreError` to report) and :meth:`disconnect`.
    Items whose statement is :data:`CALL` carry ``(fn,)``: ``write`` runs ``fn(connection)``
    in order (see :meth:`exclusive`). One combiner writes at a time (the writer thread or
    a flushing caller), so the connection is never used by two threads at once.
    """

    #: The statement of an item that runs a function on the writer's connection.
    CALL = "CALL"
    #: What :meth:`write` raises when storage fails (anything else is a bug and propagates).
    faults: tuple[type[BaseException], ...] = (OSError,)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        # Appended without the lock (deque.append is atomic): the combiner drains it under
        # the lock after taking the callbacks, so a statement queued before its ``then`` was
        # registered is always in the batch that ``then`` waits for.
        self._pending: deque[Statement] = deque()
        #: How many statements at the front of ``_pending`` a commit was asked for (the cut,
        #: under the lock): the combiner writes those, never the statements queued after.
        self._cut = 0
        self._then: list[Then] = []
        self._busy = False  # a combiner (the writer or a flushing caller) is writing
        self._wake = False  # the writer thread has work to take
        self._writer: threading.Thread | None = None
        self._closing = False
        #: The last failure, until a commit succeeds; commits fail fast meanwhile.
        self.error: StoreError | None = None
        #: Tests only: called before every write with the statements about to be written.
        self.write_hook: Callable[[list[Statement]], None] | None = None

    def add(self, sql: str, params: tuple[Any, ...]) -> None:
        """Queue one statement for the next commit (no lock taken)."""
        self._pending.append((sql, params))

    def add_unit(self, statements: list[Statement]) -> None:
        """Queue ``statements`` at once (one ``deque.extend``, atomic: a commit's cut never
        falls inside them); a stream batch's run rows and its checkpoint."""
        self._pending.extend(statements)

    def commit(self, then: Then | None = None) -> None:
        """Have what is queued committed as soon as no commit is in flight; ``then(error)``
        after.

        Never waits: ``then`` runs on the writer thread, or on the thread whose commit is in
        flight (here, at once, while the store is failing).
        """
        with self._lock:
            err = self.error
            if err is None:
                self._cut = len(self._pending)
                if then is not None:
                    self._then.append(then)
                if not self._busy:
                    self._busy = self._wake = True
                    if self._writer is None:
                        self._start()
                    else:
                        self._cond.notify()
        if err is not None and then is not None:
            then(err)

    def commit_here(self, then: Then) -> None:
        """Have what is queued committed, then ``then(error)``: by this thread when no commit
        is in flight (``then`` has run when this returns), else by the commit in flight (on
        its thread, after it). Never raises a storage fault: ``then`` learns it, and the
        statements stay queued for :meth:`flush` to retry, as with :meth:`commit`.
        """
        with self._lock:
            err = self.error
            inline = False
            if err is None:
                self._cut = len(self._pending)
                self._then.append(then)
                inline = not self._busy
                if inline:
                    self._busy = True
        if err is not None:
            then(err)
        elif inline:
            try:
                self._combine()
            except BaseException:
                # Ctrl-C (or a bug) while this thread wrote: the batch and the callbacks not
                # yet run went back to the queue; the writer thread writes them, as nobody
                # else may ask (a stream stopping waits for its commits).
                self.commit()
                raise

    def flush(self) -> None:
        """Block until everything queued so far is committed; raise StoreError if it fails.

        When no commit is in flight, this thread writes the batch itself.
        """
        with self._lock:
            self.error = None  # retry now
            self._cut = len(self._pending)
            inline = not self._busy
            if inline:
                self._busy = True
            else:
                box: list[BaseException | None] = []
                done = threading.Event()

                def then(err: BaseException | None) -> None:
                    box.append(err)
                    done.set()

                self._then.append(then)
        if inline:
            err = self._combine()
            if err is not None:
                raise err
            return
        done.wait()
        if box[0] is not None:
            raise box[0]

    def _start(self) -> None:
        t = threading.Thread(target=self._loop, name="xlib-store-writer", daemon=True)
        self._writer = t
        t.start()

    def _loop(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._wake:
                    if self._closing:
                        self._writer = None
                        return
                    cond.wait()
                self._wake = False
            try:
                self._combine()
            except BaseException as exc:  # not a storage fault: what was taken is requeued
                self._fail_waiters(exc)

    def _fail_waiters(self, exc: BaseException) -> None:
        """The writer thread's write raised something that is not one of :attr:`faults` (a
        bug, a statement SQLite cannot bind): answer everyone waiting with it as a
        StoreError, as a failed write does, instead of leaving them waiting for a commit that
        no thread will retry. The statements stay queued; :meth:`flush` retries them (and
        raises the original error in its caller if it happens again)."""
        err = StoreError(
            f"run store: the writer thread failed: {type(exc).__name__}: {exc}; nothing "
            "queued was dropped, the next flush retries it"
        )
        err.__cause__ = exc
        with self._lock:
            self.error = err
            then, self._then = self._then, []
        for fn in then:
            try:
                fn(err)
            except Exception:  # pragma: no cover - a callback bug must not stop us
                pass

    def _combine(self) -> StoreError | None:
        """Write batches until nothing is pending (this thread holds ``_busy``); the error of
        the last batch written, if it failed."""
        lock = self._lock
        batch: list[Statement] = []
        then: list[Then] = []
        k = 0  # callbacks of ``then`` already run
        err: StoreError | None = None
        try:
            while True:
                with lock:
                    if not self._then and (not self._cut or self.error is not None):
                        # Nothing to do, or failing: the statements wait for flush().
                        self._busy = False
                        return err
                    then, self._then = self._then, []
                    k = 0
                    if self.error is None:
                        popleft = self._pending.popleft
                        batch = [popleft() for _ in range(self._cut)]
                        self._cut = 0
                    # else failing: the statements stay for flush() to retry, answer at once.
                err = self.error
                if batch:
                    try:
                        self.write(batch)
                    except self.faults as exc:
                        err = self.fault(exc)
                        err.__cause__ = exc
                        with lock:
                            self._requeue(batch)  # never dropped: retried by flush()
                            self.error = err
                    batch = []
                for fn in then:
                    k += 1
                    try:
                        fn(err)
                    except Exception:  # pragma: no cover - a callback bug must not stop us
                        pass
        except BaseException:
            # Ctrl-C (or a bug) while combining: nothing is lost, the next commit goes on.
            with lock:
                self._requeue(batch)
                self._then[:0] = then[k:]
                self._busy = False
            raise

    def _requeue(self, batch: list[Statement]) -> None:
        """Put ``batch`` back at the front of the queue, in order (under the lock)."""
        self._pending.extendleft(reversed(batch))
        self._cut += len(batch)

    def write(self, batch: list[Statement]) -> None:
        """Write ``batch`` (in order); on failure drop its written prefix and raise."""
        raise NotImplementedError

    def fault(self, exc: BaseException) -> StoreError:
        """The StoreError reported for a failed write."""
        return StoreError(f"run store: a write failed: {exc}")

    def disconnect(self) -> None:
        """Close the writer's connection (the writer thread has stopped)."""

    def exclusive(self, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(connection)`` as the combiner, after everything queued so far."""
        box: list[Any] = []
        done = threading.Event()

        def run(conn: Any) -> None:
            try:
                box.append((True, fn(conn)))
            except BaseException as exc:
                box.append((False, exc))
            done.set()

        self.flush()
        with self._lock:
            self._pending.append((self.CALL, (run,)))
        self.flush()
        done.wait()
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def read_if_idle(self, fn: Callable[[Any], Any], default: Any = None) -> Any:
        """``fn(connection)`` on the writer's connection when no commit is in flight, else
        ``default`` at once (never waits).

        A read on a connection of its own pays for every commit in between: SQLite resets a
        connection's page cache when another connection has written. The writer's own
        connection keeps its cache warm (a result-cache hit reads here, right after the
        previous task's commit). Commits asked for while the read holds the connection are
        handed to the writer when it ends.
        """
        with self._lock:
            if self._busy or self.error is not None:
                return default
            self._busy = True
        try:
            return fn(self.connection())
        finally:
            with self._lock:
                if self._then or self._cut:
                    self._wake = True  # keep _busy: the writer takes over what came meanwhile
                    if self._writer is None:
                        self._start()
                    else:
                        self._cond.notify()
                else:
                    self._busy = False

    def connection(self) -> Any:
        """The writer's connection, for :meth:`read_if_idle` (the caller holds ``_busy``)."""
        raise NotImplementedError

    def close(self) -> None:
        """Commit what is queued, stop the writer and close the connection."""
        try:
            self.flush()
        finally:
            with self._lock:
                self._closing = True
                self._cond.notify()
                writer = self._writer
            if writer is not None:
                writer.join(timeout=30)
            self.disconnect()
