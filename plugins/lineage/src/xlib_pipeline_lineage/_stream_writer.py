"""A running stream's lineage events, written several per ``write``.

Each event is noted when it happens (a ``RUNNING`` event when its batch commits: its time
and the batch's info) and held; the held events are built when they are written, several
in a row (one after the other they cost a third of each built alone between two batches);
the held events are written together by the stream's next event once the oldest has waited
:data:`HOLD_S` (or :data:`MAX_HELD` are held), by a timer thread :data:`TICK_S` at the
latest when no event comes, and all of them by the stream's end event. So an event reaches
the file within ``HOLD_S + TICK_S`` of its commit: a ``kill -9`` can lose the ``RUNNING``
events of the batches committed in that last moment (the batches themselves stay committed).
A write per micro-batch cost more than building its event (a syscall that hands the GIL to
the store's writer thread).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from ._emit import Chunk, Sink

#: Seconds the oldest held event waits for others before the next event writes them all.
HOLD_S = 0.02
#: Events held at most: the next event writes them.
MAX_HELD = 32
#: Seconds between the timer thread's looks (it writes held events the stream left waiting).
TICK_S = 0.05

_clock = time.monotonic


class StreamWriter:
    """The held events of one stream and its open file (see the module doc); thread-safe."""

    def __init__(self, sink: Sink, build: Callable[[Any], str]) -> None:
        self._batch = sink.batch()  # the file stays open from START to the end event
        #: ``build`` turns a held item that is not a str (an event noted, not yet built)
        #: into the event's text when it is written
        self._build = build
        self._held: list[Any] = []
        self._since = 0.0
        self._lock = threading.Lock()
        #: A failed write (or build) of the timer thread, raised by the stream's next event.
        self.failure: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, name="xlib-lineage-stream", daemon=True)
        self._thread.start()

    def add(self, line: Any) -> None:
        """Hold ``line`` (an event's text, or an item ``build`` makes it from); write what
        is held when it has waited long enough (raises :class:`WriteError` when that write,
        or the timer thread's last one, failed: the events not written stay held, in order,
        for the next write)."""
        now = _clock()
        with self._lock:
            held = self._held
            if not held:
                self._since = now
            held.append(line)
            if now - self._since >= HOLD_S or len(held) >= MAX_HELD:
                self._write()
            failure, self.failure = self.failure, None
        if failure is not None:
            raise failure

    def close(self, line: Any = None) -> None:
        """Write what is held (and ``line``), stop the timer thread and close the file;
        raises :class:`WriteError` when that fails (what could not be written is lost)."""
        self._stop.set()
        try:
            with self._lock:
                if line is not None:
                    self._held.append(line)
                if self._held:
                    self._write()
        finally:
            self._batch.close()
        self._thread.join()

    @property
    def held(self) -> list[Any]:
        """The events not written yet (oldest first; a str once built)."""
        with self._lock:
            return list(self._held)

    def _write(self) -> None:
        """Write the held events (under the lock); after a failure, the events the file did
        not take stay held, and the next write starts with them."""
        build = self._build
        held = self._held
        self._held = []
        try:
            lines = [x if type(x) is str else build(x) for x in held]
        except BaseException:
            self._held = held
            raise
        chunk = Chunk(lines)
        try:
            self._batch.write(chunk)
        except BaseException:
            self._held = chunk.unwritten() + self._held
            raise

    def _tick(self) -> None:
        while not self._stop.wait(TICK_S):
            with self._lock:
                if self._held and _clock() - self._since >= HOLD_S:
                    try:
                        self._write()
                    except Exception as exc:
                        self.failure = exc
