"""Result caching across runs: cache keys (code, inputs, version, tenant) and the entries.

The key of a task's result is a SHA-256 over

* the tenant the task runs for (a tenant's entries never serve another: the tenant is in
  the key, in the row, and in the encryption AAD);
* the pipeline and task names, and the ``cache_version=`` string;
* the code fingerprint of the task function: bytecode, constants, names, default argument
  values and closure cell values, recursively for closures and for the module-level
  functions it calls that are defined in the same module;
* the input fingerprint: the upstream outputs, canonically hashed (pickle as the fallback),
  or the value ``cache_key=`` returns for them;
* the run params (``execute_pipeline(params=...)``; see :func:`params_fingerprint`).

Entries live in the run store, in its own table ``cache_entries``, with the output passed
through the ``encrypt`` hook like any stored output (AAD: kind ``cache``, the key). The store
provides the table (:class:`~._tables.CacheTable`, through ``store.open_cache()``): the SQLite
store the :class:`CacheStore` below, in its file; a server store its own table, so drivers on
every host share the hits.
"""

from __future__ import annotations

import hashlib
import pickle
import sqlite3
import struct
import threading
import time
import types
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from ._records import PayloadRef
from ._tables import CacheEntry, CacheTable, open_cache
from .exceptions import DefinitionError, StoreError, Unhashable

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cache_entries (
    key TEXT PRIMARY KEY,
    tenant TEXT,
    pipeline TEXT NOT NULL,
    task TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL,
    run_id TEXT,
    output BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS cache_entries_task ON cache_entries (pipeline, task);
"""


_GET = "SELECT output, run_id, expires FROM cache_entries WHERE key = ? AND tenant IS ?"
_MISSING = object()


def _feed(h: Any, value: Any, seen: set[int], depth: int = 0) -> None:
    if depth > 200:
        raise Unhashable("nested too deeply")
    t = type(value)
    if value is None or t is bool:
        h.update(b"N" if value is None else (b"T" if value else b"F"))
    elif t is int:
        h.update(b"i" + str(value).encode() + b";")
    elif t is float:
        h.update(b"f" + struct.pack("<d", value))
    elif t is str:
        b = value.encode("utf-8", "surrogatepass")
        h.update(b"s" + str(len(b)).encode() + b":" + b)
    elif t is bytes:
        h.update(b"b" + str(len(value)).encode() + b":" + value)
    elif t is tuple or t is list:
        h.update(b"(" if t is tuple else b"[")
        for v in value:
            _feed(h, v, seen, depth + 1)
        h.update(b")")
    elif t is dict:
        items = sorted(
            (_digest(k, seen, depth + 1), _digest(v, seen, depth + 1)) for k, v in value.items()
        )
        h.update(b"{")
        for k, v in items:
            h.update(k + v)
        h.update(b"}")
    elif t is set or t is frozenset:
        h.update(b"<" + b"".join(sorted(_digest(v, seen, depth + 1) for v in value)) + b">")
    elif isinstance(value, types.FunctionType):
        h.update(b"F" + function_fingerprint(value, seen).encode())
    else:
        try:
            data = pickle.dumps(value, protocol=5)
        except Exception:
            try:
                import cloudpickle

                data = cloudpickle.dumps(value, protocol=5)
            except Exception as exc:
                raise Unhashable(f"{t.__name__} cannot be pickled: {exc}") from None
        h.update(b"P" + t.__qualname__.encode() + b":" + hashlib.sha256(data).digest())


def _digest(value: Any, seen: set[int] | None = None, depth: int = 0) -> bytes:
    h = hashlib.sha256()
    _feed(h, value, seen if seen is not None else set(), depth)
    return h.digest()


def value_fingerprint(value: Any) -> str:
    """A canonical digest of ``value``: equal containers of plain values give equal digests
    whatever their order of construction; other objects are pickled."""
    return _digest(value).hex()


def _code(h: Any, code: types.CodeType) -> None:
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _code(h, const)
        else:
            h.update(repr(const).encode())


def function_fingerprint(fn: Callable[..., Any], seen: set[int] | None = None) -> str:
    """Bytecode, constants, defaults and closure values of ``fn``, and recursively of the
    closures it holds and the same-module functions it calls."""
    seen = seen if seen is not None else set()
    h = hashlib.sha256()
    target = getattr(fn, "__wrapped__", fn) if not hasattr(fn, "__code__") else fn
    code = getattr(target, "__code__", None)
    if code is None:  # a callable object: its class and state
        h.update(b"O" + _digest(target, seen))
        return h.hexdigest()
    if id(target) in seen:
        return hashlib.sha256(b"cycle" + code.co_name.encode()).hexdigest()
    seen.add(id(target))
    _code(h, code)
    _feed(h, getattr(target, "__defaults__", None), seen)
    _feed(h, dict(getattr(target, "__kwdefaults__", None) or {}), seen)
    for cell in getattr(target, "__closure__", None) or ():
        try:
            content = cell.cell_contents
        except ValueError:  # an empty cell
            h.update(b"empty")
            continue
        _feed(h, content, seen)
    module = getattr(target, "__module__", None)
    glb = getattr(target, "__globals__", {})
    for name in _global_names(code):
        ref = glb.get(name)
        if isinstance(ref, types.FunctionType) and ref.__module__ == module:
            h.update(b"G" + name.encode() + function_fingerprint(ref, seen).encode())
    return h.hexdigest()


def _global_names(code: types.CodeType) -> list[str]:
    names = list(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.extend(_global_names(const))
    return names


def params_fingerprint(params: Mapping[str, Any]) -> str:
    """The run params' share of every key (the stream batch descriptor left out). Issue 17a's
    task context passes params to tasks; a task that reads them must not be served an entry
    made under other params, so they are part of the key."""
    rest = {k: v for k, v in params.items() if k != "stream"}
    return value_fingerprint(rest) if rest else ""


@attrs.frozen(kw_only=True)
class CachePolicy:
    """A task's cache settings, compiled once per plan."""

    ttl: float | None
    version: str
    key_fn: Callable[..., Any] | None
    code: str
    #: (tenant, pipeline, task, params) -> the key's hash state before the inputs: every
    #: part but the inputs, hashed once and copied per key (a few per task: see _PREFIXES).
    prefixes: dict[tuple[str, str, str, str], Any] = attrs.field(factory=dict, eq=False, repr=False)


#: Prefixes kept per task policy; more (a param that changes every run) start over.
_PREFIXES = 16


def _prefix(policy: CachePolicy, tenant: str, pipeline: str, task: str, params: str) -> Any:
    """The hash state of a key before its inputs (see :func:`cache_key`)."""
    h = hashlib.sha256()
    for part in ("xlib-cache-1", tenant, pipeline, task, policy.version, params):
        h.update(part.encode() + b"\x1f")
    if policy.key_fn is None:
        h.update(policy.code.encode())
    return h


def cache_key(
    policy: CachePolicy,
    *,
    tenant: str | None,
    pipeline: str,
    task: str,
    args: tuple[Any, ...],
    params: str,
) -> str:
    """The entry key for one execution of a task: SHA-256 over the tenant, pipeline, task,
    ``cache_version`` and params (each ``\\x1f``-terminated), then the code fingerprint and
    the input fingerprint (``I`` + digest), or ``U`` + the digest of ``cache_key=``'s value.
    The state before the inputs is kept on the policy and copied (it is the same for every
    run of the plan under one tenant and params)."""
    at = (tenant or "", pipeline, task, params)
    prefixes = policy.prefixes
    base = prefixes.get(at)
    if base is None:
        if len(prefixes) >= _PREFIXES:
            prefixes.clear()
        base = prefixes[at] = _prefix(policy, *at)
    h = base.copy()
    if policy.key_fn is not None:
        try:
            user = policy.key_fn(*args)
        except Exception as exc:
            raise DefinitionError(
                f"task {task!r}: cache_key raised {type(exc).__name__}: {exc}", task=task
            ) from exc
        h.update(b"U" + _digest(user))
    else:
        try:
            h.update(b"I" + _digest(args))
        except Unhashable as exc:
            raise DefinitionError(
                f"task {task!r}: its inputs cannot be fingerprinted for the cache ({exc}); "
                "give cache_key= a function of the inputs returning a hashable value",
                task=task,
            ) from None
    key: str = h.hexdigest()
    return key


def cache_ref(key: str, pipeline: str, task: str, tenant: str | None) -> PayloadRef:
    """The payload reference (encryption AAD) of a cache entry: bound to its key and tenant."""
    return PayloadRef(run_id=key, pipeline=pipeline, task=task, tenant=tenant, kind="cache")


_PUT = "INSERT OR REPLACE INTO cache_entries VALUES (?, ?, ?, ?, ?, ?, ?, ?)"


class CacheStore:
    """The ``cache_entries`` table in the run store's SQLite file (own connection): the
    SQLite store's :class:`~._tables.CacheTable`.

    With ``writer`` (the run store), :meth:`put` queues the entry on the store's group
    commit instead of writing it on this connection: it is committed in the same
    transaction as the task's own row (the scheduler commits right after the task), or by
    the next commit, at the latest when the run ends. Reads through this table first commit
    the entries it queued, so a direct ``put`` is seen by the next ``get``.
    """

    def __init__(self, path: str | Path, writer: Any = None) -> None:
        self.path = str(path)
        self._writer = writer
        self._queued = False  # put() queued entries on the writer since the last read
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cache in {self.path!r}: {exc}", path=self.path) from exc

    def _settle(self) -> None:
        """Commit the entries :meth:`put` queued, before reading."""
        if self._queued:
            self._queued = False
            self._writer.flush()

    def get(self, key: str, tenant: str | None, now: float) -> tuple[bytes, str | None] | None:
        """The stored (encrypted) output under ``key`` for ``tenant``, unless expired."""
        self._settle()
        args = (key, tenant)
        row: Any = _MISSING
        if self._writer is not None:  # the store's warm connection, when no commit is on it
            row = self._writer.read_if_idle(lambda c: c.execute(_GET, args).fetchone(), _MISSING)
        if row is _MISSING:
            with self._lock:
                row = self._db.execute(_GET, args).fetchone()
        if row is None or (row[2] is not None and row[2] <= now):
            return None
        return bytes(row[0]), row[1]

    def put(
        self,
        key: str,
        *,
        tenant: str | None,
        pipeline: str,
        task: str,
        ttl: float | None,
        run_id: str,
        output: bytes,
    ) -> None:
        now = time.time()
        row = (key, tenant, pipeline, task, now, now + ttl if ttl else None, run_id, output)
        if self._writer is not None:
            self._writer.add(_PUT, row)
            self._queued = True
            return
        with self._lock, self._db:
            self._db.execute(_PUT, row)

    def _where(
        self, pipeline: str | None, task: str | None, older_than: float | None
    ) -> tuple[str, list[Any]]:
        clauses: list[str] = ["1=1"]
        args: list[Any] = []
        if pipeline is not None:
            clauses.append("pipeline = ?")
            args.append(pipeline)
        if task is not None:
            clauses.append("task = ?")
            args.append(task)
        if older_than is not None:
            clauses.append("created < ?")
            args.append(time.time() - older_than)
        return " AND ".join(clauses), args

    def list(
        self,
        pipeline: str | None = None,
        task: str | None = None,
        older_than: float | None = None,
    ) -> list[CacheEntry]:
        self._settle()
        where, args = self._where(pipeline, task, older_than)
        with self._lock:
            rows = self._db.execute(
                "SELECT key, tenant, pipeline, task, created, expires, run_id, length(output) "
                f"FROM cache_entries WHERE {where} ORDER BY created",
                args,
            ).fetchall()
        return [
            CacheEntry(
                key=r[0],
                tenant=r[1],
                pipeline=r[2],
                task=r[3],
                created=r[4],
                expires=r[5],
                run_id=r[6],
                size=r[7],
            )
            for r in rows
        ]

    def clear(
        self,
        pipeline: str | None = None,
        task: str | None = None,
        older_than: float | None = None,
    ) -> int:
        self._settle()
        where, args = self._where(pipeline, task, older_than)
        with self._lock, self._db:
            cur = self._db.execute(f"DELETE FROM cache_entries WHERE {where}", args)
        return cur.rowcount

    def close(self) -> None:
        try:
            self._settle()
        finally:
            with self._lock:
                self._db.close()


_stores: weakref.WeakKeyDictionary[Any, tuple[Any, CacheTable]] = weakref.WeakKeyDictionary()
_stores_lock = threading.Lock()


def cache_store_of(manager: Any, store: Any) -> CacheTable:
    """The manager's cache table in its run store ``store`` (opened once per store)."""
    with _stores_lock:
        found = _stores.get(manager)
        if found is None or found[0] is not store:
            table = open_cache(store)
            _stores[manager] = (store, table)
            weakref.finalize(manager, table.close)
            return table
        return found[1]


def refresh_indices(plan: Any, refresh: Any) -> bool | frozenset[int]:
    """``execute_pipeline(refresh=...)``: ``True``/``False``, or task names (checked)."""
    if isinstance(refresh, bool):
        return refresh
    if isinstance(refresh, str):
        refresh = [refresh]
    out = set()
    for name in refresh:
        i = plan.index.get(name)
        if i is None:
            from ._graph import suggest

            hint = suggest(str(name), plan.index)
            raise DefinitionError(
                f"refresh: pipeline {plan.pipeline_name!r} has no task {name!r}"
                + (f"; did you mean {hint!r}?" if hint else ""),
                task=str(name),
            )
        out.add(i)
    return frozenset(out)
