"""Worker process entry point: ``python _worker.py READ_FD WRITE_FD LIMITS_JSON``.

Started as a fresh interpreter (never a fork, never re-running the user's script). It
receives tasks by value over a private pipe (functions and closures pickled with
cloudpickle, so code defined in ``__main__`` works), applies the operating-system limits it
was started with, and answers each call with its result or its error and traceback.
The user's ``print`` output goes to the inherited stdout/stderr, not into the protocol.

This file imports nothing from xlib_pipeline so a worker starts fast.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import sys
import traceback

HEADER = struct.Struct("!Q")


def read_frame(fd: int) -> bytes | None:
    """Read one length-prefixed frame; ``None`` at end of file."""
    head = _read_exact(fd, HEADER.size)
    if head is None:
        return None
    (size,) = HEADER.unpack(head)
    body = _read_exact(fd, size)
    if body is None:
        raise EOFError("pipe closed in the middle of a frame")
    return body


def _read_exact(fd: int, size: int) -> bytes | None:
    chunks = []
    remaining = size
    while remaining:
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            return None if remaining == size else b""
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def write_frame(fd: int, data: bytes) -> None:
    """Write one length-prefixed frame."""
    view = memoryview(HEADER.pack(len(data)) + data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def apply_limits(limits: dict[str, object]) -> None:
    """Apply memory (address space) and CPU-core limits to this process."""
    mem = limits.get("memory_bytes")
    if isinstance(mem, int) and mem > 0:
        import resource

        # Count only what the task allocates: the limit sits on top of what the fresh
        # interpreter already maps, so the driver's memory never counts against it.
        base = _current_vm_bytes()
        soft = base + mem
        resource.setrlimit(resource.RLIMIT_AS, (soft, soft))
    cores = limits.get("cpu_cores")
    if isinstance(cores, int) and cores > 0 and hasattr(os, "sched_setaffinity"):
        allowed = sorted(os.sched_getaffinity(0))
        offset = int(str(limits.get("core_offset", 0)))
        pick = [allowed[(offset + i) % len(allowed)] for i in range(min(cores, len(allowed)))]
        os.sched_setaffinity(0, set(pick))


def _current_vm_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[0])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - not Linux
        return 0


def watch_parent(rfd: int, parent: int) -> None:
    """Die with the driver, and take every process the task started along.

    A thread waits for the driver's end of the task pipe to close (the driver exited, even
    by ``kill -9``: the kernel closes its descriptors) and checks the parent pid every
    second; then it kills this worker's process group (the worker leads its own session).
    So a resumed task never runs beside an orphaned first attempt.
    """
    import select
    import signal
    import threading

    def loop() -> None:
        poller = select.poll()
        poller.register(rfd, 0)  # only POLLHUP / POLLERR: the driver's end closed
        while True:
            try:
                closed = bool(poller.poll(1000))
            except InterruptedError:  # pragma: no cover - retried
                continue
            if closed or os.getppid() != parent:
                try:
                    os.killpg(os.getpgid(0), signal.SIGKILL)
                finally:
                    os._exit(1)

    threading.Thread(target=loop, name="xlib-parent-watch", daemon=True).start()


def main(argv: list[str]) -> int:
    rfd, wfd = int(argv[1]), int(argv[2])
    limits = json.loads(argv[3]) if len(argv) > 3 else {}
    import cloudpickle  # imported before limits so its modules are mapped already

    # Before the limits: the watcher's thread stack counts against an address-space limit.
    watch_parent(rfd, int(str(limits.get("parent_pid") or os.getppid())))
    apply_limits(limits)
    functions: dict[str, object] = {}
    while True:
        frame = read_frame(rfd)
        if not frame:
            return 0
        try:
            key, fn_bytes, args, _task, is_async, scopes = pickle.loads(frame)
            fn = functions.get(key)
            if fn is None:
                fn = cloudpickle.loads(fn_bytes)
                functions[key] = fn
            # A coroutine function runs to completion on a fresh event loop.
            if is_async:
                result = run_in_scopes(scopes, _run_coroutine, fn, args)
            else:
                result = run_in_scopes(scopes, fn, *args)
            lazy = _lazy_kind(result) if not is_async else None
            if lazy is not None:
                payload = pickle.dumps(("err", "lazy", lazy, "", "", None), protocol=5)
            else:
                try:
                    payload = cloudpickle.dumps(("ok", result), protocol=5)
                except Exception as exc:
                    payload = _error_payload(exc, stage="result")
        except MemoryError as exc:
            # An allocation refused under the address-space limit is the limit; a
            # MemoryError the task raised itself (``raise MemoryError``) is its own error.
            stage = "call" if _raised_explicitly(exc) else "memory"
            if stage == "memory":
                functions.clear()
            payload = _error_payload(exc, stage=stage)
        except BaseException as exc:  # report everything, including SystemExit
            payload = _error_payload(exc, stage="call")
        write_frame(wfd, payload)


def run_in_scopes(scopes: tuple[object, ...], fn: object, *args: object) -> object:
    """Call ``fn(*args)`` inside the task scopes sent with the task (see ``_scopes``); a
    copy of ``xlib_pipeline.run_in_scopes`` so the worker imports nothing at start."""
    if not scopes:
        return fn(*args)  # type: ignore[operator]
    import contextlib

    with contextlib.ExitStack() as stack:
        for scope in scopes:
            stack.enter_context(scope())  # type: ignore[operator]
        return fn(*args)  # type: ignore[operator]


def _raised_explicitly(exc: BaseException) -> bool:
    """Whether ``exc`` came from a ``raise X`` statement in Python code (not an allocator).

    The innermost traceback entry points at the instruction that raised: ``RAISE_VARARGS``
    with an argument for a ``raise`` statement, a call or an operator for a failed
    allocation inside the interpreter or a C extension.
    """
    import dis

    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code.co_code
    i = tb.tb_lasti
    if not 0 <= i < len(code) - 1:
        return False
    return code[i] == dis.opmap["RAISE_VARARGS"] and code[i + 1] > 0


def _run_coroutine(fn: object, args: tuple[object, ...]) -> object:
    import asyncio
    import inspect

    async def body() -> object:
        res = fn(*args)  # type: ignore[operator]
        return await res if inspect.isawaitable(res) else res

    return asyncio.run(body())


def _lazy_kind(value: object) -> str | None:
    """The type name of a coroutine/generator a plain function returned (closed), or None."""
    import types

    if isinstance(value, types.CoroutineType):
        value.close()
        return "coroutine"
    if isinstance(value, (types.GeneratorType, types.AsyncGeneratorType)):
        return type(value).__name__
    return None


def _error_payload(exc: BaseException, *, stage: str) -> bytes:
    tb = "".join(traceback.format_exception(exc))
    try:
        import cloudpickle

        data: bytes = cloudpickle.dumps(exc, protocol=5)
        pickle.loads(data)  # ensure it round-trips before sending
        blob: bytes | None = data
    except Exception:
        blob = None
    return pickle.dumps(("err", stage, type(exc).__name__, str(exc), tb, blob), protocol=5)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
