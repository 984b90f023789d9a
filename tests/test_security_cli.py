"""Issue 18, defects 3, 5-8: no input crashes a command.

Markup in stored strings, broken pipeline files, directories where files are expected,
out-of-range ports, wildcard characters in run-id prefixes, one unreadable row: each exits
0, 1 or 2 with one clear line, never a traceback. The last test throws random argv at every
command.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xlib_pipeline import Pipeline, PipelineManager
from xlib_pipeline._store import RunStore
from xlib_pipeline.cli import build_parser, main
from xlib_pipeline.cli._parser import fill_all

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    """Rich folds cells at the terminal width; a wide one keeps each value on one line."""
    monkeypatch.setenv("COLUMNS", "400")


def run_cli(argv: list[str], capsys: Any) -> tuple[int, str, str]:
    """``main(argv)`` in-process: (exit code, stdout, stderr); an escaping exception fails."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse: 2 for bad usage, 0 for --help
        code = exc.code if isinstance(exc.code, int) else 2
    out, err = capsys.readouterr()
    return code, out, err


def store_with(tmp_path: Path, name: str, **kwargs: Any) -> Path:
    path = tmp_path / "runs.sqlite"
    p = Pipeline(name)
    p.add_task(kwargs.pop("task", "t"), kwargs.pop("fn", lambda: 1))
    with PipelineManager({"store": {"path": str(path)}, **kwargs}, entry_points=False) as pm:
        pm.execute_pipeline(p)
    return path


# --- defect 3: markup injection ------------------------------------------------------------------


def test_pipeline_named_with_markup_lists_fine(tmp_path, capsys):
    """Pipeline("pipe[/]x") made 'runs list' crash for the whole store."""
    store = store_with(tmp_path, "pipe[/]x")
    store_with(tmp_path, "[link=https://evil.example]click[/link]")
    code, out, err = run_cli(["runs", "list", "--store", str(store)], capsys)
    assert code == 0, err
    assert "pipe[/]x" in out
    assert "[link=https://evil.example]" in out  # shown as text, not rendered as a link
    assert "Traceback" not in err


def test_error_with_markup_shows_fine(tmp_path, capsys):
    def boom() -> None:
        raise ValueError("bad [/] value [bold]x[/bold]")

    store = store_with(tmp_path, "p", task="t[/]", fn=boom)
    rid = RunStore(store, create=False).list_runs()[0].run_id
    code, out, err = run_cli(["runs", "show", rid, "--store", str(store)], capsys)
    assert code == 0, err
    assert "t[/]" in out and "bad [/] value [bold]x[/bold]" in out


def test_audit_show_task_with_markup(tmp_path, capsys):
    pytest.importorskip("xlib_pipeline_audit")
    trail = tmp_path / "audit.jsonl"
    p = Pipeline("p")
    p.add_task("t[/]", lambda: 1)
    with PipelineManager({"audit": {"path": str(trail)}}) as pm:
        assert pm.execute_pipeline(p).success
    code, out, err = run_cli(["audit", "show", str(trail)], capsys)
    assert code == 0, err
    assert "t[/]" in out


def test_mermaid_and_dot_labels_escape_newlines_and_quotes():
    p = Pipeline('evil"\n digraph')
    p.add_task('a"]\nclick a "https://x"', lambda: 1)
    mermaid = p.to_mermaid()
    assert len(mermaid.strip().splitlines()) == 2  # header + one node, no injected line
    assert "#quot;" in mermaid and "#10;" in mermaid
    dot = p.to_dot()
    assert len(dot.strip().splitlines()) == 4  # digraph, rankdir, node, }
    assert '\\"' in dot and "\\n" in dot


def test_lineage_mermaid_escapes_names_and_statuses():
    pytest.importorskip("xlib_pipeline_lineage")
    from xlib_pipeline_lineage._graph import to_mermaid

    events = [
        {"eventType": "START", "job": {"name": "pipe\n%% x"}, "run": {"runId": "r1"}},
        {
            "eventType": "COMPLETE",
            "job": {"name": "pipe.t"},
            "run": {
                "runId": "r2",
                "facets": {
                    "parent": {"run": {"runId": "r1"}},
                    "xlib_pipeline_run": {"task": 'x"]\nclick', "status": "ok\nclick x"},
                },
            },
        },
    ]
    text = to_mermaid(events, "r1")
    for line in text.splitlines():
        assert not line.strip().startswith("click")


# --- defect 6: tracebacks instead of messages ---------------------------------------------------


@pytest.mark.parametrize(
    "source, expected",
    [
        ("def broken(:\n", "syntax error at line 1"),
        ("import no_such_module_xyz\n", "ModuleNotFoundError"),
        ("x = 1\nraise RuntimeError('at import')\n", "(line 2): RuntimeError: at import"),
    ],
)
@pytest.mark.parametrize("command", [["run"], ["graph"], ["render", "kubernetes"]])
def test_broken_pipeline_file_exits_2_with_one_line(tmp_path, capsys, source, expected, command):
    if command[0] == "render":
        pytest.importorskip("xlib_pipeline_kubernetes")
    f = tmp_path / "bad.py"
    f.write_text(source)
    code, _, err = run_cli([*command, str(f)], capsys)
    assert code == 2
    assert "Traceback" not in err
    assert expected in err and "bad.py" in err
    assert len(err.strip().splitlines()) == 1


def test_audit_verify_a_directory_exits_2(tmp_path, capsys):
    pytest.importorskip("xlib_pipeline_audit")
    code, _, err = run_cli(["audit", "verify", str(tmp_path)], capsys)
    assert code == 2 and "is a directory" in err and "Traceback" not in err


def test_worker_port_out_of_range_exits_2(capsys):
    pytest.importorskip("xlib_pipeline_kubernetes")
    code, _, err = run_cli(["worker", "--port", "99999"], capsys)
    assert code == 2 and "port number 0-65535" in err and "Traceback" not in err


def test_bad_worker_port_env_breaks_no_other_command(capsys, monkeypatch):
    pytest.importorskip("xlib_pipeline_kubernetes")
    monkeypatch.setenv("XLIB_PIPELINE_WORKER_PORT", "not-a-port")
    code, _, err = run_cli(["plugins", "--json"], capsys)
    assert code == 0, err


@pytest.mark.parametrize("name", ["---", "データ処理", "ñ"])
def test_kubernetes_names_from_any_pipeline_name(tmp_path, capsys, name):
    pytest.importorskip("xlib_pipeline_kubernetes")
    f = tmp_path / "p.py"
    f.write_text(
        textwrap.dedent(
            f"""
            from xlib_pipeline import Pipeline
            p = Pipeline({name!r})
            p.add_task("t", lambda: 1)
            """
        )
    )
    code, out, err = run_cli(["render", "kubernetes", str(f)], capsys)
    assert code == 0, err
    assert "kind: Deployment" in out


def test_kubernetes_explicit_name_without_letters_is_a_config_error(tmp_path, capsys):
    pytest.importorskip("xlib_pipeline_kubernetes")
    f = tmp_path / "p.py"
    f.write_text("from xlib_pipeline import Pipeline\np = Pipeline('p')\np.add_task('t', int)\n")
    code, _, err = run_cli(["render", "kubernetes", str(f), "--name=---"], capsys)
    assert code == 2 and "kubernetes.name" in err and "Traceback" not in err


# --- defect 5: a read-only store is named as such -------------------------------------------------


def test_read_only_store_folder_is_named(tmp_path):
    """Reported as 'not a valid SQLite database' before. A read-only bind mount in a private
    mount namespace (root ignores file modes)."""
    import shutil

    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("unshare/mount not installed (util-linux)")
    folder = tmp_path / "ro"
    folder.mkdir()
    RunStore(folder / "runs.sqlite").close()
    code = (
        "from xlib_pipeline._store import RunStore\n"
        "from xlib_pipeline.exceptions import StoreError\n"
        "for name, create in (('runs.sqlite', False), ('new.sqlite', True)):\n"
        "    try:\n"
        f"        RunStore({str(folder)!r} + '/' + name, create=create)\n"
        "    except StoreError as exc:\n"
        "        print(exc)\n"
    )
    script = (
        f"mount --bind {folder} {folder} && mount -o remount,bind,ro {folder} && "
        f'{sys.executable} -c "$CODE"'
    )
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "CODE": code},
        timeout=120,
    )
    if proc.returncode != 0 and "Operation not permitted" in proc.stderr:
        pytest.skip(f"no mount namespace here: {proc.stderr.strip()}")
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2, proc.stdout + proc.stderr
    assert "read-only" in lines[0] and "not a valid SQLite" not in lines[0]
    assert "not writable" in lines[1] and "not a valid SQLite" not in lines[1]


# --- defect 7: one bad row ------------------------------------------------------------------------


def test_one_run_whose_config_no_longer_loads_does_not_break_the_listing(
    tmp_path, capsys, monkeypatch
):
    pytest.importorskip("xlib_pipeline_audit")
    store = tmp_path / "runs.sqlite"
    monkeypatch.setenv("H18_AUDIT_KEY", "k" * 32)
    for name, extra in (
        ("plain", {}),
        ("keyed", {"audit": {"path": str(tmp_path / "a.jsonl"), "hmac_key_env": "H18_AUDIT_KEY"}}),
    ):
        p = Pipeline(name)
        p.add_task("t", lambda: 1)
        with PipelineManager({"store": {"path": str(store)}, **extra}) as pm:
            assert pm.execute_pipeline(p).success
    monkeypatch.delenv("H18_AUDIT_KEY")
    code, out, err = run_cli(["runs", "list", "--store", str(store)], capsys)
    assert code == 0
    assert "plain" in out
    assert "not listed" in err and "H18_AUDIT_KEY" in err


# --- defect 8: LIKE wildcards in run-id prefixes --------------------------------------------------


def test_run_id_prefix_wildcards_match_literally(tmp_path):
    path = tmp_path / "runs.sqlite"
    p = Pipeline("p")
    p.add_task("t", lambda: 1)
    with PipelineManager({"store": {"path": str(path)}}, entry_points=False) as pm:
        pm.execute_pipeline(p, run_id="abc_1")
        pm.execute_pipeline(p, run_id="abcx2")
    store = RunStore(path, create=False)
    try:
        from xlib_pipeline.exceptions import StoreError

        for pattern in ("%", "_", "abc%", "a_c"):
            with pytest.raises(StoreError, match="not in the run store"):
                store.get_run(pattern)
        assert store.get_run("abc_").run_id == "abc_1"
        assert store.get_run("abcx").run_id == "abcx2"
        with pytest.raises(StoreError, match="ambiguous"):
            store.get_run("abc")
        with pytest.raises(StoreError, match="expected a run id"):
            store.get_run("")
    finally:
        store.close()


# --- property: random argv for every command ------------------------------------------------------


def _commands() -> dict[tuple[str, ...], list[str]]:
    """Every command path (``("runs", "list")``) with its option strings."""
    parser = fill_all(build_parser(PipelineManager(entry_points=True)))
    out: dict[tuple[str, ...], list[str]] = {}

    def walk(p: Any, path: tuple[str, ...]) -> None:
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs and path:
            out[path] = [
                s for a in p._actions for s in a.option_strings if s not in ("-h", "--help")
            ]
        for a in subs:
            for name, child in a.choices.items():
                walk(child, (*path, name))

    walk(parser, ())
    return out


COMMANDS = _commands()


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    """Files the random argv may point at: good and broken pipelines, a store, a trail."""
    root = tmp_path_factory.mktemp("argv")
    good = root / "good.py"
    good.write_text(
        "from xlib_pipeline import Pipeline\np = Pipeline('good')\np.add_task('t', lambda: 1)\n"
    )
    (root / "broken.py").write_text("def x(:\n")
    (root / "cfg.json").write_text(json.dumps({"max_workers": "many"}))
    (root / "garbage.sqlite").write_bytes(b"not sqlite at all" * 10)
    (root / "trail.jsonl").write_text('{"seq": 1}\nnot json\n')
    store = root / "runs.sqlite"
    p = Pipeline("stored[/]")
    p.add_task("t", lambda: 1)
    with PipelineManager({"store": {"path": str(store)}}, entry_points=False) as pm:
        pm.execute_pipeline(p, run_id="run_1%")
    return root


def _tokens(root: Path) -> st.SearchStrategy[str]:
    files = [
        str(root / n)
        for n in (
            "good.py",
            "broken.py",
            "cfg.json",
            "garbage.sqlite",
            "trail.jsonl",
            "runs.sqlite",
            "missing.py",
        )
    ]
    return st.one_of(
        st.sampled_from([*files, str(root), str(root / "good.py") + ":nope", "-", "--", ""]),
        st.sampled_from(
            ["0", "-1", "99999", "1e309", "nan", "inf", "[/]", "[link=x]y", "run_", "%"]
        ),
        st.text(max_size=8),
        st.integers().map(str),
    )


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
@pytest.mark.parametrize("command", sorted(COMMANDS), ids=lambda c: " ".join(c))
def test_random_argv_exits_0_1_or_2_without_a_traceback(
    command, data, fixtures, capsys, monkeypatch
):
    monkeypatch.chdir(fixtures)
    if command == ("worker",):
        # The worker serves until SIGTERM; stop its Dask loop at once (argument handling and
        # the HTTP server's bind stay real). Its queue mode is gone (issue 16).
        worker = pytest.importorskip("xlib_pipeline_kubernetes._worker")
        monkeypatch.setattr(worker, "run_dask", lambda *a, **k: 0)
    options = COMMANDS[command]
    tokens = _tokens(fixtures)
    argv = list(command)
    for _ in range(data.draw(st.integers(0, 5))):
        if options and data.draw(st.booleans()):
            argv.append(data.draw(st.sampled_from(options)))
        argv.append(data.draw(tokens))
    before = signal.getsignal(signal.SIGTERM)
    try:
        code, _, err = run_cli(argv, capsys)
    finally:
        signal.signal(signal.SIGTERM, before)
    assert code in (0, 1, 2), (argv, code, err)
    assert "Traceback" not in err, (argv, err)
