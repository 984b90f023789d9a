"""Loading what the command line and plugins' commands work on: pipeline files, config
files and the run store.

Public, so a plugin's CLI command (``keys rotate``, ``worker``) loads exactly as the
built-in ``xlib-pipeline run`` does::

    from xlib_pipeline.loading import load_config, load_pipeline, open_store

    pipeline, module = load_pipeline("etl.py:daily")
    config = with_store(load_config(None, module), None)
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from ._config import data_dir, read_mapping_file
from ._graph import suggest
from ._store import RunStore
from ._task import Pipeline
from .exceptions import UsageError

__all__ = [
    "CONFIG_ATTR",
    "default_store_path",
    "is_store_url",
    "load_config",
    "load_module",
    "load_pipeline",
    "open_store",
    "with_store",
]

#: Module attribute a pipeline file may define to configure ``xlib-pipeline run``.
CONFIG_ATTR = "PIPELINE_CONFIG"


def load_module(path: str | os.PathLike[str]) -> Any:
    """Import a Python file as a module whose functions workers receive by value."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"pipeline file {str(file)!r} does not exist")
    name = "xlib_pipeline_user_" + "".join(c if c.isalnum() else "_" for c in file.stem)
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise UsageError(f"pipeline file {str(file)!r} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    folder = str(file.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        sys.modules.pop(name, None)
        where = f"line {exc.lineno}" if exc.lineno else "somewhere"
        raise UsageError(
            f"pipeline file {str(file)!r} has a syntax error at {where}: {exc.msg}"
        ) from exc
    except Exception as exc:  # ImportError, NameError ... raised while importing the file
        sys.modules.pop(name, None)
        line = _user_line(exc, file)
        raise UsageError(
            f"pipeline file {str(file)!r} failed to import"
            + (f" (line {line})" if line else "")
            + f": {type(exc).__name__}: {exc}"
        ) from exc
    try:
        import cloudpickle

        cloudpickle.register_pickle_by_value(module)
    except Exception:  # pragma: no cover - older cloudpickle
        pass
    return module


def _user_line(exc: BaseException, file: Path) -> int | None:
    """The line of ``file`` where ``exc`` was raised (the innermost frame in that file)."""
    import traceback

    found = None
    for frame in traceback.extract_tb(exc.__traceback__):
        try:
            if Path(frame.filename).resolve() == file.resolve():
                found = frame.lineno
        except OSError:
            continue
    return found


def load_pipeline(target: str) -> tuple[Pipeline, Any]:
    """Resolve ``FILE[:NAME]`` to a pipeline; NAME is a Pipeline or a zero-argument factory."""
    file, _, name = target.partition(":")
    if not name and ":" in target[2:]:  # Windows drive letters
        file, _, name = target.rpartition(":")
    module = load_module(file)
    if name:
        if not hasattr(module, name):
            found = [k for k, v in vars(module).items() if _is_candidate(v)]
            hint = suggest(name, found)
            raise UsageError(
                f"{file}: no attribute {name!r}"
                + (f"; did you mean {hint!r}?" if hint else "")
                + (f" (pipelines and factories: {', '.join(found)})" if found else "")
            )
        obj = getattr(module, name)
        if isinstance(obj, Pipeline):
            return obj, module
        if callable(obj):
            built = obj()
            if isinstance(built, Pipeline):
                return built, module
            raise UsageError(f"{file}:{name} returned {type(built).__name__}, expected a Pipeline")
        raise UsageError(f"{file}:{name} is a {type(obj).__name__}, expected a Pipeline")
    pipelines = [v for v in vars(module).values() if isinstance(v, Pipeline)]
    unique = list({id(p): p for p in pipelines}.values())
    if len(unique) == 1:
        return unique[0], module
    names = [k for k, v in vars(module).items() if _is_candidate(v)]
    if not unique:
        raise UsageError(
            f"{file}: no module-level Pipeline found; name a pipeline or factory with "
            f"{file}:NAME" + (f" (candidates: {', '.join(names)})" if names else "")
        )
    raise UsageError(f"{file}: several pipelines ({', '.join(names)}); choose with {file}:NAME")


def _is_candidate(value: Any) -> bool:
    if isinstance(value, Pipeline):
        return True
    if isinstance(value, type):
        return False
    return callable(value) and "pipeline" in getattr(value, "__name__", "").lower()


def load_config(path: str | None, module: Any = None) -> dict[str, Any]:
    """Read ``--config`` (JSON, TOML or YAML) or the file's ``PIPELINE_CONFIG`` dict."""
    if path is None:
        found = getattr(module, CONFIG_ATTR, None) if module is not None else None
        return dict(found or {})
    try:
        return read_mapping_file(path)
    except ValueError as exc:
        raise UsageError(f"config {exc}") from exc


def default_store_path() -> Path:
    """Where the CLI records runs unless ``--store`` says otherwise."""
    return data_dir() / "runs.sqlite"


def with_store(config: dict[str, Any], store: str | os.PathLike[str] | None) -> dict[str, Any]:
    """``config`` recording into ``store``, or into its own store, or the default one
    (``store: true`` or no ``store`` key); ``store: false`` is kept (nothing recorded)."""
    section = config.get("store")
    if store is not None or section is None or section is True:
        base = section if isinstance(section, dict) else {}
        if store is not None and is_store_url(store):
            base = {k: v for k, v in base.items() if k != "path"}
            return {**config, "store": {**base, "url": str(store)}}
        if store is not None:
            base = {k: v for k, v in base.items() if k not in ("url", "pool")}
        config = {**config, "store": {**base, "path": str(store or default_store_path())}}
    return config


def is_store_url(store: str | os.PathLike[str]) -> bool:
    """Whether ``store`` names a server store by URL (``postgresql://...``), not a file."""
    return isinstance(store, str) and "://" in store and not store.startswith("file:")


def open_store(path: str | os.PathLike[str] | None = None, *, create: bool = False) -> RunStore:
    """Open the run store at ``path`` (default: :func:`default_store_path`) for reading.

    A missing file is a :class:`~xlib_pipeline.exceptions.StoreError` naming it unless
    ``create``. Close the store when done; reads of its data go through
    :meth:`~xlib_pipeline.PipelineManager.check_access`.
    """
    if path is not None and is_store_url(path):
        from ._manager import PipelineManager

        # The manager finds the plugin serving the URL's scheme; the store outlives it.
        store: RunStore | None = PipelineManager({"store": {"url": str(path)}}).store
        assert store is not None
        return store
    return RunStore(Path(path) if path is not None else default_store_path(), create=create)
