"""Where the key file is, and its stamp (path, mtime, size): a changed file is re-read."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Environment variable naming the folder of the embedded default key file.
KEYS_DIR_ENV = "XLIB_PIPELINE_KEYS_DIR"
DEFAULT_KEY_FILE = "master-keys.json"


def default_key_dir() -> Path:
    """Where the embedded default key file lives: ``$XLIB_PIPELINE_KEYS_DIR``, else
    ``$XDG_CONFIG_HOME/xlib-pipeline/keys``, else ``~/.config/xlib-pipeline/keys``."""
    env = os.environ.get(KEYS_DIR_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".config"
    return base / "xlib-pipeline" / "keys"


#: The key file's path by what it is derived from (the spec's file or the default folder's
#: environment variables, and HOME for ``~``): ``kms()`` stamps the file before every run
#: (a rotated key file is re-read), and building the path with pathlib cost more than the
#: ``stat`` itself (a stream checks it once per micro-batch). Bounded.
_KEY_PATHS: dict[tuple[str | None, ...], str] = {}


def _key_path(spec: Any) -> str:
    env = os.environ
    file = spec["file"] if spec is not None else None
    key = (file, env.get(KEYS_DIR_ENV), env.get("XDG_CONFIG_HOME"), env.get("HOME"))
    path = _KEY_PATHS.get(key)
    if path is None:
        if len(_KEY_PATHS) >= 64:
            _KEY_PATHS.clear()
        found = default_key_dir() / DEFAULT_KEY_FILE if file is None else Path(file).expanduser()
        path = _KEY_PATHS[key] = str(found)
    return path


def key_file_stamp(spec: Any) -> Any:
    if spec is None or (isinstance(spec, Mapping) and "file" in spec):
        path = _key_path(spec)
    elif isinstance(spec, Mapping) and "env" in spec:
        return ("env", os.environ.get(spec["env"]))
    else:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return ("missing", path)
    return (path, st.st_mtime_ns, st.st_size)
