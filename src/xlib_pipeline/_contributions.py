"""What plugins contribute through the collector hooks: config keys, task and run options,
executors, stream connectors, manager decorators, render targets, CLI commands and evidence
sections (frozen records), and the installed plugins' descriptions."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import attrs

if TYPE_CHECKING:  # pragma: no cover
    import argparse

    from ._records import Isolation, RunContext
    from ._task import Task


# --- collector records ---------------------------------------------------------------------


def _identity(value: Any) -> Any:
    return value


@attrs.frozen(kw_only=True)
class ConfigKey:
    """A config key a plugin owns. ``name`` may be dotted (``"security.access_control"``).

    ``convert`` validates and converts the raw value (raise ``ValueError``/``TypeError`` with
    a message saying what was expected); ``default`` is used when the key is absent.
    """

    name: str
    convert: Callable[[Any], Any] = _identity
    default: Any = None
    doc: str = ""


@attrs.frozen(kw_only=True)
class TaskOption:
    """A keyword argument of ``@pipeline.task`` that a plugin owns."""

    name: str
    convert: Callable[[Any], Any] = _identity
    doc: str = ""


@attrs.frozen(kw_only=True)
class RunOption:
    """A keyword argument of ``execute_pipeline`` that a plugin owns."""

    name: str
    convert: Callable[[Any], Any] = _identity
    doc: str = ""


class Executor(Protocol):
    """Runs task function bodies. The scheduler owns ordering; an executor owns *where*.

    ``call`` blocks until the function returned (its value) or raised (re-raised here, a
    :class:`~xlib_pipeline.exceptions.TaskError` for remote failures carrying the remote
    traceback). ``lanes`` suggests how many tasks may run at once (``None``: config).
    """

    name: str

    def call(
        self,
        task: Task,
        args: tuple[Any, ...],
        *,
        run: RunContext,
        isolation: Isolation | None,
        timeout: float | None,
    ) -> Any: ...

    def lanes(self) -> int | None: ...

    def close(self) -> None: ...


@attrs.frozen(kw_only=True)
class ExecutorSpec:
    """An executor a plugin registers: ``factory(manager)`` builds it once per manager."""

    name: str
    factory: Callable[[Any], Executor]
    doc: str = ""


@attrs.frozen(kw_only=True)
class StreamConnector:
    """A stream source and/or sink a plugin registers under a URL ``scheme``.

    ``source(url, options)`` / ``sink(url, options)`` build one from a URL such as
    ``jsonl:payments.jsonl`` or ``redis://host:6379/stream?group=g`` (see
    :mod:`xlib_pipeline.streams` for the protocols they implement).
    """

    scheme: str
    source: Callable[[str, Mapping[str, Any]], Any] | None = None
    sink: Callable[[str, Mapping[str, Any]], Any] | None = None
    doc: str = ""

    @property
    def name(self) -> str:
        """The scheme (collector hooks merge records by name)."""
        return self.scheme


@attrs.frozen(kw_only=True)
class ManagerDecorator:
    """A ``pm.<name>(**kwargs)`` decorator factory: ``factory(manager, **kwargs)``."""

    name: str
    factory: Callable[..., Callable[[Callable[..., Any]], Callable[..., Any]]]
    doc: str = ""


@attrs.frozen(kw_only=True)
class RenderTarget:
    """A deployment render target: ``render(pipeline, manager, options) -> {filename: text}``."""

    name: str
    render: Callable[..., Mapping[str, str]]
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    doc: str = ""


@attrs.frozen(kw_only=True)
class CliCommand:
    """A sub-command of ``xlib-pipeline``: ``add_arguments(parser)``, then ``run(args) -> int``."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


@attrs.frozen(kw_only=True)
class EvidenceSection:
    """A plugin's answer to ``collect_evidence``: its facts about one run, by plugin name.

    ``facts`` is JSON data (signed into the run's attestation under ``name``); ``files``
    maps file names to the bytes an evidence pack should carry (``audit.jsonl``), given
    only when a pack is built.
    """

    name: str
    facts: Mapping[str, Any] = attrs.field(factory=dict)
    files: Mapping[str, bytes] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class PluginInfo:
    """An installed or registered plugin, as ``xlib-pipeline plugins`` lists it."""

    name: str
    dist: str | None
    version: str | None
    hooks: tuple[str, ...]
    builtin: bool = False


def flatten(items: Iterable[Iterable[Any]] | None) -> list[Any]:
    """Flatten the list of lists a collector hook returns."""
    out: list[Any] = []
    for chunk in items or ():
        if chunk:
            out.extend(chunk)
    return out
