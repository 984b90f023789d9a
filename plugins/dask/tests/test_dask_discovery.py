"""The installed plugin is discovered through its entry point."""

from __future__ import annotations

from xlib_pipeline import PipelineManager


def test_listed_with_version_and_hooks(tmp_path, monkeypatch):
    """`xlib-pipeline plugins` would list dask with its distribution, version and hooks."""
    monkeypatch.setenv("XLIB_PIPELINE_HOME", str(tmp_path))
    info = next(i for i in PipelineManager().plugins if i.name == "dask")
    assert info.dist == "xlib-pipeline-dask" and info.version == "0.1.0"
    assert {"register_executors", "before_pipeline", "close"} <= set(info.hooks)
    assert "isolate" not in info.hooks and "before_task" not in info.hooks  # no per-task cost
