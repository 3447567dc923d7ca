"""Deleting a policy through the real API resolves its firing alerts like every other transition.

The server is a real granian process; it enqueues the dispatcher's job after the DELETE's commit
(``notifications.outbox.add_event`` registers it on ``lib.after_commit``) and publishes the
``alert_resolved`` live event the same way. A real SAQ worker, started on that queue afterwards,
delivers the events to a real receiver. Before ``lib.after_commit`` the DELETE woke nothing: the
ALERT_RESOLVED waited for the next cron tick and no live event was published.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.lib import events
from prodsentinel.lib.database import libpq_url
from prodsentinel.lib.time import utcnow
from prodsentinel.notifications import tasks as notification_tasks
from prodsentinel.settings import Settings
from tests.alerts.conftest import Seeder, evaluate_at
from tests.conftest import Tenant
from tests.receivers import Receiver
from tests.system.servers import granian_server
from tests.workers import postgres_queue, running_worker

POLICIES = "/api/v1/alerts/policies"
CHANNELS = "/api/v1/notifications/channels"


async def test_deleting_a_policy_wakes_the_dispatcher_and_publishes_live_events(
    database_url: str,
    settings: Settings,
    session_maker: async_sessionmaker[AsyncSession],
    tenant: Tenant,
    seed: Seeder,
) -> None:
    queue = postgres_queue(database_url, "alerts-delete")
    env = {"DATABASE_URL": database_url, "PRODSENTINEL_QUEUE_NAME": queue.name, "REDIS_URL": ""}
    receiver = Receiver().start()
    await queue.connect()
    listener = await asyncpg.connect(libpq_url(database_url))
    live: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

    def on_notify(_connection: object, _pid: int, _channel: str, payload: str) -> None:
        event_type, data = events.decode_event(payload.encode())
        live.put_nowait((event_type, json.loads(data)))

    await listener.add_listener(events.channel_for(tenant.project_id), on_notify)
    try:
        with granian_server(env) as base_url:
            async with httpx.AsyncClient(base_url=base_url, headers=tenant.admin, timeout=20) as http:
                channel = {"name": "hook", "url": receiver.url, "secret": "0123456789abcdef"}
                assert (await http.post(CHANNELS, json=channel)).status_code == 201
                body = {"name": "incidents", "kind": "incident", "severity": "high", "min_severity": "low"}
                created = await http.post(POLICIES, json=body)
                assert created.status_code == 201, created.text
                t0 = utcnow()
                await seed.incident(at=t0)
                # Evaluated in this process, which has no queue bound: the ALERT_FIRING waits in the outbox.
                summary = await evaluate_at(session_maker, tenant, t0)
                assert (summary.fired, summary.notified) == (1, 1)
                assert await queue.count("queued") == 0

                deleted = await http.delete(f"{POLICIES}/{created.json()['id']}")
                assert deleted.status_code == 204

                # The server enqueued the dispatcher after the DELETE's commit; the after-commit work of a
                # request runs before its response starts, so the job is there when the 204 arrives ...
                assert await queue.count("queued") == 1
                # ... and published the resolution live.
                event_type, data = await asyncio.wait_for(live.get(), timeout=20)
        assert event_type == "alert_resolved"
        assert (data["reason"], data["state"], data["policy_name"]) == (
            "policy_deleted",
            "resolved",
            "incidents",
        )

        # A worker started now runs that job: both events reach the receiver (no cron job here).
        worker_settings = settings.with_overrides(notify_timeout_seconds=2.0)
        functions = notification_tasks.TASKS
        async with running_worker(
            queue, functions=functions, session_maker=session_maker, settings=worker_settings
        ):
            requests = await receiver.wait_for_async(2, timeout=20)
        bodies = [json.loads(request.body) for request in requests]
        assert sorted((b["event_type"], b.get("reason")) for b in bodies) == [
            ("ALERT_FIRING", None),
            ("ALERT_RESOLVED", "policy_deleted"),
        ]
        assert {b["alert_id"] for b in bodies} == {data["alert_id"]}
    finally:
        await listener.close()
        await queue.disconnect()
        receiver.stop()
