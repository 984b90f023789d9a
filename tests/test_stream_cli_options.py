"""``xlib-pipeline stream --source-option/--sink-option KEY=VALUE``: a connector's options
(the JSON-lines sink's ``fsync``, the source's ``follow`` and ``poll_interval``) reach it from
the command line, and a bad one is refused naming the flag or the option."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from xlib_pipeline.cli import main

PIPE = (
    "from xlib_pipeline import Pipeline\n"
    "p = Pipeline('opts')\n"
    "@p.task('keep')\n"
    "def keep(batch):\n"
    "    return batch\n"
)


def _setup(tmp_path: Path, n: int = 30) -> list[str]:
    (tmp_path / "pipe.py").write_text(PIPE)
    with open(tmp_path / "in.jsonl", "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": i}) + "\n")
    return [
        *("stream", str(tmp_path / "pipe.py"), "--source", f"jsonl:{tmp_path / 'in.jsonl'}"),
        *("--store", str(tmp_path / "runs.sqlite"), "--batch-size", "10", "--no-monitor"),
    ]


def _sink_syncs(monkeypatch: pytest.MonkeyPatch, out: Path) -> list[int]:
    """The fsync calls on the sink file (the real os.fsync still runs)."""
    real = os.fsync
    calls: list[int] = []

    def fsync(fd: Any) -> None:
        if os.path.realpath(f"/proc/self/fd/{fd}") == str(out.resolve()):
            calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


def test_sink_option_fsync_reaches_the_json_lines_sink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = _setup(tmp_path)
    out = tmp_path / "out.jsonl"
    out.touch()
    calls = _sink_syncs(monkeypatch, out)
    assert main([*args, "--sink", f"jsonl:{out}"]) == 0
    assert calls == []  # the default: no fsync per batch
    synced = [*args, "--sink", f"jsonl:{out}", "--from-start", "--sink-option", "fsync=true"]
    assert main(synced) == 0
    assert len(calls) == 3  # one per batch of 10
    assert len(out.read_text().splitlines()) == 30


def test_source_option_follow_keeps_reading_until_idle(tmp_path: Path, capsys: Any) -> None:
    args = [*_setup(tmp_path), "--idle-timeout", "0.3"]
    assert main([*args, "--name", "plain"]) == 0
    assert "plain completed" in capsys.readouterr().err  # the file's end ends the stream
    assert main([*args, "--name", "tail", "--source-option", "follow=true",
                 "--source-option", "poll_interval=0.01"]) == 0  # fmt: skip
    assert "tail stopped" in capsys.readouterr().err  # a followed file waits for more: idle stop


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--sink-option", "fsync"], "--sink-option 'fsync': expected KEY=VALUE"),
        (["--sink-option", "=1"], "--sink-option '=1': expected KEY=VALUE"),
        (["--sink-option", "nope=1"], "unknown option(s) ['nope']; expected fsync"),
        (["--source-option", "tail=yes"], "unknown option(s) ['tail']"),
    ],
)
def test_a_bad_connector_option_is_refused_by_name(
    tmp_path: Path, capsys: Any, extra: list[str], says: str
) -> None:
    args = _setup(tmp_path)
    out = tmp_path / "out.jsonl"
    assert main([*args, "--sink", f"jsonl:{out}", *extra]) == 2
    assert says in capsys.readouterr().err
    assert not out.exists() or out.read_text() == ""  # nothing was written
