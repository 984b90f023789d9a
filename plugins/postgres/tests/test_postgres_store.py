"""What is particular to the PostgreSQL store: migrations, settings, errors, the CLI, the
plugin's lazy import of psycopg."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from xlib_pipeline_postgres import PostgresPlugin
from xlib_pipeline_postgres._schema import MIGRATIONS, SCHEMA_VERSION

from xlib_pipeline import (
    ConfigError,
    Pipeline,
    PipelineManager,
    StoreError,
)
from xlib_pipeline.cli import main as cli


def test_a_new_database_is_migrated_to_the_newest_version(postgres_url: str) -> None:
    with PipelineManager({"store": {"url": postgresql(postgres_url)}}) as pm:
        store = pm.store
        assert store is not None
        assert store.schema_version() == SCHEMA_VERSION == len(MIGRATIONS)  # type: ignore[attr-defined]
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute("SELECT version, description FROM xlib_schema_migrations").fetchall()
    assert [r[0] for r in rows] == list(range(1, SCHEMA_VERSION + 1))


def postgresql(url: str) -> str:
    return url


def test_an_older_database_is_migrated_up(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE xlib_schema_migrations (version INTEGER PRIMARY KEY, "
            "description TEXT NOT NULL, applied DOUBLE PRECISION NOT NULL)"
        )
        conn.execute(MIGRATIONS[0][1])
        conn.execute("INSERT INTO xlib_schema_migrations VALUES (1, 'v1', 0)")
    p = Pipeline("mig")
    p.add_task("a", lambda: b"x" * 5000)
    config = {"store": {"url": postgres_url, "blobs": {"threshold": 100}}}
    with PipelineManager(config) as pm:
        result = pm.execute_pipeline(p)
        assert pm.store is not None and len(pm.store.blob_names()) == 1  # blob_refs exists
    assert result.success


def test_a_newer_database_is_refused(postgres_url: str) -> None:
    with PipelineManager({"store": {"url": postgres_url}}) as pm:
        assert pm.store is not None
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("INSERT INTO xlib_schema_migrations VALUES (99, 'future', 0)")
    with (
        PipelineManager({"store": {"url": postgres_url}}) as pm,
        pytest.raises(StoreError, match="schema version 99, newer"),
    ):
        _ = pm.store


def test_a_server_that_does_not_answer_is_named_without_the_password() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://me:hunter2@127.0.0.1:{port}/db"
    config = {"store": {"url": url, "pool": {"connect_timeout_s": 1}}}
    with PipelineManager(config) as pm, pytest.raises(StoreError) as info:
        _ = pm.store
    assert "hunter2" not in str(info.value) and f"127.0.0.1:{port}" in str(info.value)


@pytest.mark.parametrize(
    ("pool", "match"),
    [
        ({"max_size": 0}, "store.pool.max_size"),
        ({"min_size": 3, "max_size": 2}, "less than min_size"),
        ({"size": 2}, "unknown key"),
        ({"connect_timeout_s": -1}, "connect_timeout_s"),
    ],
)
def test_bad_pool_settings_are_named(pool: dict[str, object], match: str) -> None:
    config = {"store": {"url": "postgresql://127.0.0.1:1/db", "pool": pool}}
    with PipelineManager(config) as pm, pytest.raises(ConfigError, match=match):
        _ = pm.store


def test_without_the_plugin_a_postgresql_url_names_the_package() -> None:
    config = {"store": {"url": "postgresql://db/x"}}
    with PipelineManager(config, entry_points=False) as pm, pytest.raises(ConfigError) as e:
        _ = pm.store
    assert "xlib-pipeline-postgres" in str(e.value)


def test_the_plugin_answers_only_its_schemes() -> None:
    assert PostgresPlugin().open_run_store({"url": "mysql://x/y"}) is None


def test_loading_the_plugin_does_not_import_psycopg() -> None:
    code = (
        "import sys; from xlib_pipeline import PipelineManager; PipelineManager({}); "
        "print('psycopg' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_password_is_not_stored_with_the_run(postgres_url: str) -> None:
    url = postgres_url.replace("xlib@", "xlib:pw-secret-1@")
    p = Pipeline("pw")
    p.add_task("a", lambda: 1)
    with PipelineManager({"store": {"url": url}}) as pm:
        result = pm.execute_pipeline(p)
        assert pm.store is not None
        rec = pm.store.get_run(result.run_id)
    assert "pw-secret-1" not in json.dumps(dict(rec.config))


def test_the_cli_records_and_lists_runs_by_url(
    postgres_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "job.py"
    script.write_text(
        "from xlib_pipeline import Pipeline\n"
        "pipeline = Pipeline('cli_pg')\n"
        "pipeline.add_task('a', lambda: 41)\n"
        "pipeline.add_task('b', lambda a: a + 1, depends_on=['a'])\n"
    )
    assert cli(["run", str(script), "--store", postgres_url, "--no-monitor"]) == 0
    capsys.readouterr()
    assert cli(["runs", "list", "--store", postgres_url, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    runs = listed if isinstance(listed, list) else listed["runs"]
    assert [r["pipeline"] for r in runs] == ["cli_pg"]
    assert runs[0]["status"] == "succeeded"


def test_close_joins_the_lease_heartbeat_and_nothing_beats_after(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's close woke its heartbeat thread but did not wait for it: a beat in flight
    could reach the closing writer. Now close returns with the thread ended (a run still
    holding its lease does not keep it), and keep_alive on the closed store starts none."""
    import threading

    from xlib_pipeline_postgres import _leases

    monkeypatch.setattr(_leases, "HEARTBEAT_S", 0.02)
    pm = PipelineManager({"store": {"url": postgres_url}})
    store = pm.store
    assert store is not None
    beat = threading.Event()

    def hook(batch: list[tuple[str, object]]) -> None:
        if any(str(sql).startswith("UPDATE leases SET heartbeat") for sql, _ in batch):
            beat.set()

    store.write_hook = hook  # type: ignore[attr-defined]
    before = set(threading.enumerate())
    store.keep_alive("held-run")
    (thread,) = [t for t in set(threading.enumerate()) - before if t.name == "xlib-lease"]
    assert beat.wait(10), "the heartbeat never beat"
    pm.close()
    assert not thread.is_alive(), "PostgresStore.close() returned with the heartbeat alive"
    store.keep_alive("late-run")
    assert not [t for t in set(threading.enumerate()) - before if t.name == "xlib-lease"]
