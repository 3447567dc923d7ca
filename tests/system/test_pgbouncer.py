"""The service behind a real PgBouncer in transaction pooling mode (SPEC §16, docs/scaling.md "PgBouncer").

A granian server (API + in-process SAQ workers, queue and events on Redis) whose ``DATABASE_URL`` is
PgBouncer with ``PRODSENTINEL_DATABASE_POOLER=pgbouncer`` runs the smoke path: ingest (single events,
the group-commit ``INSERT`` and a batch large enough for the ``COPY`` path, a resend counted as
duplicates), queries, an incident from the grouping job, an alert evaluation and the signed webhooks the
dispatcher sends. PgBouncer gives its few server connections to whichever client is next, so a named
prepared statement or session state left behind would fail a later transaction of another client.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
from saq import Queue

from prodsentinel.lib.database import asyncpg_pool_args, engine_connect_args, libpq_url
from prodsentinel.settings import Settings, SettingsError, load_settings
from tests.conftest import KeyFactory
from tests.receivers import Receiver
from tests.system.pgbouncer import pgbouncer
from tests.system.servers import granian_server
from tests.system.test_events import sse_messages
from tests.workers import wait_until_serving


def _log(level: str, message: str) -> dict[str, Any]:
    return {
        "signal_id": str(uuid.uuid4()),
        "service_name": "checkout",
        "timestamp": datetime.now(UTC).isoformat(),
        "level": level,
        "message": message,
    }


async def _next_event(messages: AsyncIterator[dict[str, Any]], event_type: str) -> dict[str, Any]:
    async for message in messages:
        if message["event"] == event_type:
            data: dict[str, Any] = json.loads(message["data"])
            return data
    raise AssertionError(f"stream ended before {event_type}")


class TestSettings:
    def test_pgbouncer_needs_a_direct_url(self) -> None:
        with pytest.raises(SettingsError, match="PRODSENTINEL_DATABASE_DIRECT_URL"):
            load_settings(
                {
                    "DATABASE_URL": "postgresql://u@bouncer:6432/db",
                    "PRODSENTINEL_DATABASE_POOLER": "pgbouncer",
                }
            )

    def test_an_unknown_pooler_is_refused_in_one_line(self) -> None:
        with pytest.raises(SettingsError, match="PRODSENTINEL_DATABASE_POOLER='odyssey'"):
            load_settings({"PRODSENTINEL_DATABASE_POOLER": "odyssey"})

    def test_pgbouncer_turns_both_statement_caches_off(self) -> None:
        settings = load_settings(
            {
                "DATABASE_URL": "postgresql://u@bouncer:6432/db",
                "PRODSENTINEL_DATABASE_POOLER": "pgbouncer",
                "PRODSENTINEL_DATABASE_DIRECT_URL": "postgresql://u@db:5432/db",
            }
        )
        assert isinstance(settings, Settings)
        args = engine_connect_args(settings.database_pooler)
        assert args["statement_cache_size"] == 0
        assert args["prepared_statement_cache_size"] == 0
        assert asyncpg_pool_args("pgbouncer") == {"statement_cache_size": 0}
        assert "statement_cache_size" not in engine_connect_args("none")


async def test_asyncpg_defaults_fail_behind_transaction_pooling(postgres_server_url: str) -> None:
    """Why the setting exists: asyncpg's named statements break once connections take turns."""
    with pgbouncer(postgres_server_url) as bouncer:
        url = bouncer.url(postgres_server_url)

        async def run(**kwargs: Any) -> None:
            pool = await asyncpg.create_pool(url, min_size=8, max_size=8, **kwargs)
            try:

                async def client(n: int) -> None:
                    async with pool.acquire() as connection:
                        for i in range(20):
                            await connection.fetch(f"SELECT $1::int + {i % 5}", n)

                await asyncio.gather(*(client(n) for n in range(8)))
            finally:
                await pool.close()

        with pytest.raises(asyncpg.PostgresError, match="prepared statement"):
            await run()
        await run(**asyncpg_pool_args("pgbouncer"))


@pytest.mark.timeout(240)
async def test_smoke_path_through_pgbouncer(
    database_url: str, postgres_server_url: str, redis_url: str, make_key: KeyFactory
) -> None:
    admin = {"X-API-Key": await make_key("admin", "ingest")}
    queue_name = f"pgb-{uuid.uuid4().hex[:8]}"
    queue = Queue.from_url(redis_url, name=queue_name)
    await queue.connect()
    with pgbouncer(postgres_server_url) as bouncer, Receiver() as receiver:
        env = {
            "DATABASE_URL": bouncer.url(libpq_url(database_url)),
            "PRODSENTINEL_DATABASE_POOLER": "pgbouncer",
            "PRODSENTINEL_DATABASE_DIRECT_URL": libpq_url(database_url),
            "REDIS_URL": redis_url,
            "PRODSENTINEL_INPROCESS_WORKERS": "1",
            "PRODSENTINEL_QUEUE_NAME": queue_name,
            "PRODSENTINEL_SSE_KEEPALIVE_SECONDS": "1",
        }
        try:
            with granian_server(env, timeout=90) as base_url:
                async with httpx.AsyncClient(base_url=base_url, timeout=30, headers=admin) as http:
                    await _smoke(http, queue, receiver)
        finally:
            print(bouncer.output()[-5000:])  # shown when the test failed
    await queue.disconnect()

    deliveries = {json.loads(request.body)["event_type"] for request in receiver.requests}
    assert {"INCIDENT_OPENED", "ALERT_FIRING"} <= deliveries
    assert max(receiver.delivery_counts.values()) == 1


async def _smoke(http: httpx.AsyncClient, queue: Queue, receiver: Receiver) -> None:
    channel = await http.post("/api/v1/notifications/channels", json={"name": "oncall", "url": receiver.url})
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
    await wait_until_serving(queue, "evaluate_alerts", timeout=60)

    async with http.stream("GET", "/api/v1/events/stream") as stream:
        assert stream.status_code == 200
        messages = sse_messages(stream)
        # single events at once (one group-commit INSERT for many requests) ...
        singles = [_log("ERROR", f"payment provider timeout after {1000 + i} ms") for i in range(20)]
        answers = await asyncio.gather(*(http.post("/api/v1/ingest/logs", json=item) for item in singles))
        assert [answer.status_code for answer in answers] == [202] * 20
        # ... and a batch over the small-flush size (the probe + COPY path), then its resend
        batch = [_log("INFO", f"request {i} served") for i in range(500)]
        first = await http.post("/api/v1/ingest/logs", json=batch)
        assert first.json() == {"accepted": 500, "duplicates": 0}, first.text
        again = await http.post("/api/v1/ingest/logs", json=batch[:250] + singles[:5])
        assert again.json() == {"accepted": 0, "duplicates": 255}, again.text

        opened = await asyncio.wait_for(_next_event(messages, "incident_opened"), timeout=60)
        assert opened["incident"]["service_name"] == "checkout"

        evaluation = await http.post("/api/v1/alerts/evaluate")
        assert evaluation.status_code == 200, evaluation.text
        firing = await asyncio.wait_for(_next_event(messages, "alert_firing"), timeout=30)
        assert firing["labels"]["alertname"] == "checkout-errors"

    errors = await http.get("/api/v1/logs", params={"service": "checkout", "level": "ERROR", "limit": 100})
    assert errors.status_code == 200, errors.text
    assert len(errors.json()["items"]) == 20
    services = await http.get("/api/v1/services")
    assert services.status_code == 200, services.text
    alerts = await http.get("/api/v1/alerts/active")
    assert alerts.status_code == 200, alerts.text
    assert [alert["state"] for alert in alerts.json()["items"]] == ["firing"]
    await receiver.wait_for_async(2, timeout=60)
