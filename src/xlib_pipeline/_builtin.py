"""The core's own defaults, registered like any plugin (``trylast`` where they provide)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ._config import CORE_KEYS, boolean, seconds
from ._executors import LocalExecutor, ProcessExecutor
from ._records import ConfigKey, ExecutorSpec, PayloadRef, TaskOption, check_tenant_id
from .exceptions import MissingPluginError
from .hookspecs import hookimpl

#: Prefix of every ciphertext the encryption plugin writes (versioned header follows).
ENCRYPTED_MAGIC = b"XLPENC"


_timeout = seconds(positive=True, what="timeout")


def _tenant(value: Any) -> str:
    return check_tenant_id(value)


class CorePlugin:
    """Config keys, task options, executors and the pass-through payload codec."""

    name = "core"

    @hookimpl
    def register_config_keys(self) -> Iterable[ConfigKey]:
        return CORE_KEYS

    @hookimpl
    def register_task_options(self) -> Iterable[TaskOption]:
        return (
            TaskOption(
                name="timeout",
                convert=_timeout,
                doc="Seconds a task may run; past it the task fails as timed out.",
            ),
            TaskOption(
                name="freeze_inputs",
                convert=boolean,
                doc="Pass this task deep copies of its inputs (see config freeze_inputs).",
            ),
            TaskOption(
                name="tenant_id",
                convert=_tenant,
                doc="The tenant a task runs for (audit, encryption keys, isolation).",
            ),
        )

    @hookimpl
    def register_executors(self) -> Iterable[ExecutorSpec]:
        return (
            ExecutorSpec(
                name="inline",
                factory=lambda manager: LocalExecutor("inline"),
                doc="Every task in the calling thread, one at a time (parallel=False).",
            ),
            ExecutorSpec(
                name="threads",
                factory=lambda manager: LocalExecutor("threads"),
                doc="Tasks on max_workers threads of the driver process (parallel=True).",
            ),
            ExecutorSpec(
                name="processes",
                factory=ProcessExecutor,
                doc="Tasks in warm worker processes (fresh interpreters; cloudpickle).",
            ),
        )

    @hookimpl(trylast=True)
    def encrypt(self, data: bytes, ref: PayloadRef) -> bytes | None:
        return data

    @hookimpl(trylast=True)
    def decrypt(self, data: bytes, ref: PayloadRef) -> bytes | None:
        if data.startswith(ENCRYPTED_MAGIC):
            raise MissingPluginError(
                f"decrypting the stored output of task {ref.task!r} (run {ref.run_id})",
                "xlib-pipeline-encryption",
            )
        return data
