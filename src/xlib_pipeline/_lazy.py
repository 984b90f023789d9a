"""``lazy_exports``: a package's public names, each imported from its module on first use.

Entry points import every installed plugin's package on every ``PipelineManager()``, and
``import xlib_pipeline`` is the first line of every program and of the CLI. A package that
imports all its modules up front makes each of them pay for what it never uses (attrs
classes, the engine, cryptography). PEP 562 lets a package defer that: this module holds the
one implementation the core and every plugin share.

This module imports only the standard library's ``importlib`` and ``sys``: it is loaded by
``import xlib_pipeline`` itself.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``(__getattr__, __dir__)`` pair of a package whose names load on first access.

    ``package`` is the package's ``__name__``; ``exports`` maps each lazily exported name to
    the module that defines it, relative to the package (``"._settings"``) or absolute
    (``"xlib_pipeline"``). The first access of a name (``pkg.Name``, ``from pkg import
    Name``) imports its module and stores the value in the package, so later accesses are
    plain attribute reads. ``dir(pkg)`` lists the lazy names beside the loaded ones::

        # at the end of the package's __init__.py
        if TYPE_CHECKING:  # type checkers and IDEs see the names
            from ._settings import AuditSettings
        else:  # hidden from mypy, which would take any misspelt name for a lazy one
            __getattr__, __dir__ = lazy_exports(__name__, {"AuditSettings": "._settings"})

    A name the table does not hold raises the usual ``AttributeError``; a table entry whose
    module lacks the name raises an ``AttributeError`` naming the package, the name and the
    module (``from pkg import Name`` turns it into an ``ImportError``).
    """
    if not isinstance(package, str) or not package:
        raise TypeError(f"lazy_exports: package must be a module name, got {package!r}")
    table = dict(exports)
    for name, module in table.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(
                f"lazy_exports({package!r}): export {name!r} is not a Python identifier"
            )
        if not isinstance(module, str) or not module.strip("."):
            raise ValueError(
                f"lazy_exports({package!r}): export {name!r} must name a module such as "
                f"'._module' or 'package.module', got {module!r}"
            )

    def __getattr__(name: str) -> Any:
        module_name = table.get(name)
        if module_name is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(module_name, package)
        if module is sys.modules.get(package):
            raise AttributeError(f"module {package!r} exports {name!r} from itself")
        try:
            value = getattr(module, name)
        except AttributeError:
            raise AttributeError(
                f"module {package!r} exports {name!r} from {module.__name__!r}, which does "
                f"not define it"
            ) from None
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | table.keys())

    return __getattr__, __dir__
