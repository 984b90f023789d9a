"""xlib-pipeline: decorate functions into a pipeline, run it in parallel, audit everything.

>>> from xlib_pipeline import Pipeline, PipelineManager
>>> p = Pipeline("hello")
>>> @p.task("greet")
... def greet():
...     return "hello"
>>> PipelineManager(entry_points=False).execute_pipeline(p).final_result
'hello'
"""

from __future__ import annotations

from ._async import call_body, is_async_callable
from ._builtin import ENCRYPTED_MAGIC
from ._config import (
    Config,
    CoreConfig,
    boolean,
    check_keys,
    data_dir,
    number,
    one_of,
    read_mapping_file,
    seconds,
)
from ._executors import call_with_timeout, remote_traceback
from ._graph import Plan, plan
from ._manager import PipelineManager
from ._records import (
    CliCommand,
    ConfigKey,
    Executor,
    ExecutorSpec,
    Isolation,
    ManagerDecorator,
    PayloadRef,
    PluginInfo,
    RenderTarget,
    ResourceLimits,
    RetryDecision,
    RunContext,
    RunOption,
    Status,
    TaskOption,
    TaskOutcome,
    check_tenant_id,
    tenant_id_pattern,
)
from ._results import PipelineResult, TaskResult
from ._task import CallObserver, Pipeline, Task, observe_direct_calls, task_options, with_options
from .exceptions import (
    ArityError,
    ComplianceError,
    ConditionError,
    ConfigError,
    CycleError,
    DefinitionError,
    DuplicateTaskError,
    EmptyPipelineError,
    GraphError,
    LazyResultError,
    MissingPluginConfigError,
    MissingPluginError,
    PipelineError,
    PluginError,
    PluginLoadError,
    ResourceLimitExceeded,
    RunCancelledError,
    SecurityError,
    SerializationError,
    SettingWithoutEffectWarning,
    StoreError,
    TaskError,
    TaskFailedError,
    TaskTimeoutError,
    UnknownDependencyError,
    UnknownTaskOptionError,
    WorkerLostError,
    XlibPipelineWarning,
)
from .hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = [
    "ENCRYPTED_MAGIC",
    "ArityError",
    "CallObserver",
    "CliCommand",
    "ComplianceError",
    "ConditionError",
    "Config",
    "ConfigError",
    "ConfigKey",
    "CoreConfig",
    "CycleError",
    "DefinitionError",
    "DuplicateTaskError",
    "EmptyPipelineError",
    "Executor",
    "ExecutorSpec",
    "GraphError",
    "Isolation",
    "LazyResultError",
    "ManagerDecorator",
    "MissingPluginConfigError",
    "MissingPluginError",
    "PayloadRef",
    "Pipeline",
    "PipelineError",
    "PipelineManager",
    "PipelineResult",
    "Plan",
    "PluginError",
    "PluginInfo",
    "PluginLoadError",
    "RenderTarget",
    "ResourceLimitExceeded",
    "ResourceLimits",
    "RetryDecision",
    "RunCancelledError",
    "RunContext",
    "RunOption",
    "SecurityError",
    "SerializationError",
    "SettingWithoutEffectWarning",
    "Status",
    "StoreError",
    "Task",
    "TaskError",
    "TaskFailedError",
    "TaskOption",
    "TaskOutcome",
    "TaskResult",
    "TaskTimeoutError",
    "UnknownDependencyError",
    "UnknownTaskOptionError",
    "WorkerLostError",
    "XlibPipelineWarning",
    "__version__",
    "boolean",
    "call_body",
    "call_with_timeout",
    "check_keys",
    "check_tenant_id",
    "data_dir",
    "hookimpl",
    "is_async_callable",
    "number",
    "observe_direct_calls",
    "one_of",
    "plan",
    "read_mapping_file",
    "remote_traceback",
    "seconds",
    "task_options",
    "tenant_id_pattern",
    "with_options",
]
