"""Redis stopped under a real server with ``REDIS_URL`` set: the API keeps answering, no work is lost.

Redis holds the rate-limit counters, the SAQ queue and the SSE fan-out, never data: queries, acks and
admin calls keep working while it is away (rate limits per process meanwhile), /health says redis
``error``, and an error ingested while no job could be enqueued still becomes an incident once Redis is
back (the grouping cron finds it by its high-water mark in PostgreSQL).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest

from tests.faults.services import RedisServer, create_key, poll, server_process


def _error_log(service: str) -> dict[str, object]:
    return {
        "signal_id": str(uuid.uuid4()),
        "timestamp": datetime.now(UTC).isoformat(),
        "service_name": service,
        "level": "ERROR",
        "message": "payment declined by upstream",
    }


def _incident_of(client: httpx.Client, service: str) -> Callable[[], bool]:
    def found() -> bool:
        items = client.get("/api/v1/incidents").json()["items"]
        return any(item["service_name"] == service for item in items)

    return found


@pytest.mark.timeout(120)
def test_api_keeps_working_without_redis_and_grouping_catches_up(
    database_url: str, project_name: str
) -> None:
    key = create_key(database_url, project_name, ("admin", "ingest", "operate"))
    redis = RedisServer()
    redis.start()
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis.url,
        "PRODSENTINEL_INPROCESS_WORKERS": "1",
        "PRODSENTINEL_QUEUE_NAME": f"faults-{uuid.uuid4().hex[:8]}",
        "PRODSENTINEL_RATE_LIMIT": "100000/minute",
    }
    before, during = f"before-{uuid.uuid4().hex[:8]}", f"during-{uuid.uuid4().hex[:8]}"
    try:
        with (
            server_process(env) as server,
            httpx.Client(base_url=server.base_url, headers={"X-API-Key": key}, timeout=15) as client,
        ):
            assert client.post("/api/v1/ingest/logs", json=_error_log(before)).status_code == 202
            poll(_incident_of(client, before), timeout=30, what="the incident of an error (Redis up)")
            assert client.get("/health").json()["redis"]["status"] == "ok"

            redis.stop()
            health = client.get("/health").json()
            assert health["redis"]["status"] == "error"
            assert health["status"] == "degraded"
            assert client.get("/api/v1/logs").status_code == 200
            incidents = client.get("/api/v1/incidents")
            assert incidents.status_code == 200
            incident = next(i for i in incidents.json()["items"] if i["service_name"] == before)
            acked = client.post(f"/api/v1/incidents/{incident['id']}/ack")
            assert acked.status_code == 200, acked.text
            created = client.post("/api/v1/keys", json={"name": "while-redis-down", "scopes": ["read"]})
            assert created.status_code == 201, created.text
            # Ingest never needed Redis; the job this error announces cannot be enqueued now.
            assert client.post("/api/v1/ingest/logs", json=_error_log(during)).status_code == 202

            redis.start()  # the same port, empty: whatever was queued is gone
            poll(_incident_of(client, during), timeout=45, what="grouping to catch up once Redis is back")
            assert client.get("/health").json()["redis"]["status"] == "ok"
    finally:
        redis.stop()
