"""A throwaway PostgreSQL server for tests and benchmarks, from the Debian binaries.

``with local_server() as url:`` runs ``initdb`` and ``pg_ctl start`` into a temporary folder
on a free localhost port (as the ``postgres`` user when running as root, which PostgreSQL
refuses), yields a ``postgresql://`` URL, and stops and removes the server afterwards.
:func:`server_binaries` says where ``initdb`` is, or ``None`` when PostgreSQL is not
installed (``apt-get install postgresql``).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def server_binaries() -> Path | None:
    """The folder of ``initdb``/``pg_ctl`` (newest Debian version first), or ``None``."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version, reverse=True)
    if found:
        return Path(found[0]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _version(path: str) -> int:
    try:
        return int(Path(path).parts[-3])
    except ValueError:
        return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def local_server(*, fsync: bool = False) -> Iterator[str]:
    """Start a private PostgreSQL server; yield its URL (user ``xlib``, database ``postgres``)."""
    binaries = server_binaries()
    if binaries is None:
        raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    root_user = os.geteuid() == 0
    # As root the server runs as the postgres user, which must reach its folder: under
    # $TMPDIR (often a 0700 folder of root's, as in nox sessions and fresh clones) it cannot.
    root = Path(tempfile.mkdtemp(prefix="xlib-pg-", dir="/tmp" if root_user else None))
    data = root / "data"
    prefix: list[str] = []
    if root_user:  # the server refuses to run as root
        shutil.chown(root, "postgres", "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    env = {**os.environ, "LC_ALL": "C"}

    def run(*args: str) -> None:
        subprocess.run(
            [*prefix, *args], check=True, capture_output=True, env=env, cwd=str(root), timeout=120
        )

    try:
        run(
            str(binaries / "initdb"),
            "-D",
            str(data),
            "-A",
            "trust",
            "-U",
            "xlib",
            "-E",
            "UTF8",
            "--no-sync",
        )
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=200" + (
            "" if fsync else " -c fsync=off -c full_page_writes=off"
        )
        run(str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l",
            str(root / "server.log"), "-w", "-t", "60", "start")  # fmt: skip
        try:
            yield f"postgresql://xlib@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run(
                [*prefix, str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                capture_output=True,
                env=env,
                timeout=120,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def fresh_database(url: str) -> str:
    """Create an empty database on the server of ``url``; return its URL."""
    import psycopg

    name = "t_" + uuid.uuid4().hex[:16]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return url.rsplit("/", 1)[0] + "/" + name
