"""SIGKILL, what an OOM killer or a process manager's last resort does, of the server or its supervisor.

- The server (granian) killed under ingest load: every acknowledged signal is stored, exactly once.
- ``prodsentinel run`` killed: its granian processes (and, in the embedded default, its PostgreSQL) stop
  with it instead of serving on, orphaned; a second ``run`` on a served port refuses with one line.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from tests.faults.services import ROOT, base_env, create_key, poll, server_process

CLIENTS = 16
BATCH = 50


def _process_table() -> dict[int, tuple[int, str]]:
    """``pid -> (ppid, state)`` of every process, from ``/proc``."""
    table: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(entry.name)] = (int(fields[1]), fields[0])
    return table


def _descendants(pid: int) -> set[int]:
    table = _process_table()
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, (parent, _) in table.items() if parent in frontier} - found
        found |= frontier
    return found


def _running(pids: set[int]) -> set[int]:
    """The pids of ``pids`` still running (a zombie waiting to be reaped has stopped)."""
    table = _process_table()
    return {pid for pid in pids if pid in table and table[pid][1] != "Z"}


def _served(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=1)
    except httpx.TransportError:
        return False
    return True


def _postgres_of(data_dir: Path) -> list[str]:
    result = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True, check=True)
    return [line for line in result.stdout.splitlines() if "postgres" in line and str(data_dir) in line]


def _kill_leftovers(pids: set[int]) -> None:
    """Test hygiene when the behaviour under test failed: SIGKILL the processes this test started."""
    for pid in _running(pids):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _log(signal_id: str) -> dict[str, object]:
    now = datetime.now(UTC).isoformat()
    return {"signal_id": signal_id, "timestamp": now, "service_name": "kill", "level": "INFO", "message": "m"}


@pytest.mark.timeout(120)
async def test_kill_9_of_the_server_under_load_loses_no_acknowledged_signal(
    database_url: str, project_name: str
) -> None:
    key = await asyncio.to_thread(create_key, database_url, project_name)
    acknowledged: list[str] = []
    enough = asyncio.Event()

    async def client_loop(client: httpx.AsyncClient, number: int) -> None:
        batch = number % 4 == 0  # a quarter of the clients send batches, the rest single events
        while True:
            ids = [str(uuid.uuid4()) for _ in range(BATCH if batch else 1)]
            body = [_log(i) for i in ids] if batch else _log(ids[0])
            try:
                response = await client.post("/api/v1/ingest/logs", json=body)
            except httpx.TransportError:
                return  # the server is gone
            assert response.status_code == 202, response.text
            acknowledged.extend(ids)
            if len(acknowledged) >= 2_000:
                enough.set()

    with server_process({"DATABASE_URL": database_url}) as server:
        async with httpx.AsyncClient(
            base_url=server.base_url,
            headers={"X-API-Key": key},
            timeout=30,
            limits=httpx.Limits(max_connections=CLIENTS),
        ) as client:
            loops = [asyncio.create_task(client_loop(client, n)) for n in range(CLIENTS)]
            await asyncio.wait_for(enough.wait(), timeout=60)
            await asyncio.to_thread(server.kill_group)
            await asyncio.wait_for(asyncio.gather(*loops), timeout=60)

    parts = urlsplit(database_url)
    connection = await asyncpg.connect(f"postgresql://{parts.netloc}{parts.path}")
    try:
        rows = await connection.fetch(
            "SELECT signal_id::text FROM logs WHERE signal_id = ANY($1::uuid[])",
            [uuid.UUID(i) for i in acknowledged],
        )
    finally:
        await connection.close()
    stored = Counter(row[0] for row in rows)
    assert len(stored) == len(acknowledged), "an acknowledged signal was lost"
    assert set(stored.values()) == {1}


@pytest.mark.timeout(120)
def test_kill_9_of_run_stops_its_server_and_a_second_run_refuses_the_port(database_url: str) -> None:
    env = {"DATABASE_URL": database_url, "PRODSENTINEL_QUEUE_NAME": f"kill-{uuid.uuid4().hex[:8]}"}
    with server_process(env, command="run") as server:
        servers = _descendants(server.process.pid)
        try:
            assert servers, "prodsentinel run started no server process"
            port = str(server.port)
            argv = [sys.executable, "-m", "prodsentinel", "run", "--host", "127.0.0.1", "--port", port]
            second = subprocess.Popen(
                argv,
                env=base_env(env),
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            try:
                _, stderr = second.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                _kill_leftovers(_descendants(second.pid) | {second.pid})
                raise AssertionError("a second run started beside the first instead of refusing") from None
            assert second.returncode != 0
            assert stderr.strip() == (
                f"prodsentinel: 127.0.0.1:{server.port} is already in use (another `prodsentinel run`?): "
                "stop it or choose another PRODSENTINEL_PORT / --port"
            )
            assert _served(server.port), "the refused second run disturbed the first"

            server.process.send_signal(signal.SIGKILL)  # the supervisor alone, as an OOM killer would
            server.process.wait(timeout=10)
            poll(lambda: not _running(servers), timeout=40, what="granian to stop with its supervisor")
            assert not _served(server.port)
        finally:
            _kill_leftovers(servers)


@pytest.mark.timeout(240)
def test_kill_9_of_embedded_run_also_stops_its_postgres() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="ps-faults-embedded-"))
    env = {"PRODSENTINEL_DATA_DIR": str(data_dir)}
    with server_process(env, command="run", timeout=180, embedded=True) as server:
        servers = _descendants(server.process.pid)
        try:
            poll(
                lambda: httpx.get(f"{server.base_url}/health/ready", timeout=5).status_code == 200,
                timeout=120,
                what="the embedded database to be migrated",
                interval=0.2,
            )
            assert _postgres_of(data_dir), "no embedded PostgreSQL found"
            server.process.send_signal(signal.SIGKILL)
            server.process.wait(timeout=10)
            poll(lambda: not _running(servers), timeout=40, what="granian to stop with its supervisor")
            poll(lambda: not _postgres_of(data_dir), timeout=60, what="the embedded PostgreSQL to stop")
        finally:
            _kill_leftovers(servers)
            _stop_postmaster(data_dir / "pgdata")
            shutil.rmtree(data_dir, ignore_errors=True)


def _stop_postmaster(pgdata: Path) -> None:
    """Test hygiene if the watchdog failed: stop the embedded postmaster this test started (immediate)."""
    with suppress(OSError, ValueError):
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
        if _running({pid}):
            os.kill(pid, signal.SIGQUIT)
