"""Real PostgreSQL clusters, Redis servers and ProdSentinel servers that fault tests start, break and stop.

A fault test restarts or stops its dependencies, so it never uses the shared PostgreSQL on :5432 or the
shared Redis on :6379: it starts its own on a free port in a temp dir (``initdb``/``pg_ctl`` from
``/usr/lib/postgresql/*/bin``, ``redis-server``). A missing tool fails the test (CI installs them).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
from sqlalchemy.ext.asyncio import create_async_engine

from prodsentinel.auth import services as auth_services
from prodsentinel.lib.database import alchemy_config, migrate, session_scope
from tests.conftest import require_tool
from tests.system.servers import ROOT, free_port

__all__ = (
    "PostgresCluster",
    "RedisServer",
    "ServerProcess",
    "base_env",
    "create_key",
    "poll",
    "server_process",
)


def poll(check: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.05) -> None:
    """Wait until ``check()`` is true (a real signal), at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for: {what}")
        time.sleep(interval)


def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    return Path(require_tool("initdb", "postgresql")).resolve().parent


@dataclass
class PostgresCluster:
    """A throw-away PostgreSQL cluster (trust auth, 127.0.0.1 + a unix socket in its own dir)."""

    root: Path
    port: int = field(default_factory=free_port)
    bin: Path = field(default_factory=_pg_bin)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        """libpq URL of the maintenance database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> None:
        # initdb and postgres refuse to run as root: run them as the postgres system user then.
        user = "postgres" if os.geteuid() == 0 else None
        subprocess.run(args, check=True, capture_output=True, timeout=timeout, user=user, cwd=self.root)

    def init(self) -> None:
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        initdb = str(self.bin / "initdb")
        self._run(initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c full_page_writes=off -c max_connections=60"
        )
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
            "-o", options, "-w", "-t", "30", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def ensure_running(self) -> None:
        """Start the cluster if a previous (failed) test left it stopped."""
        status = subprocess.run(
            [str(self.bin / "pg_ctl"), "-D", str(self.data), "status"],
            capture_output=True,
            user="postgres" if os.geteuid() == 0 else None,
        )
        if status.returncode != 0:
            self.start()

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: what ``pg_ctlcluster ... restart -m fast`` does."""
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
            "-m", "fast", "-w", "-t", "30", "restart",
        )  # fmt: skip

    def create_database(self, name: str) -> str:
        """Create ``name``, migrate it to head and return its SQLAlchemy (asyncpg) URL."""

        async def create() -> None:
            connection = await asyncpg.connect(self.url)
            try:
                await connection.execute(f'CREATE DATABASE "{name}"')
            finally:
                await connection.close()

        asyncio.run(create())
        url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{name}"
        migrate(alchemy_config(url))
        return url


@contextmanager
def postgres_cluster() -> Iterator[PostgresCluster]:
    root = Path(tempfile.mkdtemp(prefix="ps-faults-pg-"))
    cluster = PostgresCluster(root)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        with suppress(subprocess.CalledProcessError):  # already stopped
            cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class RedisServer:
    """A redis-server of the test's own (no persistence) that can be stopped and started again."""

    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = require_tool("redis-server", "redis-server")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        poll(self._answers, timeout=10, what="redis-server to answer PING")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def _answers(self) -> bool:
        assert self.process is not None
        assert self.process.poll() is None, "redis-server exited"
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


def create_key(database_url: str, project: str, scopes: tuple[str, ...] = ("admin", "ingest")) -> str:
    """A raw API key in ``project`` of the database at ``database_url``."""

    async def create() -> str:
        engine = create_async_engine(database_url)
        try:
            from sqlalchemy.ext.asyncio import async_sessionmaker

            async with session_scope(async_sessionmaker(engine, expire_on_commit=False)) as session:
                created = await auth_services.create_key(
                    session, name="faults", scopes=list(scopes), project=project
                )
            return created.key
        finally:
            await engine.dispose()

    return asyncio.run(create())


@dataclass
class ServerProcess:
    """A running server: its base URL and process (leader of its own process group)."""

    base_url: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def output(self) -> str:
        """What the server wrote to stdout and stderr so far (for failure messages)."""
        return self.log.read_text(errors="replace")

    def kill_group(self) -> None:
        """SIGKILL the server and every process of its group (what an OOM killer may do)."""
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


def base_env(env: dict[str, str], *, embedded: bool = False) -> dict[str, str]:
    """The environment of a server under test: nothing of ours inherited, ``env`` on top.

    ``embedded``: leave migrations and in-process workers to the embedded defaults.
    """
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PRODSENTINEL_") and key not in {"DATABASE_URL", "REDIS_URL"}
    }
    defaults = {} if embedded else {"PRODSENTINEL_AUTO_MIGRATE": "0", "PRODSENTINEL_INPROCESS_WORKERS": "0"}
    return {**inherited, **defaults, "LOG_LEVEL": "WARNING", **env}


@contextmanager
def server_process(
    env: dict[str, str],
    *,
    command: str = "granian",
    port: int | None = None,
    timeout: float = 60,
    embedded: bool = False,
) -> Iterator[ServerProcess]:
    """Start granian on the app factory (``command="granian"``) or ``prodsentinel run`` (``"run"``).

    Yields once ``/health/live`` answers; stops the whole process group after (SIGTERM, then SIGKILL).
    """
    port = port or free_port()
    if command == "granian":
        argv = [
            sys.executable, "-m", "granian", "--interface", "asgi", "--factory", "--host", "127.0.0.1",
            "--port", str(port), "--workers", "1", "--no-access-log", "prodsentinel.app:create_app",
        ]  # fmt: skip
    else:
        argv = [sys.executable, "-m", "prodsentinel", "run", "--host", "127.0.0.1", "--port", str(port)]
    log = Path(tempfile.mkstemp(prefix="ps-faults-server-", suffix=".log")[1])
    with log.open("wb") as sink:
        process = subprocess.Popen(
            argv,
            env=base_env(env, embedded=embedded),
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = ServerProcess(f"http://127.0.0.1:{port}", process, port, log)
    try:
        poll(lambda: _live(server), timeout=timeout, what=f"{command} to serve /health/live", interval=0.1)
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill_group()
        print(server.output()[-20_000:])  # pytest shows it when the test failed
        log.unlink(missing_ok=True)


def _live(server: ServerProcess) -> bool:
    assert server.process.poll() is None, f"the server exited with {server.process.returncode}"
    try:
        return httpx.get(f"{server.base_url}/health/live", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
