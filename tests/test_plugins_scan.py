"""Plugins are found by reading ``*.dist-info/entry_points.txt`` directly (cold start):
the answer must be importlib.metadata's, on the real environment and on crafted folders."""

from __future__ import annotations

import importlib.metadata as md
import re
import sys
import zipfile
from pathlib import Path

import pytest

from xlib_pipeline import PipelineManager
from xlib_pipeline._entrypoints import entry_points
from xlib_pipeline.exceptions import PluginLoadError

GROUPS = ("xlib_pipeline", "console_scripts", "pytest11", "xlib_test_group")


def _norm(dist: str | None) -> str | None:
    """PEP 503 names: the scan names a distribution from its folder (``pygments``), its
    METADATA may spell it otherwise (``Pygments``)."""
    return None if dist is None else re.sub(r"[-_.]+", "-", dist).lower()


def _ours(group: str) -> list[tuple[str, str, str | None, str | None]]:
    return sorted((e.name, e.value, _norm(e.dist), e.version) for e in entry_points(group))


def _reference(group: str) -> list[tuple[str, str, str | None, str | None]]:
    return sorted(
        (
            e.name,
            e.value,
            _norm(e.dist.name) if e.dist else None,
            e.dist.version if e.dist else None,
        )
        for e in md.entry_points(group=group)
    )


def _dist(root: Path, folder: str, text: str | None, name: str = "", version: str = "") -> None:
    d = root / folder
    d.mkdir(parents=True)
    if text is not None:
        (d / "entry_points.txt").write_text(text)
    if name:
        (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


@pytest.mark.parametrize("group", GROUPS)
def test_the_installed_environment_reads_as_importlib_metadata_reads_it(group: str) -> None:
    assert _ours(group) == _reference(group)
    if group == "xlib_pipeline":  # not vacuous: every first-party plugin is there
        assert {"audit", "lineage", "tenancy"} <= {n for n, *_ in _ours(group)}


def test_crafted_folders_read_as_importlib_metadata_reads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    ep = "[xlib_test_group]\n# a comment\n\nalpha = pkg_a.mod:Plugin\nbeta=pkg_a:make [extra]\n"
    _dist(first, "Pkg_A-1.0.dist-info", ep, "Pkg-A", "1.0")
    # the same distribution again, later on sys.path (and spelled otherwise): shadowed
    _dist(
        second, "pkg.a-2.0.dist-info", "[xlib_test_group]\nalpha = other:Plugin\n", "pkg.a", "2.0"
    )
    _dist(second, "other_dist-3.1.dist-info", "[console_scripts]\nx = y:z\n", "other-dist", "3.1")
    # a version with a dash in the folder name: the name comes from METADATA
    _dist(
        second,
        "dashed-1.0-local.dist-info",
        "[xlib_test_group]\ngamma = g:G\n",
        "dashed",
        "1.0-local",
    )
    _dist(second, "old_style.egg-info", "[xlib_test_group]\ndelta = d:D\n", "old-style", "0.1")
    _dist(second, "no_entry_points-1.0.dist-info", None, "no-entry-points", "1.0")
    (second / "broken.egg-info").write_text("an egg-info file, not a folder")
    monkeypatch.setattr(sys, "path", [str(first), str(tmp_path / "missing"), str(second)])
    for group in ("xlib_test_group", "console_scripts"):
        assert _ours(group) == _reference(group)
    assert {n for n, *_ in _ours("xlib_test_group")} == {"alpha", "beta", "gamma", "delta"}


def test_a_zip_on_sys_path_is_read_through_importlib_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tmp_path / "plugins.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("zipped-1.0.dist-info/entry_points.txt", "[xlib_test_group]\nz = zz:Z\n")
        z.writestr("zipped-1.0.dist-info/METADATA", "Name: zipped\nVersion: 1.0\n")
    monkeypatch.setattr(sys, "path", [str(archive), *sys.path])
    assert ("z", "zz:Z", "zipped", "1.0") in _ours("xlib_test_group")
    assert _ours("xlib_test_group") == _reference("xlib_test_group")


def test_a_plugin_that_fails_to_load_is_named_with_its_distribution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _dist(
        tmp_path,
        "xlib_pipeline_broken-0.3.dist-info",
        "[xlib_pipeline]\nbroken = xlib_pipeline_broken_plugin:Plugin\n",
        "xlib-pipeline-broken",
        "0.3",
    )
    (tmp_path / "xlib_pipeline_broken_plugin.py").write_text("raise RuntimeError('no luck')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginLoadError) as err:
        PipelineManager({})
    assert err.value.dist == "xlib-pipeline-broken" and err.value.version == "0.3"
    assert "plugin 'broken' from xlib-pipeline-broken 0.3 failed to load" in str(err.value)
    assert "RuntimeError: no luck" in str(err.value)
    # disabled, it is not even imported
    assert PipelineManager({"plugins": {"disable": ["broken"]}}).has_plugin("audit")
