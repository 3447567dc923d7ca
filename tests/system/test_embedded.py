"""`prodsentinel run` with DATABASE_URL unset: embedded PostgreSQL in a temp dir, migrations, serving."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from tests.system.servers import granian_server

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _postgres_processes(data_dir: Path) -> list[str]:
    result = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    return [line for line in result.stdout.splitlines() if "postgres" in line and str(data_dir) in line]


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 90) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "prodsentinel run exited early"
        try:
            response = httpx.get(url, timeout=2)
            if response.status_code == 200:
                return response
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError("service did not become ready")


def _run_embedded(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "REDIS_URL"} and not key.startswith("PRODSENTINEL_")
    }
    env.update(
        {"PRODSENTINEL_DATA_DIR": str(data_dir), "PRODSENTINEL_PORT": str(port), "LOG_LEVEL": "WARNING"}
    )
    return subprocess.Popen(
        [sys.executable, "-m", "prodsentinel", "run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise


@pytest.mark.timeout(240)
def test_run_boots_embedded_database_serves_and_stops_cleanly(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = _free_port()
    process = _run_embedded(data_dir, port)
    try:
        ready = _wait_ready(f"http://127.0.0.1:{port}/health/ready", process)
        assert ready.json()["migrations"] == "applied"
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()
        assert health["database"]["status"] == "ok"
        assert health["queue"]["status"] == "ok"
        assert health["redis"]["status"] == "not_configured"
        assert httpx.get(f"http://127.0.0.1:{port}/api/v1/keys", timeout=5).status_code == 401
    finally:
        _stop(process)
    assert (data_dir / "pgdata" / "PG_VERSION").exists()
    deadline = time.monotonic() + 15
    while _postgres_processes(data_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _postgres_processes(data_dir) == [], "embedded PostgreSQL left running after Ctrl-C"

    # A second run reuses the same data: a key created now is still valid after a restart.
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("PRODSENTINEL_")}
    env["PRODSENTINEL_DATA_DIR"] = str(data_dir)
    created = subprocess.run(
        [sys.executable, "-m", "prodsentinel", "keys", "create", "--name", "ops", "--scopes", "admin"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("ps_")
    process = _run_embedded(data_dir, port)
    try:
        _wait_ready(f"http://127.0.0.1:{port}/health/ready", process)
        listed = httpx.get(f"http://127.0.0.1:{port}/api/v1/keys", headers={"X-API-Key": key}, timeout=5)
        assert listed.status_code == 200
        assert [item["name"] for item in listed.json()["items"]] == ["ops"]
    finally:
        _stop(process)


@pytest.mark.timeout(120)
def test_unmigrated_database_starts_not_ready(postgres_server_url: str, tmp_path: Path) -> None:
    """A fresh, unmigrated database: the API starts, /health/ready is 503 until `database upgrade`."""
    name = f"prodsentinel_unmigrated_{uuid.uuid4().hex[:8]}"

    async def admin(sql: str) -> None:
        connection = await asyncpg.connect(postgres_server_url)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    url = urlunsplit(urlsplit(postgres_server_url)._replace(path=f"/{name}"))
    try:
        with granian_server({"DATABASE_URL": url}) as base_url:
            ready = httpx.get(f"{base_url}/health/ready", timeout=5)
            assert ready.status_code == 503
            assert ready.json()["migrations"] == "pending"
            env = {k: v for k, v in os.environ.items() if not k.startswith("PRODSENTINEL_")}
            env["DATABASE_URL"] = url
            subprocess.run(
                [sys.executable, "-m", "prodsentinel", "database", "upgrade", "--no-prompt"],
                cwd=ROOT,
                env=env,
                capture_output=True,
                timeout=120,
                check=True,
            )
            assert httpx.get(f"{base_url}/health/ready", timeout=5).status_code == 200
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
