"""Deferred outputs: what an executor leaves where it was computed, and what the core reads.

A plugin executor ("vault") keeps each output in a store of its own and returns a
:class:`DeferredOutput` handle unless the driver needs the value (the Dask plugin does the
same with cluster futures). The run result must still give values: fetched when read,
cached, several in one batch through ``result.tasks.outputs()``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest

from xlib_pipeline import (
    OUTPUTS_IN_DRIVER,
    DeferredOutput,
    ExecutorSpec,
    OutputUnavailableError,
    Pipeline,
    PipelineManager,
    call_body,
    hookimpl,
    outputs_read_in_driver,
)


class Vault:
    """Where the executor keeps outputs; counts fetches (one per batch)."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.batches: list[list[str]] = []
        self.lock = threading.Lock()
        self.open = True


class Handle(DeferredOutput):
    __slots__ = ("task", "vault")

    def __init__(self, task: str, vault: Vault) -> None:
        self.task = task
        self.vault = vault

    def fetch(self) -> Any:
        return self.fetch_many([self])[0]

    @classmethod
    def fetch_many(cls, items: Sequence[DeferredOutput]) -> list[Any]:
        handles = [i for i in items if isinstance(i, Handle)]
        vault = handles[0].vault
        if not vault.open:
            raise OutputUnavailableError(
                f"task {handles[0].task!r}: its vault is closed", task=handles[0].task
            )
        vault.batches.append([h.task for h in handles])
        return [vault.values[h.task] for h in handles]

    def __repr__(self) -> str:
        return f"Handle({self.task!r})"


class VaultExecutor:
    name = "vault"

    def __init__(self, vault: Vault) -> None:
        self.vault = vault

    def call(self, task, args, *, run, isolation, timeout):
        args = tuple(a.fetch() if isinstance(a, Handle) else a for a in args)
        out = call_body(task.name, task.fn, args, is_async=task.is_async)
        needed = run.stash.get(OUTPUTS_IN_DRIVER, True) or task.name in outputs_read_in_driver(run)
        if needed:
            return out
        with self.vault.lock:
            self.vault.values[task.name] = out
        return Handle(task.name, self.vault)

    def lanes(self) -> int | None:
        return None

    def close(self) -> None:
        self.vault.open = False


class VaultPlugin:
    name = "vault"

    def __init__(self) -> None:
        self.vault = Vault()
        self.seen: dict[str, Any] = {}
        self.needs: frozenset[str] = frozenset()

    @hookimpl
    def register_executors(self):
        return (ExecutorSpec(name="vault", factory=lambda manager: VaultExecutor(self.vault)),)

    @hookimpl
    def before_pipeline(self, run):
        self.needs = outputs_read_in_driver(run)

    @hookimpl
    def after_task(self, task, run, outcome):
        self.seen[task.name] = outcome.output


def _chain() -> Pipeline:
    p = Pipeline("chain")
    p.add_task("a", lambda: [1, 2])
    p.add_task("b", lambda a: [*a, 3], depends_on="a")
    p.add_task("c", lambda b: [*b, 4], depends_on="b")
    p.add_task("d", lambda c: sum(c), depends_on="c")
    return p


@pytest.fixture
def vault():
    plugin = VaultPlugin()
    with PipelineManager({}, plugins=[plugin], entry_points=False) as pm:
        yield pm, plugin


def test_outputs_are_fetched_when_read_and_cached(vault):
    pm, plugin = vault
    result = pm.execute_pipeline(_chain(), executor="vault")
    assert result.success, result.error
    assert isinstance(plugin.seen["b"], Handle)  # hooks saw the placeholder
    assert result.final_result == 10 and plugin.seen["d"] == 10  # a sink is a value
    b = result.tasks["b"]
    assert not b.output_fetched
    assert "output=Handle('b')" in repr(b)
    before = len(plugin.vault.batches)
    assert b.output == [1, 2, 3]
    assert b.output == [1, 2, 3] and b.output_fetched
    assert len(plugin.vault.batches) == before + 1  # one fetch, then the cache


def test_outputs_batches_what_is_still_deferred(vault):
    pm, plugin = vault
    result = pm.execute_pipeline(_chain(), executor="vault")
    assert result.tasks["a"].output == [1, 2]
    before = len(plugin.vault.batches)
    assert result.tasks.outputs() == {"a": [1, 2], "b": [1, 2, 3], "c": [1, 2, 3, 4], "d": 10}
    assert plugin.vault.batches[before:] == [["b", "c"]]  # one batch, "a" already cached
    assert result.tasks.outputs(["c"]) == {"c": [1, 2, 3, 4]}
    assert len(plugin.vault.batches) == before + 1


def test_a_task_without_an_output_is_left_out_of_outputs(vault):
    pm, _ = vault
    p = Pipeline("partial")
    p.add_task("a", lambda: 1)
    p.add_task("boom", lambda a: 1 / 0, depends_on="a")
    result = pm.execute_pipeline(p, executor="vault")
    assert not result.success
    assert result.tasks.outputs() == {"a": 1}


def test_a_gone_output_names_the_task_and_leaves_the_rest_readable():
    plugin = VaultPlugin()
    with PipelineManager({}, plugins=[plugin], entry_points=False) as pm:
        result = pm.execute_pipeline(_chain(), executor="vault")
    c = result.tasks["c"]
    assert c.succeeded and c.error is None and result.final_result == 10
    with pytest.raises(OutputUnavailableError) as info:
        _ = c.output
    assert info.value.task == "c" and "'c'" in str(info.value)
    assert not c.output_fetched


def test_outputs_read_in_driver_names_what_the_core_reads(vault):
    pm, plugin = vault
    p = Pipeline("needs")
    p.add_task("src", lambda: 1)
    p.add_task("plain", lambda s: s, depends_on="src")
    p.add_task("cond_in", lambda: 2)
    p.add_task("cond", lambda x: x, depends_on="cond_in", condition=lambda x: True)
    p.add_task("checked", lambda s: s, depends_on="plain", contract=int)
    p.add_task("in_checked", lambda c: c, depends_on="checked", input_contract=int)
    p.add_task("merge_in", lambda: 3)
    p.add_task(
        "merged",
        lambda *a, **k: 1,
        depends_on=["merge_in", "cond"],
        merge_strategy="collect_available",
    )
    p.add_task("sink", lambda a, b: (a, b), depends_on=["in_checked", "merged"])
    result = pm.execute_pipeline(p, executor="vault")
    assert result.success, result.error
    assert plugin.needs == {"cond_in", "checked", "merge_in", "cond", "sink"}
    assert isinstance(plugin.seen["plain"], Handle)
    assert result.tasks.outputs()["plain"] == 1  # deferred in the run, a value here


def test_the_inputs_of_a_fallback_are_read_in_driver(vault):
    pm, plugin = vault
    p = Pipeline("fallback")
    p.add_task("x", lambda: 1)
    p.add_task("y", lambda x: x, depends_on="x", fallback=0)
    p.add_task("z", lambda y: y, depends_on="y")
    p.add_task("w", lambda z: z, depends_on="z")
    result = pm.execute_pipeline(p, executor="vault")
    assert plugin.needs == {"x", "w"}
    assert result.final_result == 1 and result.tasks.outputs()["z"] == 1


def test_cached_tasks_read_their_inputs_and_outputs_in_driver(tmp_path):
    plugin = VaultPlugin()
    store = {"path": str(tmp_path / "runs.sqlite"), "record_outputs": False}
    with PipelineManager(
        {"cache": {"enabled": True}, "store": store}, plugins=[plugin], entry_points=False
    ) as pm:
        result = pm.execute_pipeline(_chain(), executor="vault")
        assert result.success, result.error
        assert plugin.needs == {"a", "b", "c", "d"}
        assert not any(isinstance(v, Handle) for v in plugin.seen.values())
        again = pm.execute_pipeline(_chain(), executor="vault")
        assert again.cached == ["a", "b", "c", "d"] and again.final_result == 10
