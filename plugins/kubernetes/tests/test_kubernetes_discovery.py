"""The installed plugin is discovered through its entry point."""

from __future__ import annotations

from xlib_pipeline import PipelineManager


def test_listed_with_version_and_hooks(tmp_path, monkeypatch):
    """The plugin is listed, registers its render target and worker command, adds no run hook."""
    monkeypatch.setenv("XLIB_PIPELINE_HOME", str(tmp_path))
    pm = PipelineManager()
    info = next(i for i in pm.plugins if i.name == "kubernetes")
    assert info.dist == "xlib-pipeline-kubernetes" and info.version == "0.1.0"
    assert "kubernetes" in pm.render_targets
    assert "worker" in pm.cli_commands
    run_hooks = {"before_task", "after_task", "isolate", "before_pipeline", "after_pipeline"}
    assert not run_hooks & set(info.hooks)
