"""The first example of each feature page (fallbacks, contracts, resources, caching, the
lineage plugin) runs as written and prints what its comments say."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = ["fallbacks.md", "contracts.md", "resources.md", "caching.md", "plugins/lineage.md"]


def _blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S)


@pytest.mark.parametrize("page", [p for p in PAGES if (DOCS / p).exists()])
def test_page_starts_from_a_runnable_example(page: str, tmp_path: Path) -> None:
    text = (DOCS / page).read_text()
    first = text.index("```")
    assert text.startswith("```python", first), f"{page} must start from a Python example"
    code = _blocks(page)[0]
    (tmp_path / "example.py").write_text(code)
    env = {"XLIB_PIPELINE_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "example.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    printed = proc.stdout.splitlines()
    claims = [m.group(1).strip() for m in re.finditer(r"print\(.*\)\s+# (.*)", code)]
    assert len(printed) == len(claims), (printed, claims)
    for line, claim in zip(printed, claims):
        assert line.startswith(claim), (line, claim)
