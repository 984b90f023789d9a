"""Every example in docs/monitoring.md and docs/troubleshooting.md is real output.

A page marks its blocks with HTML comments, and they run in order in one empty folder:

* ``<!-- file: NAME -->`` before a code block: the block is written to ``NAME``;
* ``<!-- run: NAME -->`` before a ``python`` block: ``python NAME`` runs it, and the next
  block, marked ``<!-- output: NAME -->``, is what it prints (stdout, then stderr);
* ``<!-- shell -->`` before a ``console`` block: each ``$ command`` line runs in ``bash``;
  the lines under it are its output (stdout then stderr), and ``# exit N`` states a non-zero
  exit code. The last ``run_id: ...`` a command printed is ``$RUN_ID`` for the commands
  after it.

Output is compared after replacing what changes from run to run: run ids become
``<run-id>`` (a stream's lineage run, a uuid4, too), times ``<time>``, durations
``<seconds>``, the monitor's achieved parallelism ``<ratio>``, a stream's average records per
second ``<rate>``, ports ``<port>``, temporary paths ``<tmp>``. A doc that no longer
matches what the code prints fails here.

After a deliberate change of output (a CLI message, a table), regenerate a page's examples
from real runs and review the diff: ``python tests/test_docs_examples.py docs/PAGE.md``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [p for p in ("monitoring.md", "troubleshooting.md") if (REPO / "docs" / p).exists()]

_BLOCK = re.compile(r"<!-- (file|run|output|shell)(?:: ([^ ]+))? -->\n```[a-z]*\n(.*?)```", re.S)
_SUBS = [
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[47][0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}"), "<run-id>"),
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}(?:-[0-9a-f]{1,4})?\b"), "<run-id>"),
    (
        re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d(?::\d\d(?:[.,]\d+)?)?(?:Z|[+-]\d\d:\d\d)?"),
        "<time>",
    ),
    (re.compile(r"duration=\d+\.\d+"), "duration=<seconds>"),
    (re.compile(r"(?<=│ )\d+\.\d{3}(?= +│)"), "<seconds>"),
    (re.compile(r"\b1[7-9]\d{8}(?:\.\d+)?\b|\b1\.[7-9]\d*e\+09\b"), "<time>"),
    (re.compile(r"\b\d+\.\d+(?:e-\d+)?(?= ?s\b|s;|s,|s\))"), "<seconds>"),
    (re.compile(r"(?<=parallelism )\d+\.\d+(?=x)"), "<ratio>"),
    (re.compile(r"(?<=average )[\d,]+(?= records/s)"), "<rate>"),
    (re.compile(r"(127\.0\.0\.1|localhost):\d+"), r"\1:<port>"),
]


def normalize(text: str, tmp: Path) -> str:
    text = text.replace(str(tmp), "<tmp>")
    for pattern, repl in _SUBS:
        text = pattern.sub(repl, text)
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["XLIB_PIPELINE_HOME"] = str(tmp / "home")
    env["XLIB_PIPELINE_KEYS_DIR"] = str(tmp / "keys")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["COLUMNS"] = "100"
    env["PYTHONHASHSEED"] = "0"
    return env


def _blocks(page: str) -> list[tuple[str, str | None, str]]:
    text = (REPO / "docs" / page).read_text()
    return [(m.group(1), m.group(2), m.group(3)) for m in _BLOCK.finditer(text)]


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_examples_are_real_output(page: str, tmp_path: Path) -> None:
    blocks = _blocks(page)
    assert blocks, f"docs/{page} has no checked examples"
    env = _env(tmp_path)
    produced: dict[str, str] = {}
    checked = 0
    for kind, name, body in blocks:
        if kind == "file":
            assert name
            (tmp_path / name).write_text(body)
        elif kind == "run":
            assert name
            (tmp_path / name).write_text(body)
            proc = subprocess.run(
                [sys.executable, name],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            produced[name] = proc.stdout + proc.stderr
            assert proc.returncode == 0, f"{page}: {name} failed:\n{proc.stderr}"
        elif kind == "output":
            assert name in produced, f"{page}: output {name!r} before its run block"
            assert normalize(produced[name], tmp_path) == normalize(body, tmp_path), (
                f"docs/{page}: the output of {name} changed; it prints:\n{produced[name]}"
            )
            checked += 1
        else:
            checked += _shell(page, body, tmp_path, env)
    assert checked, f"docs/{page}: no output is checked"


def _shell(page: str, body: str, tmp: Path, env: dict[str, str]) -> int:
    """Run a console block; ``env`` is updated with ``RUN_ID`` for later blocks."""
    commands: list[tuple[str, list[str]]] = []
    for line in body.splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], []))
        else:
            assert commands, f"{page}: console block must start with '$ '"
            commands[-1][1].append(line)
    for command, expected in commands:
        code = 0
        if expected and expected[-1].startswith("# exit "):
            code = int(expected.pop()[len("# exit ") :])
        proc = subprocess.run(
            ["bash", "-c", command], cwd=tmp, env=env, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == code, (
            f"{page}: `{command}` exited {proc.returncode}, doc says {code}:\n"
            f"{proc.stdout}{proc.stderr}"
        )
        m = re.search(r"^run_id: (\S+)$", proc.stdout, re.M)
        if m:
            env["RUN_ID"] = m.group(1)
        got = normalize(proc.stdout + proc.stderr, tmp)
        assert got == normalize("\n".join(expected), tmp), (
            f"docs/{page}: the output of `{command}` changed; it prints:\n"
            f"{proc.stdout}{proc.stderr}"
        )
    return len(commands)


def test_normalize_replaces_what_changes() -> None:
    tmp = Path("/tmp/x")
    text = (
        "run 01a2349d-17df-76ae-a99a-0a47bebd51b1 at 2026-12-02T02:41:03.123Z in 0.25s; "
        "port 127.0.0.1:40123 /tmp/x/home 1796179040.2231927; parallelism 0.82x; "
        "'run': '12ce4847-ee57-43b9-ae6e-c3b7e427b260'; average 1,246 records/s"
    )
    assert normalize(text, tmp) == (
        "run <run-id> at <time> in <seconds>s; port 127.0.0.1:<port> <tmp>/home <time>; "
        "parallelism <ratio>x; 'run': '<run-id>'; average <rate> records/s"
    )


def regenerate(page: str) -> None:
    """Rewrite every output of ``docs/<page>`` with what the code prints now (temporary
    paths become ``<tmp>``; run ids and times stay raw, the test normalizes them)."""
    import tempfile

    path = REPO / "docs" / page
    text = path.read_text()
    tmp = Path(tempfile.mkdtemp())
    env = _env(tmp)
    produced: dict[str, str] = {}
    out: list[str] = []
    pos = 0
    for m in _BLOCK.finditer(text):
        kind, name, body = m.group(1), m.group(2), m.group(3)
        new = body
        if kind in ("file", "run"):
            assert name
            (tmp / name).write_text(body)
            if kind == "run":
                proc = subprocess.run(
                    [sys.executable, name], cwd=tmp, env=env, capture_output=True, text=True
                )
                produced[name] = proc.stdout + proc.stderr
        elif kind == "output":
            assert name
            new = produced[name].replace(str(tmp), "<tmp>").rstrip("\n") + "\n"
        else:
            lines: list[str] = []
            for line in body.splitlines():
                if not line.startswith("$ "):
                    continue
                proc = subprocess.run(
                    ["bash", "-c", line[2:]], cwd=tmp, env=env, capture_output=True, text=True
                )
                found = re.search(r"^run_id: (\S+)$", proc.stdout, re.M)
                if found:
                    env["RUN_ID"] = found.group(1)
                printed = (proc.stdout + proc.stderr).replace(str(tmp), "<tmp>").strip("\n")
                lines += [line, *(x.rstrip() for x in printed.splitlines())]
                if proc.returncode:
                    lines.append(f"# exit {proc.returncode}")
            new = "\n".join(lines) + "\n"
        start, end = m.span(3)
        out += [text[pos:start], new]
        pos = end
    path.write_text("".join(out) + text[pos:])


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        regenerate(Path(arg).name)
