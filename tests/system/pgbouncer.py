"""A real PgBouncer (Debian's ``pgbouncer``) in transaction pooling mode, started by a test.

It listens on a free port of 127.0.0.1 and forwards every database name to the PostgreSQL the test suite
uses. The server pool is deliberately small (``SERVER_POOL_SIZE`` per database and user) so many client
connections take turns on a few server connections: a named prepared statement or any session state
left by one client is then met by the others, as in production.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tests.conftest import require_tool
from tests.system.servers import free_port

__all__ = ("PgBouncer", "pgbouncer")

SERVER_POOL_SIZE = 4


@dataclass(frozen=True)
class PgBouncer:
    port: int
    log: Path

    def url(self, database_url: str) -> str:
        """``database_url`` (any scheme) with its host and port replaced by this PgBouncer's."""
        parts = urlsplit(database_url)
        user = parts.username or "postgres"
        return f"{parts.scheme}://{user}@127.0.0.1:{self.port}{parts.path}"

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def pgbouncer(postgres_url: str) -> Iterator[PgBouncer]:
    """PgBouncer in front of the PostgreSQL of ``postgres_url`` (its host and port), transaction mode."""
    binary = require_tool("pgbouncer", "pgbouncer")
    target = urlsplit(postgres_url)
    root = Path(tempfile.mkdtemp(prefix="ps-pgbouncer-"))
    port = free_port()
    log = root / "pgbouncer.log"
    (root / "userlist.txt").write_text('"postgres" ""\n')
    (root / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={target.hostname or '127.0.0.1'} port={target.port or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {root / 'userlist.txt'}\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {SERVER_POOL_SIZE}\nmax_client_conn = 500\n"
        f"logfile = {log}\npidfile = {root / 'pgbouncer.pid'}\n"
        # asyncpg and psycopg send these at connect; PgBouncer refuses unknown startup parameters otherwise
        "ignore_startup_parameters = extra_float_digits,options\n"
    )
    user = None
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        owner = pwd.getpwnam("postgres")
        for path in (root, *root.iterdir()):
            os.chown(path, owner.pw_uid, owner.pw_gid)
        user = "postgres"
    process = subprocess.Popen(
        [binary, str(root / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        user=user,
        cwd=root,
    )
    bouncer = PgBouncer(port=port, log=log)
    try:
        deadline = time.monotonic() + 15
        while not _answers(port):
            if process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited with {process.returncode}:\n{bouncer.output()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"pgbouncer did not listen in time:\n{bouncer.output()[-3000:]}")
            time.sleep(0.05)
        yield bouncer
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)
