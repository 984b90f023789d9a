"""The CLI's config layers: the file < ``XLIB_PIPELINE_*`` environment variables < flags."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import Any

from .._config_env import apply_env
from ..loading import load_config

#: The variable naming a config file when ``--config`` is not given.
CONFIG_ENV = "XLIB_PIPELINE_CONFIG"


def config_file(args: argparse.Namespace) -> str | None:
    """``--config``, else ``$XLIB_PIPELINE_CONFIG``."""
    given = getattr(args, "config", None)
    return given if given else (os.environ.get(CONFIG_ENV) or None)


def cli_config(
    args: argparse.Namespace, module: Any = None, *, base: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The config a command runs with: ``--config`` (or ``$XLIB_PIPELINE_CONFIG``), else
    ``base`` (a resumed run's stored config), else the pipeline file's ``PIPELINE_CONFIG``;
    then the environment's ``XLIB_PIPELINE_*`` overrides. Flags override both where the
    command passes them on (``--executor``, ``--max-workers`` ...)."""
    path = config_file(args)
    config = dict(base) if path is None and base else load_config(path, module)
    return apply_env(config)
