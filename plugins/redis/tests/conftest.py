"""A real ``redis-server`` on a free localhost port in a temp dir, for the whole module."""

from __future__ import annotations

import shutil
import socket
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from redis.connection import AbstractConnection
from xlib_pipeline_redis._connectors import wait_for


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server; .ci/run does)")
    folder: Path = tmp_path_factory.mktemp("redis")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
         "--save", "", "--appendonly", "no", "--protected-mode", "yes"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}"
    client = redis.Redis.from_url(url)
    try:
        wait_for(client)
        yield url
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushall()
    yield client
    client.close()


def _forget_batches_after(store: Path, seq: int) -> None:
    """Forge a crash between the sink's commit and the store's: the store forgets every
    batch after ``seq`` (its stream row back to batch ``seq``'s offsets, position and
    counters) while Redis keeps their output entries, acks and the sink's checkpoint."""
    with sqlite3.connect(store) as c:
        prev = c.execute(
            "SELECT end_offset, position FROM stream_batches WHERE seq = ?", (seq,)
        ).fetchone()
        records, outputs = c.execute(
            "SELECT SUM(records), SUM(outputs) FROM stream_batches WHERE seq <= ?", (seq,)
        ).fetchone()
        c.execute("DELETE FROM stream_batches WHERE seq > ?", (seq,))
        c.execute(
            "UPDATE streams SET seq = ?, offset = ?, position = ?, records = ?, outputs = ?",
            (seq, *prev, records, outputs),
        )


@pytest.fixture
def forget_batches_after() -> Callable[[Path, int], None]:
    """:func:`_forget_batches_after`, for the tests of a restart adopting the sink's
    checkpoint."""
    return _forget_batches_after


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts round-trips to Redis: one packed send per command, or per pipeline."""
    sent = [0]
    real = AbstractConnection.send_packed_command

    def counted(self: AbstractConnection, command: object, check_health: bool = True) -> None:
        sent[0] += 1
        real(self, command, check_health)  # type: ignore[arg-type]

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)
    yield sent
