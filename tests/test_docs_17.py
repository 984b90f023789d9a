"""The runnable examples of docs/task-context.md and docs/logging.md run and print what
their comments say."""

from __future__ import annotations

import contextlib
import io
import logging
import re
from pathlib import Path

import pytest
import structlog

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def blocks(page: str) -> list[str]:
    return BLOCK.findall((DOCS / page).read_text())


def expected(code: str) -> list[str]:
    """Comment lines right after a ``print(...)`` (or on its line) are its output."""
    out: list[str] = []
    lines = code.splitlines()
    for k, line in enumerate(lines):
        if "print(" not in line:
            continue
        if "#" in line.split("print(", 1)[1]:
            out.append(line.rsplit("#", 1)[1].strip())
        j = k + 1
        while j < len(lines) and lines[j].strip().startswith("# "):
            out.append(lines[j].strip()[2:])
            j += 1
    return out


CASES = [
    (page, i, code)
    for page in ("task-context.md", "logging.md")
    for i, code in enumerate(blocks(page))
    if "PipelineManager" in code
]


@pytest.mark.parametrize(("page", "index", "code"), CASES, ids=lambda v: str(v)[:20])
def test_example_runs_and_prints_what_it_says(page, index, code):
    buf = io.StringIO()
    logger = logging.getLogger("xlib_pipeline")
    handlers, level = list(logger.handlers), logger.level
    try:
        with contextlib.redirect_stdout(buf):
            exec(compile(code, f"{page}[{index}]", "exec"), {"__name__": "__doc_example__"})
    finally:
        structlog.reset_defaults()
        logger.handlers[:] = handlers
        logger.setLevel(level)
    printed = buf.getvalue()
    wanted = expected(code)
    assert wanted, f"{page} block {index} shows no output to check"
    for line in wanted:
        assert line in printed, (line, printed)


def test_the_pages_are_linked_from_the_index():
    index = (DOCS / "index.md").read_text()
    assert "task-context.md" in index and "logging.md" in index
