"""An installed but unconfigured classification plugin costs nothing per task and does
not scan every task's options on every run (once per pipeline version)."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from xlib_pipeline_classification import ClassificationPlugin
from xlib_pipeline_classification import _plugin as classification_plugin

from xlib_pipeline import Pipeline, PipelineManager

MARK = "xlib_pipeline_impl"  # the attribute @hookimpl sets


class CountingOptions(Mapping[str, Any]):
    """A task's options that count every read (the core reads them once per version)."""

    reads = 0

    def __init__(self, inner: Mapping[str, Any]) -> None:
        self.inner = inner

    def __getitem__(self, key: str) -> Any:
        CountingOptions.reads += 1
        return self.inner[key]

    def __contains__(self, key: object) -> bool:
        CountingOptions.reads += 1
        return key in self.inner

    def get(self, key: str, default: Any = None) -> Any:
        CountingOptions.reads += 1
        return self.inner.get(key, default)

    def __iter__(self) -> Iterator[str]:
        CountingOptions.reads += 1
        return iter(self.inner)

    def __len__(self) -> int:
        return len(self.inner)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Every hook method of the plugin (and of the objects it registers) counts its calls."""
    seen: Counter[str] = Counter()
    for cls in [
        c
        for c in vars(classification_plugin).values()
        if isinstance(c, type) and c.__module__ == classification_plugin.__name__
    ]:
        for name, fn in list(vars(cls).items()):
            if callable(fn) and hasattr(fn, MARK):

                def counted(*args: Any, __fn: Any = fn, __name: str = name, **kw: Any) -> Any:
                    seen[__name] += 1
                    return __fn(*args, **kw)

                monkeypatch.setattr(cls, name, functools.wraps(fn)(counted))
    return seen


def chain(n: int) -> Pipeline:
    p = Pipeline(f"chain{n}")
    prev: list[str] = []
    for i in range(n):
        p.add_task(f"t{i}", lambda *a, i=i: {"i": i, "email": "a@b.example"}, depends_on=prev)
        prev = [f"t{i}"]
    return p


def test_no_hook_is_called_per_task(calls: Counter[str]) -> None:
    pm = PipelineManager(entry_points=False, plugins=[ClassificationPlugin()])
    counts = []
    for n in (3, 30):
        before = Counter(calls)
        assert pm.execute_pipeline(chain(n)).success
        counts.append(calls - before)
    assert counts[0] == counts[1], counts
    assert set(counts[1]) <= {"prepare_run"}, counts


def test_options_are_scanned_once_per_pipeline_version() -> None:
    pm = PipelineManager(entry_points=False, plugins=[ClassificationPlugin()])
    p = chain(20)
    CountingOptions.reads = 0
    for t in p.tasks.values():
        object.__setattr__(t, "options", CountingOptions(t.options))
    assert pm.execute_pipeline(p).success
    first = CountingOptions.reads
    for _ in range(3):
        assert pm.execute_pipeline(p).success
    assert CountingOptions.reads == first  # later runs read no task's options
    p.add_task("late", lambda *a: 1, depends_on=["t19"], classification="restricted")
    result = pm.execute_pipeline(p)  # a new version is scanned again: its level counts
    assert result.success
    assert pm.get_plugin("classification")._runtime is not None


def test_results_are_identical() -> None:
    plain = PipelineManager(entry_points=False)
    installed = PipelineManager(entry_points=False, plugins=[ClassificationPlugin()])
    a, b = plain.execute_pipeline(chain(8)), installed.execute_pipeline(chain(8))
    assert {k: (t.status, t.output) for k, t in a.tasks.items()} == {
        k: (t.status, t.output) for k, t in b.tasks.items()
    }
