"""PostgreSQL stopped, started and restarted under a real server: 503 + Retry-After, never a 500.

The cluster is the test's own (``services.postgres_cluster``), so stopping it disturbs nobody. The server
is granian on the real app factory, as in production.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime

import asyncpg
import httpx
import pytest

from tests.faults.services import PostgresCluster, create_key, postgres_cluster, server_process

CLIENTS = 16


@pytest.fixture(scope="module")
def module_cluster() -> Iterator[PostgresCluster]:
    with postgres_cluster() as started:
        yield started


@pytest.fixture
def cluster(module_cluster: PostgresCluster) -> PostgresCluster:
    module_cluster.ensure_running()
    return module_cluster


def _log(signal_id: str) -> dict[str, object]:
    return {
        "signal_id": signal_id,
        "timestamp": datetime.now(UTC).isoformat(),
        "service_name": "faults",
        "level": "INFO",
        "message": "under restart",
    }


def _assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"].isdigit()
    body = response.json()
    assert body["detail"] == "The database is unavailable; retry."
    assert body["request_id"]


async def _stored_ids(libpq_url: str, ids: list[str]) -> Counter[str]:
    connection = await asyncpg.connect(libpq_url)
    try:
        rows = await connection.fetch(
            "SELECT signal_id::text FROM logs WHERE signal_id = ANY($1::uuid[])", [uuid.UUID(i) for i in ids]
        )
    finally:
        await connection.close()
    return Counter(row[0] for row in rows)


@pytest.mark.timeout(120)
async def test_database_down_answers_503_and_recovers_without_a_500(cluster: PostgresCluster) -> None:
    url = await asyncio.to_thread(cluster.create_database, "outage")
    key = await asyncio.to_thread(create_key, url, "outage")
    headers = {"X-API-Key": key}
    with server_process({"DATABASE_URL": url}) as server:
        async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=15) as client:
            # Several ORM connections in the pool, each to be killed by the restart below.
            warm = await asyncio.gather(*(client.get("/api/v1/logs") for _ in range(8)))
            assert [r.status_code for r in warm] == [200] * 8

            await asyncio.to_thread(cluster.stop)
            _assert_unavailable(await client.post("/api/v1/ingest/logs", json=_log(str(uuid.uuid4()))))
            _assert_unavailable(await client.get("/api/v1/logs"))
            _assert_unavailable(await client.get("/api/v1/incidents"))
            health = (await client.get("/health")).json()
            assert health["database"]["status"] == "error"
            assert (await client.get("/health/ready")).status_code == 503

            await asyncio.to_thread(cluster.start)
            # The first query on each pooled (now dead) connection: answered, not "connection is closed".
            after = await asyncio.gather(*(client.get("/api/v1/logs") for _ in range(8)))
            assert [r.status_code for r in after] == [200] * 8
            accepted = await client.post("/api/v1/ingest/logs", json=_log(str(uuid.uuid4())))
            assert accepted.status_code == 202, accepted.text


@pytest.mark.timeout(120)
async def test_restart_under_single_event_load_loses_nothing_and_never_answers_500(
    cluster: PostgresCluster,
) -> None:
    url = await asyncio.to_thread(cluster.create_database, "restart")
    key = await asyncio.to_thread(create_key, url, "restart")
    acknowledged: list[str] = []
    statuses: Counter[int] = Counter()
    unavailable_without_retry_after: list[str] = []
    restarted = threading.Event()
    after_restart: Counter[int] = Counter()
    load_flowing = asyncio.Event()

    async def client_loop(client: httpx.AsyncClient, number: int) -> None:
        # Each client runs until the restart is over and it has had two answers since: bounded by the
        # test timeout, and by the clients' own request timeout on every request.
        while after_restart[number] < 2:
            signal_id = str(uuid.uuid4())
            was_restarted = restarted.is_set()
            response = await client.post("/api/v1/ingest/logs", json=_log(signal_id))
            statuses[response.status_code] += 1
            if response.status_code == 202:
                acknowledged.append(signal_id)
                if len(acknowledged) >= 200:
                    load_flowing.set()
            elif response.status_code == 503 and "retry-after" not in response.headers:
                unavailable_without_retry_after.append(response.text)
            if was_restarted and response.status_code == 202:
                after_restart[number] += 1
            if number % 4 == 0:  # a quarter of the clients also query: the ORM path
                query = await client.get("/api/v1/logs", params={"limit": 5})
                statuses[query.status_code] += 1

    with server_process({"DATABASE_URL": url}) as server:
        limits = httpx.Limits(max_connections=CLIENTS)
        async with httpx.AsyncClient(
            base_url=server.base_url, headers={"X-API-Key": key}, timeout=30, limits=limits
        ) as client:
            loops = [asyncio.create_task(client_loop(client, n)) for n in range(CLIENTS)]
            await asyncio.wait_for(load_flowing.wait(), timeout=30)  # load flows before the restart
            await asyncio.to_thread(cluster.restart)
            restarted.set()
            await asyncio.wait_for(asyncio.gather(*loops), timeout=60)

    assert set(statuses) <= {200, 202, 503}, statuses
    assert unavailable_without_retry_after == []
    stored = await _stored_ids(cluster.url.rsplit("/", 1)[0] + "/restart", acknowledged)
    assert len(stored) == len(acknowledged), "an acknowledged signal was lost"
    assert set(stored.values()) == {1}
