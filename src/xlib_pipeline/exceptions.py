"""The exception hierarchy. Every error raised by xlib-pipeline is a :class:`PipelineError`.

Errors carry structured attributes (``task``, ``key``, ``plugin`` ...) and their messages
name the culprit and say what was expected.
"""

from __future__ import annotations

from collections.abc import Sequence


class PipelineError(Exception):
    """Root of every error xlib-pipeline raises."""


# --- definitions and graph -------------------------------------------------------------------


class DefinitionError(PipelineError, ValueError):
    """A task or pipeline was declared with invalid arguments."""

    def __init__(self, message: str, *, task: str | None = None) -> None:
        super().__init__(message)
        self.task = task


class GraphError(PipelineError):
    """The pipeline's graph cannot run as declared."""


class EmptyPipelineError(GraphError):
    """The pipeline has no tasks."""

    def __init__(self, pipeline: str) -> None:
        super().__init__(f"pipeline {pipeline!r} has no tasks; add one with @pipeline.task(...)")
        self.pipeline = pipeline


class DuplicateTaskError(GraphError, DefinitionError):
    """Two tasks share a name."""

    def __init__(self, pipeline: str, task: str) -> None:
        GraphError.__init__(
            self, f"pipeline {pipeline!r} already has a task named {task!r}; task names are unique"
        )
        self.pipeline = pipeline
        self.task = task


class CycleError(GraphError):
    """The dependencies form a cycle; ``path`` lists it, first task repeated at the end."""

    def __init__(self, pipeline: str, path: Sequence[str]) -> None:
        self.pipeline = pipeline
        self.path = tuple(path)
        super().__init__(f"pipeline {pipeline!r} has a dependency cycle: {' -> '.join(self.path)}")


class UnknownDependencyError(GraphError):
    """A task depends on a name that is not a task of the pipeline."""

    def __init__(self, task: str, dependency: str, suggestion: str | None) -> None:
        self.task = task
        self.dependency = dependency
        self.suggestion = suggestion
        hint = f"; did you mean {suggestion!r}?" if suggestion else ""
        super().__init__(f"task {task!r} depends on unknown task {dependency!r}{hint}")


class ArityError(GraphError):
    """A task function cannot accept its upstream results as positional arguments."""

    def __init__(self, task: str, expected: int, signature: str, upstreams: Sequence[str]) -> None:
        self.task = task
        self.expected = expected
        self.upstreams = tuple(upstreams)
        names = ", ".join(self.upstreams) or "none"
        super().__init__(
            f"task {task!r}: function{signature} cannot take {expected} positional "
            f"argument(s), one per upstream in depends_on order ({names})"
        )


class UnknownTaskOptionError(DefinitionError):
    """A task uses an option no installed plugin owns."""

    def __init__(self, task: str, option: str, suggestion: str | None, package: str | None):
        self.option = option
        self.suggestion = suggestion
        self.package = package
        if package:
            hint = f"; it is provided by the plugin {package!r}: pip install {package}"
        elif suggestion:
            hint = f"; did you mean {suggestion!r}?"
        else:
            hint = "; no installed plugin owns it"
        super().__init__(f"task {task!r}: unknown task option {option!r}{hint}", task=task)


# --- configuration ------------------------------------------------------------------------------


class ConfigError(PipelineError, ValueError):
    """A configuration key or value is invalid. ``key`` is the dotted path."""

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        suggestion: str | None = None,
        package: str | None = None,
    ) -> None:
        super().__init__(message)
        self.key = key
        self.suggestion = suggestion
        self.package = package


# --- plugins -----------------------------------------------------------------------------------


class PluginError(PipelineError):
    """A plugin's hook raised; ``plugin`` and ``hook`` say which."""

    def __init__(self, message: str, *, plugin: str | None = None, hook: str | None = None):
        super().__init__(message)
        self.plugin = plugin
        self.hook = hook


class PluginLoadError(PluginError):
    """An installed plugin could not be imported or instantiated."""

    def __init__(self, name: str, dist: str | None, version: str | None, cause: BaseException):
        where = f" from {dist} {version}" if dist else ""
        super().__init__(
            f"plugin {name!r}{where} failed to load: {type(cause).__name__}: {cause}",
            plugin=name,
        )
        self.dist = dist
        self.version = version


class MissingPluginError(PluginError, AttributeError):
    """A feature needs a plugin distribution that is not installed (or is disabled)."""

    def __init__(self, feature: str, package: str) -> None:
        super().__init__(
            f"{feature} needs the plugin {package!r}, which is not installed or is disabled: "
            f"pip install {package}",
            plugin=package,
        )
        self.feature = feature
        self.package = package


class MissingPluginConfigError(MissingPluginError, ConfigError):  # type: ignore[misc]
    """A config key belongs to a plugin that is not installed; also a :class:`ConfigError`."""

    def __init__(self, key: str, package: str) -> None:
        MissingPluginError.__init__(self, f"config key {key!r}", package)
        self.key = key
        self.suggestion = None


# --- execution ----------------------------------------------------------------------------------


class TaskError(PipelineError):
    """A task failed. ``task`` names it; ``cause`` is the original exception (when local)."""

    def __init__(
        self,
        message: str,
        *,
        task: str,
        cause: BaseException | None = None,
        traceback: str | None = None,
    ) -> None:
        super().__init__(message)
        self.task = task
        self.cause = cause
        self.traceback = traceback


class TaskFailedError(TaskError):
    """The error a :class:`PipelineResult` reports for its first failed task."""


class TaskTimeoutError(TaskError, TimeoutError):
    """A task ran past its ``timeout``."""


class LazyResultError(TaskError, TypeError):
    """A plain (``def``) task returned a coroutine, generator or future instead of a value.

    The work it stands for never ran; declare the function ``async def`` (the scheduler then
    awaits it) or return the value itself.
    """


class ConditionError(TaskError):
    """A task's ``condition`` raised instead of returning a truth value."""


class SerializationError(TaskError):
    """A task's function, arguments or result cannot be sent to or from a worker process."""


class WorkerLostError(TaskError):
    """The worker process running a task died before it answered."""


class RemoteError(TaskError):
    """A task failed in a worker and its exception could not be rebuilt in the driver."""


class OutputUnavailableError(TaskError):
    """A task succeeded but its output, left where it was computed (a Dask cluster) because
    nothing in the driver needed it during the run, can no longer be fetched: the cluster
    was closed with the manager, or lost the data. ``task`` names the task."""


class ResourceLimitExceeded(TaskError):
    """A task broke a resource limit (memory, CPU time, wall time) of its tenant."""

    def __init__(
        self,
        message: str,
        *,
        task: str,
        tenant: str | None = None,
        limit: str | None = None,
        cause: BaseException | None = None,
        traceback: str | None = None,
    ) -> None:
        super().__init__(message, task=task, cause=cause, traceback=traceback)
        self.tenant = tenant
        self.limit = limit


class FallbackError(TaskError):
    """A task's fallback itself failed (its callable raised, or its fallback task did not
    produce an output). ``cause`` is the fallback's error; ``original`` the failure it was
    meant to replace."""

    def __init__(
        self,
        message: str,
        *,
        task: str,
        cause: BaseException | None = None,
        original: BaseException | None = None,
    ) -> None:
        super().__init__(message, task=task, cause=cause)
        self.original = original


class ContractError(TaskError):
    """A task's output (``contract=``) or inputs (``input_contract=``) broke its contract.

    ``where`` is ``"output"`` or ``"input N"``; ``location`` the first failing field, row or
    column; ``redacted`` says the failing value was left out because the data is
    classified above ``internal``.
    """

    def __init__(
        self,
        message: str,
        *,
        task: str,
        where: str = "output",
        location: str | None = None,
        redacted: bool = False,
        cause: BaseException | None = None,
    ) -> None:
        super().__init__(message, task=task, cause=cause)
        self.where = where
        self.location = location
        self.redacted = redacted


class MissingExtraError(PipelineError, ImportError):
    """A feature needs an optional dependency of the core that is not installed; the message
    names the extra to install (``pip install 'xlib-pipeline[contracts]'``)."""

    def __init__(self, feature: str, module: str, extra: str) -> None:
        super().__init__(
            f"{feature} needs {module}, which is not installed: "
            f"pip install 'xlib-pipeline[{extra}]'"
        )
        self.feature = feature
        self.module = module
        self.extra = extra


class ResourceError(PipelineError, ValueError):
    """A task's ``resources=`` cannot be met: it needs more than the whole budget, or
    names a resource the budget does not have. Raised before the run starts."""


class RunCancelledError(PipelineError):
    """The run was cancelled before it finished."""


# --- security and compliance (raised by plugins and by user code) -------------------------------


class SecurityError(PipelineError):
    """An action is not permitted (access control, key or tenant mismatch)."""


class DataShreddedError(SecurityError):
    """The data was crypto-shredded on purpose (GDPR Art. 17 erasure): the keys that could
    decrypt it were destroyed, so it can never be read again. Digests of it may remain."""


class ComplianceError(PipelineError):
    """A compliance policy refuses a pipeline, a flow of data or an action."""


class StoreError(PipelineError):
    """The run store cannot be opened, read or written; ``path`` names the file."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class RunLeasedError(StoreError):
    """The run is being executed by another live process (it holds the run's lease)."""


class ResumeError(StoreError):
    """A run cannot be resumed as asked (unknown run, other pipeline, changed structure)."""


# --- command line -------------------------------------------------------------------------------


class StreamError(PipelineError):
    """A stream cannot go on: a source, sink or checkpoint problem (named in the message).

    Everything committed before it stays committed; restarting the stream continues
    after the last checkpoint.
    """


class Unhashable(Exception):
    """Inside the result cache only: a value could be neither canonically hashed nor
    pickled. The cache turns it into a :class:`DefinitionError` naming the task."""


class UsageError(PipelineError):
    """Bad command-line or file input: a pipeline file, a name, a config file (exit code 2)."""


# --- warnings -----------------------------------------------------------------------------------


class XlibPipelineWarning(UserWarning):
    """Base class of the warnings xlib-pipeline issues."""


class SettingWithoutEffectWarning(XlibPipelineWarning):
    """A setting cannot take effect as configured (say, encryption at rest with
    ``store: false``: nothing is stored, so nothing is encrypted). Issued once per manager
    and setting; the message names the key and what to change."""
