"""Grouping (SPEC §13) through a real SAQ worker and real receivers, with intervals of seconds."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import datetime
from typing import Any
from uuid import UUID

from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import func, select

from prodsentinel.lib.database import session_scope
from prodsentinel.lib.time import utcnow
from prodsentinel.notifications import group_flush
from prodsentinel.notifications.models import NotificationGroup, OutboxItem
from prodsentinel.settings import Settings
from tests import workers
from tests.notifications.conftest import CHANNELS, create_channel
from tests.notifications.routing_support import (
    SessionMaker,
    alert,
    emit,
    forget_queue_crons,
    routing_worker,
    worker_process,
)
from tests.receivers import Receiver, Recorded, Reply

Client = AsyncTestClient[Litestar]


def at(request: Recorded) -> float:
    """When the notification was written (its ``occurred_at``): delivery adds its own delay."""
    return datetime.fromisoformat(body(request)["occurred_at"]).timestamp()


def body(request: Recorded) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(request.body)
    return parsed


async def groups_of(session_maker: SessionMaker, channel_id: str) -> int:
    async with session_scope(session_maker) as session:
        count = await session.scalar(
            select(func.count())
            .select_from(NotificationGroup)
            .where(NotificationGroup.channel_id == UUID(channel_id))
        )
    return int(count or 0)


async def test_first_new_alerts_repeat_and_resolved_follow_alertmanager(
    client: Client, admin_key: str, project_id: UUID, session_maker: SessionMaker, settings: Settings
) -> None:
    receiver = Receiver(default=Reply(200)).start()
    try:
        channel = await create_channel(
            client,
            admin_key,
            url=receiver.url,
            group_by=["team"],
            group_wait=1,
            group_interval=2,
            repeat_interval=5,
        )
        assert channel["group_by"] == ["team"]
        async with routing_worker(workers.postgres_queue(settings.database_url), session_maker, settings):
            ids = [uuid.uuid4() for _ in range(4)]
            started = time.time()
            await emit(
                session_maker,
                project_id,
                "ALERT_FIRING",
                *(alert(ids[i], f"a{i}", team="db", instance=f"i{i}") for i in range(3)),
            )
            first = (await receiver.wait_for_async(1, timeout=15))[0]
            assert at(first) - started >= 0.9  # not before group_wait
            event = body(first)
            assert event["grouped"] is True
            assert event["reason"] == "first_notification"
            assert event["event_type"] == "ALERT_FIRING"
            assert event["labels"] == {"team": "db"}
            assert sorted(a["alert_id"] for a in event["alerts"]) == sorted(str(i) for i in ids[:3])
            assert {a["status"] for a in event["alerts"]} == {"firing"}

            await emit(
                session_maker, project_id, "ALERT_FIRING", alert(ids[3], "a3", team="db", instance="i3")
            )
            second = (await receiver.wait_for_async(2, timeout=15))[1]
            assert at(second) - at(first) >= 1.9  # at most once per group_interval
            assert body(second)["reason"] == "new_alerts"
            assert len(body(second)["alerts"]) == 4

            third = (await receiver.wait_for_async(3, timeout=20))[2]
            assert body(third)["reason"] == "repeat"  # nothing changed, repeat_interval passed
            assert at(third) - at(second) >= 4.9

            await emit(
                session_maker,
                project_id,
                "ALERT_RESOLVED",
                *(alert(ids[i], f"a{i}", team="db", instance=f"i{i}") for i in range(4)),
            )
            fourth = (await receiver.wait_for_async(4, timeout=15))[3]
            resolved = body(fourth)
            assert resolved["reason"] == "resolved"
            assert resolved["event_type"] == "ALERT_RESOLVED"
            assert {a["status"] for a in resolved["alerts"]} == {"resolved"}
            for _ in range(100):  # the group is gone once nothing in it fires
                if await groups_of(session_maker, channel["id"]) == 0:
                    break
                await asyncio.sleep(0.1)
            assert await groups_of(session_maker, channel["id"]) == 0
        events = [r.headers["x-prodsentinel-event-id"] for r in receiver.requests]
        assert len(events) == len(set(events)) == 4  # one event id per group notification
    finally:
        receiver.stop()

    response = await client.get("/metrics", headers={"X-API-Key": admin_key})
    text = response.text
    for reason in ("first_notification", "new_alerts", "repeat", "resolved"):
        assert f'prodsentinel_notifications_grouped_total{{reason="{reason}"}}' in text


async def test_an_alert_that_fires_and_resolves_inside_group_wait_is_never_sent(
    client: Client, admin_key: str, project_id: UUID, session_maker: SessionMaker, settings: Settings
) -> None:
    receiver = Receiver(default=Reply(200)).start()
    try:
        channel = await create_channel(client, admin_key, url=receiver.url, group_by=["team"], group_wait=2)
        async with routing_worker(workers.postgres_queue(settings.database_url), session_maker, settings):
            flapping, steady = uuid.uuid4(), uuid.uuid4()
            await emit(session_maker, project_id, "ALERT_FIRING", alert(flapping, "flap", team="db"))
            await emit(session_maker, project_id, "ALERT_RESOLVED", alert(flapping, "flap", team="db"))
            await emit(session_maker, project_id, "ALERT_FIRING", alert(steady, "steady", team="web"))
            [only] = await receiver.wait_for_async(1, timeout=15)
            for _ in range(100):  # the db group was flushed (and dropped): nothing fires in it
                if await groups_of(session_maker, channel["id"]) == 1:
                    break
                await asyncio.sleep(0.1)
            assert await groups_of(session_maker, channel["id"]) == 1
        assert body(only)["labels"] == {"team": "web"}
        assert receiver.count == 1
    finally:
        receiver.stop()


async def test_channels_without_group_by_get_every_transition_and_constraints_are_published(
    client: Client, admin_key: str
) -> None:
    bad = await client.post(
        CHANNELS,
        json={"name": "g", "url": "https://example.com/h", "group_by": []},
        headers={"X-API-Key": admin_key},
    )
    assert bad.status_code == 422
    bad = await client.post(
        CHANNELS,
        json={"name": "g", "url": "https://example.com/h", "group_interval": 0},
        headers={"X-API-Key": admin_key},
    )
    assert bad.status_code == 422
    schema = (await client.get("/schema/openapi.json")).json()["components"]["schemas"]
    create = schema["ChannelCreate"]["properties"]
    assert create["group_wait"]["minimum"] == 0
    assert create["group_interval"]["minimum"] == 1
    channel = await create_channel(client, admin_key, url="https://example.com/h")
    assert channel["group_by"] is None
    assert channel["group_wait"] == 30
    patched = await client.patch(
        f"{CHANNELS}/{channel['id']}",
        json={"group_by": ["service"], "group_wait": 5},
        headers={"X-API-Key": admin_key},
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["group_by"] == ["service"]
    assert patched.json()["group_wait"] == 5


async def test_two_flushes_at_once_write_each_group_notification_once(
    client: Client, admin_key: str, project_id: UUID, session_maker: SessionMaker
) -> None:
    """The flush's claim (``FOR UPDATE SKIP LOCKED``) alone, without the lease: two concurrent
    transactions never flush one group twice."""
    channel = await create_channel(
        client, admin_key, url="https://example.com/g", group_by=["team"], group_wait=0
    )
    await emit(
        session_maker,
        project_id,
        "ALERT_FIRING",
        *(alert(uuid.uuid4(), "a", team=f"t{i}") for i in range(40)),
    )

    async def flush() -> int:
        async with session_scope(session_maker) as session:
            _, notified = await group_flush.flush_batch(session, now=utcnow(), limit=25)
            await asyncio.sleep(0.2)  # hold the claim while the other transaction claims
        return notified

    first, second = await asyncio.gather(flush(), flush())
    assert first + second == 40
    async with session_scope(session_maker) as session:
        items = list(
            await session.scalars(select(OutboxItem).where(OutboxItem.channel_id == UUID(channel["id"])))
        )
    assert len(items) == 40
    assert len({i.event_id for i in items}) == 40


async def test_two_worker_processes_send_each_group_notification_once(
    client: Client, admin_key: str, project_id: UUID, session_maker: SessionMaker, settings: Settings
) -> None:
    await forget_queue_crons(session_maker)
    queue_name = f"grp-{uuid.uuid4().hex[:6]}"
    with Receiver(default=Reply(200)) as receiver:
        await create_channel(
            client, admin_key, url=receiver.url, group_by=["team"], group_wait=1, group_interval=1
        )
        async with (
            worker_process(settings.database_url, queue_name),
            worker_process(settings.database_url, queue_name),
        ):
            for wave in range(3):  # 30 groups of 2 alerts, in three writes while both workers run
                await emit(
                    session_maker, project_id, "ALERT_FIRING",
                    *(alert(uuid.uuid4(), f"a{k}", team=f"t{wave}-{i}") for i in range(10) for k in range(2)),
                )  # fmt: skip
            requests = await receiver.wait_for_async(30, timeout=60)
            for _ in range(100):  # every item delivered: nothing more is coming
                async with session_scope(session_maker) as session:
                    waiting = await session.scalar(
                        select(func.count())
                        .select_from(OutboxItem)
                        .where(OutboxItem.project_id == project_id, OutboxItem.status != "delivered")
                    )
                if not waiting:
                    break
                await asyncio.sleep(0.1)
        await forget_queue_crons(session_maker, queue_name)
    requests = receiver.requests
    teams = [json.dumps(body(r)["labels"], sort_keys=True) for r in requests]
    assert len(teams) == len(set(teams)) == 30  # one first notification per group, none twice
    assert {body(r)["reason"] for r in requests} == {"first_notification"}


async def test_grouped_slack_message_and_one_pagerduty_dedup_key_per_group(
    client: Client, admin_key: str, project_id: UUID, session_maker: SessionMaker, settings: Settings
) -> None:
    slack_bodies: list[tuple[str, dict[str, Any]]] = []

    def slack_api(request: Recorded) -> Reply:
        sent = body(request)
        slack_bodies.append((request.path, sent))
        answer = {"ok": True, "channel": "C0ALERTS", "ts": sent.get("ts") or "1700000000.000001"}
        return Reply(200, body=json.dumps(answer).encode())

    def pagerduty(request: Recorded) -> Reply:
        return Reply(
            202, body=json.dumps({"status": "success", "dedup_key": body(request)["dedup_key"]}).encode()
        )

    with Receiver(responder=slack_api) as slack, Receiver(responder=pagerduty) as pd:
        settings = settings.with_overrides(
            slack_api_url=f"{slack.base}/api", pagerduty_url=f"{pd.base}/v2/enqueue"
        )
        grouping = {"group_by": ["team"], "group_wait": 1, "group_interval": 1}
        await create_channel(
            client, admin_key, kind="slack", token="xoxb-1", slack_channel="#alerts", **grouping
        )
        await create_channel(client, admin_key, kind="pagerduty", routing_key="R" * 32, **grouping)
        ids = [uuid.uuid4(), uuid.uuid4()]
        async with routing_worker(workers.postgres_queue(settings.database_url), session_maker, settings):
            await emit(
                session_maker,
                project_id,
                "ALERT_FIRING",
                *(alert(i, f"a{n}", team="db") for n, i in enumerate(ids)),
            )
            await slack.wait_for_async(1, timeout=15)
            await pd.wait_for_async(1, timeout=15)
            await emit(
                session_maker,
                project_id,
                "ALERT_RESOLVED",
                *(alert(i, f"a{n}", team="db") for n, i in enumerate(ids)),
            )
            await slack.wait_for_async(2, timeout=15)
            await pd.wait_for_async(2, timeout=15)
    (post_path, posted), (update_path, updated) = slack_bodies
    assert post_path == "/api/chat.postMessage"
    assert posted["text"].startswith("[FIRING:2] team=db")
    assert update_path == "/api/chat.update"  # the resolution rewrites the group's message
    assert updated["ts"] == "1700000000.000001"
    assert updated["text"].startswith("[RESOLVED] team=db")
    pd_bodies = [body(r) for r in pd.requests]
    assert [b["event_action"] for b in pd_bodies] == ["trigger", "resolve"]
    assert len({b["dedup_key"] for b in pd_bodies}) == 1
    assert ":group:" in pd_bodies[0]["dedup_key"]
    assert "Reason" in pd_bodies[0]["payload"]["custom_details"]
