"""An installed but unconfigured encryption plugin costs nothing per run or output and
changes nothing: none of its hooks is called per task, stored bytes are the core's own."""

from __future__ import annotations

import functools
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from xlib_pipeline_encryption import EncryptionPlugin
from xlib_pipeline_encryption import _plugin as encryption_plugin
from xlib_pipeline_encryption import _sealing as encryption_sealing

from xlib_pipeline import ENCRYPTED_MAGIC, Pipeline, PipelineManager

MARK = "xlib_pipeline_impl"  # the attribute @hookimpl sets


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Every hook method of the plugin (and of the objects it registers) counts its calls."""
    seen: Counter[str] = Counter()
    classes = [
        c
        for module in (encryption_plugin, encryption_sealing)
        for c in vars(module).values()
        if isinstance(c, type) and c.__module__ == module.__name__
    ]
    for cls in classes:
        for name, fn in list(vars(cls).items()):
            if callable(fn) and hasattr(fn, MARK):

                def counted(*args: Any, __fn: Any = fn, __name: str = name, **kw: Any) -> Any:
                    seen[__name] += 1
                    return __fn(*args, **kw)

                monkeypatch.setattr(cls, name, functools.wraps(fn)(counted))
    return seen


def chain(n: int, *, mark: bool = False) -> Pipeline:
    p = Pipeline(f"chain{n}")
    prev: list[str] = []
    for i in range(n):
        options = {"encrypt": True} if mark and i == 0 else {}
        p.add_task(
            f"t{i}", lambda *a, i=i: {"i": i, "rows": list(range(5))}, depends_on=prev, **options
        )
        prev = [f"t{i}"]
    return p


def stored(path: Path) -> dict[str, bytes]:
    with sqlite3.connect(path) as c:
        rows = c.execute("SELECT task, output FROM tasks WHERE output IS NOT NULL").fetchall()
    return {task: bytes(out) for task, out in rows}


def manager(tmp_path: Path, name: str, *plugins: object) -> PipelineManager:
    cfg = {"store": {"path": str(tmp_path / f"{name}.sqlite")}}
    return PipelineManager(cfg, entry_points=False, plugins=list(plugins))


def test_no_hook_is_called_per_task(tmp_path: Path, calls: Counter[str]) -> None:
    pm = manager(tmp_path, "runs", EncryptionPlugin())
    counts = []
    for n in (3, 30):
        before = Counter(calls)
        assert pm.execute_pipeline(chain(n)).success
        counts.append(calls - before)
    assert counts[0] == counts[1], counts  # nothing grows with the number of tasks
    assert not {"encrypt", "encrypt_stream", "before_pipeline", "after_pipeline"} & set(
        counts[1]
    ), counts


def test_results_and_stored_bytes_are_identical(tmp_path: Path) -> None:
    plain = manager(tmp_path, "plain")
    installed = manager(tmp_path, "installed", EncryptionPlugin())
    a, b = plain.execute_pipeline(chain(8)), installed.execute_pipeline(chain(8))
    assert {k: (t.status, t.output) for k, t in a.tasks.items()} == {
        k: (t.status, t.output) for k, t in b.tasks.items()
    }
    got, want = stored(tmp_path / "installed.sqlite"), stored(tmp_path / "plain.sqlite")
    assert got == want and len(got) == 8
    assert not any(v.startswith(ENCRYPTED_MAGIC) for v in got.values())


def test_a_marked_task_turns_sealing_on_once(tmp_path: Path, calls: Counter[str]) -> None:
    pm = manager(tmp_path, "runs", EncryptionPlugin())
    assert pm.execute_pipeline(chain(2)).success
    assert calls["encrypt"] == 0
    assert pm.execute_pipeline(chain(3, mark=True)).success
    out = stored(tmp_path / "runs.sqlite")
    assert out["t0"].startswith(ENCRYPTED_MAGIC)
    assert calls["encrypt"] >= 1
    # the marked pipeline's tasks are scanned once per pipeline version, not per run
    plugin = pm.get_plugin("encryption")
    assert plugin._sealing is not None
