"""Escalation policies (SPEC §13): API, steps through a real worker, ack cancelling, SIGKILL between steps."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime, timedelta
from typing import Any

from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import func, select

from prodsentinel.audit.models import AuditEvent
from prodsentinel.lib.time import utcnow
from prodsentinel.notifications.models import EscalationStep
from prodsentinel.settings import Settings
from prodsentinel.system.models import SchedulerTick
from tests import workers
from tests.alerts.conftest import Seeder
from tests.alerts.test_alerts_api import fire
from tests.conftest import Tenant
from tests.notifications.conftest import create_channel
from tests.notifications.routing_support import (
    SessionMaker,
    forget_queue_crons,
    routing_worker,
    worker_process,
)
from tests.receivers import Receiver, Recorded, Reply

Client = AsyncTestClient[Litestar]
ESCALATIONS = "/api/v1/notifications/escalations"


def body(request: Recorded) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(request.body)
    return parsed


async def escalation(
    client: Client, tenant: Tenant, name: str, steps: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    response = await client.post(
        ESCALATIONS,
        json={
            "name": f"esc-{uuid.uuid4().hex[:6]}",
            "matchers": [{"name": "alertname", "op": "=", "value": name}],
            "steps": steps,
            **extra,
        },
        headers=tenant.admin,
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def steps_of(session_maker: SessionMaker, tenant: Tenant, status: str) -> int:
    async with session_maker() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(EscalationStep)
            .where(EscalationStep.project_id == tenant.project_id, EscalationStep.status == status)
        )
    return int(count or 0)


async def ticked_after(session_maker: SessionMaker, moment: datetime, timeout: float = 20) -> None:
    """Wait until the escalation cron ran after ``moment`` (a real signal that a due step was looked at)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        async with session_maker() as session:
            tick = await session.scalar(
                select(SchedulerTick.last_tick_at).where(SchedulerTick.loop == "escalations")
            )
        if tick is not None and tick > moment:
            return
        await asyncio.sleep(0.2)
    raise AssertionError("the escalation cron did not run")


async def test_the_api_checks_and_audits(
    client: Client, tenant: Tenant, other_tenant: Tenant, session_maker: SessionMaker
) -> None:
    a = await create_channel(client, tenant.admin["X-API-Key"], url="https://example.com/a")
    for bad in (
        [{"after_seconds": 5, "channel_ids": [a["id"]]}],  # step 0 must be at once
        [{"after_seconds": 0, "channel_ids": [a["id"]]}, {"after_seconds": 0, "channel_ids": [a["id"]]}],
        [{"after_seconds": 0, "channel_ids": [str(uuid.uuid4())]}],
        [],
    ):
        response = await client.post(ESCALATIONS, json={"name": "x", "steps": bad}, headers=tenant.admin)
        assert response.status_code == 422, response.text
    assert (
        await client.post(ESCALATIONS, json={"name": "x", "steps": []}, headers=tenant.read)
    ).status_code == 403
    created = await escalation(
        client, tenant, "db", [{"after_seconds": 0, "channel_ids": [a["id"]]}], repeat=2
    )
    assert created["repeat"] == 2
    assert created["repeat_after_seconds"] == 300
    path = f"{ESCALATIONS}/{created['id']}"
    assert (await client.get(path, headers=other_tenant.read)).status_code == 404
    patched = await client.patch(path, json={"repeat": 0}, headers=tenant.admin)
    assert patched.status_code == 200
    assert patched.json()["repeat"] == 0
    listed = (await client.get(ESCALATIONS, headers=tenant.read)).json()["items"]
    assert [e["id"] for e in listed] == [created["id"]]
    assert (await client.delete(path, headers=tenant.admin)).status_code == 204
    async with session_maker() as session:
        rows = await session.scalars(
            select(AuditEvent).where(
                AuditEvent.project_id == tenant.project_id, AuditEvent.subject_type == "escalation"
            )
        )
        audit = [(row.action, row.actor) for row in rows]
    assert {action for action, _ in audit} == {
        "escalation.created",
        "escalation.updated",
        "escalation.deleted",
    }
    assert all(actor.startswith("key:") for _, actor in audit)


async def test_step_1_reaches_b_only_after_its_delay_when_nobody_acked(
    client: Client, tenant: Tenant, session_maker: SessionMaker, settings: Settings
) -> None:
    with Receiver(default=Reply(200)) as a, Receiver(default=Reply(200)) as b:
        channel_a = await create_channel(client, tenant.admin["X-API-Key"], url=a.url)
        channel_b = await create_channel(client, tenant.admin["X-API-Key"], url=b.url)
        name = f"p-{uuid.uuid4().hex[:6]}"
        await escalation(
            client,
            tenant,
            name,
            [
                {"after_seconds": 0, "channel_ids": [channel_a["id"]]},
                {"after_seconds": 2, "channel_ids": [channel_b["id"]]},
            ],
        )
        async with routing_worker(workers.postgres_queue(settings.database_url), session_maker, settings):
            await fire(
                client,
                tenant,
                Seeder(session_maker, tenant.project_id),
                session_maker,
                name=name,
                severity="high",
            )
            [first] = await a.wait_for_async(1, timeout=15)
            [second] = await b.wait_for_async(1, timeout=15)
        assert body(first)["escalation"]["step"] == 0
        assert body(first)["event_type"] == "ALERT_FIRING"
        assert body(second)["escalation"]["step"] == 1
        delay = datetime.fromisoformat(body(second)["occurred_at"]) - datetime.fromisoformat(
            body(first)["occurred_at"]
        )
        assert delay >= timedelta(seconds=1.9)
        assert a.count == 1  # A hears the alert through step 0 only, never directly
        assert first.headers["x-prodsentinel-event-id"] != second.headers["x-prodsentinel-event-id"]
    metrics = (await client.get("/metrics", headers=tenant.read)).text
    assert 'prodsentinel_escalation_steps_total{step="1"}' in metrics


async def test_an_ack_before_the_delay_means_b_never_gets_it(
    client: Client, tenant: Tenant, session_maker: SessionMaker, settings: Settings
) -> None:
    with Receiver(default=Reply(200)) as a, Receiver(default=Reply(200)) as b:
        channel_a = await create_channel(client, tenant.admin["X-API-Key"], url=a.url)
        channel_b = await create_channel(client, tenant.admin["X-API-Key"], url=b.url)
        name = f"p-{uuid.uuid4().hex[:6]}"
        await escalation(
            client,
            tenant,
            name,
            [
                {"after_seconds": 0, "channel_ids": [channel_a["id"]]},
                {"after_seconds": 3, "channel_ids": [channel_b["id"]]},
            ],
        )
        async with routing_worker(workers.postgres_queue(settings.database_url), session_maker, settings):
            alert = await fire(
                client, tenant, Seeder(session_maker, tenant.project_id), session_maker, name=name
            )
            await a.wait_for_async(1, timeout=15)
            acked = await client.post(f"/api/v1/alerts/{alert['id']}/ack", headers=tenant.operate)
            assert acked.status_code == 200, acked.text
            assert await steps_of(session_maker, tenant, "cancelled") == 1
            await ticked_after(session_maker, utcnow() + timedelta(seconds=3.5))  # past step 1's due time
        assert b.count == 0


async def test_a_worker_killed_between_steps_still_sends_step_2_once_after_restart(
    client: Client, tenant: Tenant, session_maker: SessionMaker, settings: Settings
) -> None:
    await forget_queue_crons(session_maker)
    queue_name = f"esc-kill-{uuid.uuid4().hex[:6]}"
    with Receiver(default=Reply(200)) as a, Receiver(default=Reply(200)) as b:
        channel_a = await create_channel(client, tenant.admin["X-API-Key"], url=a.url)
        channel_b = await create_channel(client, tenant.admin["X-API-Key"], url=b.url)
        name = f"p-{uuid.uuid4().hex[:6]}"
        await escalation(
            client,
            tenant,
            name,
            [
                {"after_seconds": 0, "channel_ids": [channel_a["id"]]},
                {"after_seconds": 6, "channel_ids": [channel_b["id"]]},
            ],
        )
        async with worker_process(settings.database_url, queue_name) as first_worker:
            await ticked_after(session_maker, utcnow(), timeout=60)  # the worker process is up
            fired_at = utcnow()
            await fire(client, tenant, Seeder(session_maker, tenant.project_id), session_maker, name=name)
            await a.wait_for_async(1, timeout=30)  # step 0 delivered by the worker process
            first_worker.kill()  # SIGKILL between step 0 and step 1
            await first_worker.wait()
        assert b.count == 0
        assert await steps_of(session_maker, tenant, "pending") == 1
        await forget_queue_crons(session_maker, queue_name)
        async with worker_process(settings.database_url, queue_name):
            [step] = await b.wait_for_async(1, timeout=40)
            await ticked_after(session_maker, utcnow() + timedelta(seconds=1), timeout=30)
        await forget_queue_crons(session_maker, queue_name)
        assert body(step)["escalation"]["step"] == 1
        assert datetime.fromisoformat(body(step)["occurred_at"]) - fired_at >= timedelta(seconds=5.9)
        assert b.count == 1
