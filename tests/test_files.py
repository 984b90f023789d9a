"""xlib_pipeline.files: the one private-file check and the 0700 folder every plugin uses."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from xlib_pipeline import SecurityError
from xlib_pipeline.files import check_private_file, private_folder

posix = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


@posix
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o610, 0o601])
def test_a_file_others_may_read_is_refused_naming_it(tmp_path: Path, mode: int) -> None:
    f = tmp_path / "key"
    f.write_text("k")
    f.chmod(mode)
    with pytest.raises(SecurityError) as info:
        check_private_file(f, f.stat(), "audit key file")
    text = str(info.value)
    assert f"audit key file {str(f)!r}" in text
    assert stat.filemode(f.stat().st_mode) in text and f"chmod 600 {f}" in text


@posix
@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_an_owner_only_file_passes(tmp_path: Path, mode: int) -> None:
    f = tmp_path / "key"
    f.write_text("k")
    f.chmod(mode)
    check_private_file(f, f.stat(), "key file")


@posix
def test_private_folder_is_0700_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o000)
    try:
        private_folder(tmp_path / "a" / "b")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o700


@posix
def test_private_folder_leaves_an_existing_folder_alone(tmp_path: Path) -> None:
    d = tmp_path / "shared"
    d.mkdir()
    d.chmod(0o755)
    private_folder(d)
    assert stat.S_IMODE(d.stat().st_mode) == 0o755
