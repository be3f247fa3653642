"""A real PostgreSQL server for the store tests: PROMPTOPT_TEST_PG_URL if set (a server `.ci/run` or the developer
started; a database is created per test on it), else a throwaway cluster started here from the installed PostgreSQL
binaries (initdb + pg_ctl, as the `postgres` user when the tests run as root), stopped at the end."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator


def _bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    hits = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return hits[-1] if hits else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def available() -> str | None:
    """Why a server cannot be had here, or None."""
    if os.environ.get("PROMPTOPT_TEST_PG_URL"):
        return None
    if not (_bin("initdb") and _bin("pg_ctl")):
        return "no PostgreSQL binaries (apt-get install postgresql, or set PROMPTOPT_TEST_PG_URL)"
    return None


@contextlib.contextmanager
def server() -> Iterator[str]:
    """A base URL (no database) of a running server."""
    url = os.environ.get("PROMPTOPT_TEST_PG_URL")
    if url:
        yield url.rsplit("/", 1)[0] if url.count("/") > 2 else url
        return
    root = tempfile.mkdtemp(prefix="promptopt-pg-")
    data = os.path.join(root, "data")
    os.makedirs(data)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(data, "postgres")
    port = _free_port()
    subprocess.run(_as_postgres([_bin("initdb"), "-D", data, "-A", "trust", "-U", "promptopt", "--no-sync"]),
                   check=True, capture_output=True)
    log = os.path.join(root, "server.log")
    subprocess.run(_as_postgres([_bin("pg_ctl"), "-D", data, "-l", log, "-w", "-o",
                                 f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"]),
                   check=True, capture_output=True)
    try:
        yield f"postgresql://promptopt@127.0.0.1:{port}"
    finally:
        subprocess.run(_as_postgres([_bin("pg_ctl"), "-D", data, "-m", "immediate", "stop"]), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def new_database(base: str) -> str:
    """A fresh, empty database on the server; its URL."""
    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(f"{base}/postgres", autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    return f"{base}/{name}"
