"""The whole path on a real server, as a user runs it: granian + in-process SAQ workers.

ingest (HTTP) -> grouping job -> incident (SSE ``incident_opened``, outbox ``INCIDENT_OPENED``)
-> alert evaluation -> ``ALERT_FIRING`` outbox item -> dispatch job -> a signed webhook received by a
real HTTP server of the test, whose signature the test verifies independently. Run with the queue on
PostgreSQL and on Redis.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from saq import Queue

from tests.conftest import KeyFactory
from tests.receivers import Receiver, Recorded
from tests.system.servers import granian_server
from tests.system.test_events import sse_messages
from tests.workers import postgres_queue, wait_until_serving

SECRET = "e2e-signing-secret-0123456789"


@pytest.fixture(params=["postgres", "redis"])
def queue_backend(request: pytest.FixtureRequest) -> str | None:
    """The server's ``REDIS_URL``: none (the queue on PostgreSQL) or the test Redis."""
    if request.param == "redis":
        url: str = request.getfixturevalue("redis_url")
        return url
    return None


@pytest.fixture
async def server_queue(queue_backend: str | None, database_url: str) -> AsyncIterator[Queue]:
    """A handle on the queue the server under test will consume (its name is the server's queue name)."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    queue = (
        Queue.from_url(queue_backend, name=name) if queue_backend else postgres_queue(database_url, name=name)
    )
    await queue.connect()
    yield queue
    await queue.disconnect()


def expected_signature(request: Recorded) -> str:
    timestamp = request.headers["x-prodsentinel-timestamp"]
    digest = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + request.body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def error_logs(count: int) -> list[dict[str, Any]]:
    now = datetime.now(UTC).isoformat()
    return [
        {
            "signal_id": str(uuid.uuid4()),
            "trace_id": uuid.uuid4().hex,
            "service_name": "checkout",
            "timestamp": now,
            "level": "ERROR",
            "message": f"payment provider timeout after {1000 + i} ms for order {uuid.uuid4()}",
        }
        for i in range(count)
    ]


async def next_event(messages: AsyncIterator[dict[str, Any]], event_type: str) -> dict[str, Any]:
    async for message in messages:
        if message["event"] == event_type:
            data: dict[str, Any] = json.loads(message["data"])
            return data
    raise AssertionError(f"stream ended before {event_type}")


@pytest.mark.timeout(180)
async def test_ingest_to_signed_webhook_and_live_events(
    queue_backend: str | None, server_queue: Queue, database_url: str, make_key: KeyFactory
) -> None:
    admin = {"X-API-Key": await make_key("admin", "ingest")}
    env = {
        "DATABASE_URL": database_url,
        "PRODSENTINEL_INPROCESS_WORKERS": "1",
        "PRODSENTINEL_QUEUE_NAME": server_queue.name,
        "PRODSENTINEL_SSE_KEEPALIVE_SECONDS": "1",
    }
    if queue_backend:
        env["REDIS_URL"] = queue_backend
    with Receiver() as receiver, granian_server(env, timeout=90) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=30, headers=admin) as http:
            channel = await http.post(
                "/api/v1/notifications/channels",
                json={"name": "oncall", "url": receiver.url + "/hook", "secret": SECRET},
            )
            assert channel.status_code == 201, channel.text
            policy = await http.post(
                "/api/v1/alerts/policies",
                json={
                    "name": "checkout-errors",
                    "kind": "log_rate",
                    "severity": "high",
                    "service": "checkout",
                    "operator": ">=",
                    "threshold": 3,
                },
            )
            assert policy.status_code == 201, policy.text
            # the in-process worker has started (SAQ "swept" race) once it ran a harmless job of ours
            await wait_until_serving(server_queue, "evaluate_alerts", timeout=60)

            async with http.stream("GET", "/api/v1/events/stream") as stream:
                assert stream.status_code == 200
                messages = sse_messages(stream)
                accepted = await http.post("/api/v1/ingest/logs", json=error_logs(5))
                assert accepted.status_code == 202, accepted.text
                assert accepted.json() == {"accepted": 5, "duplicates": 0}

                opened = await asyncio.wait_for(next_event(messages, "incident_opened"), timeout=60)
                assert opened["incident"]["service_name"] == "checkout"
                assert opened["incident"]["count"] == 5

                evaluation = await http.post("/api/v1/alerts/evaluate")
                assert evaluation.status_code == 200, evaluation.text
                firing = await asyncio.wait_for(next_event(messages, "alert_firing"), timeout=30)
                assert firing["labels"]["alertname"] == "checkout-errors"

            # No event filter: every event (the incident, its problem of SPEC §14, the alert).
            deliveries = await receiver.wait_for_async(3, timeout=60)
            incidents = (await http.get("/api/v1/incidents", params={"service": "checkout"})).json()["items"]
            assert [incident["count"] for incident in incidents] == [5]

    bodies = {json.loads(request.body)["event_type"]: request for request in deliveries}
    assert set(bodies) == {"INCIDENT_OPENED", "PROBLEM_OPENED", "ALERT_FIRING"}
    for event_type, request in bodies.items():
        assert request.headers["x-prodsentinel-signature"] == expected_signature(request), event_type
        body = json.loads(request.body)
        assert request.headers["x-prodsentinel-event-id"] == body["event_id"]
        assert request.headers["x-prodsentinel-delivery-id"]
    alert = json.loads(bodies["ALERT_FIRING"].body)
    assert alert["policy_name"] == "checkout-errors"
    assert alert["labels"] == {"alertname": "checkout-errors", "severity": "high", "service": "checkout"}
    assert alert["value"] == 5
