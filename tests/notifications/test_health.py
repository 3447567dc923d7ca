"""Endpoint health, the egress guard and per-channel Retry-After (SPEC §12), against real receivers."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from uuid import UUID

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.app import create_app
from prodsentinel.audit.models import AuditEvent
from prodsentinel.lib.database import session_scope
from prodsentinel.notifications import dispatcher, egress
from prodsentinel.notifications.models import Channel
from prodsentinel.settings import Settings
from tests.notifications.conftest import CHANNELS, add_events, create_channel, dispatch_until, ledger, outbox
from tests.receivers import Receiver, Reply

SessionMaker = async_sessionmaker[AsyncSession]
Client = AsyncTestClient[Litestar]


async def channel_row(session_maker: SessionMaker, channel_id: str) -> Channel:
    async with session_scope(session_maker) as session:
        channel = await session.scalar(select(Channel).where(Channel.id == UUID(channel_id)))
        assert channel is not None
        return channel


async def test_a_410_disables_the_channel_at_once_and_tells_the_other_channels(
    client: Client,
    admin_key: str,
    project_id: UUID,
    session_maker: SessionMaker,
    fast_settings: Settings,
    receivers: Callable[..., Receiver],
) -> None:
    gone_hook, other_hook = receivers(default=Reply(410)), receivers()
    gone = await create_channel(client, admin_key, url=gone_hook.url, event_types=["ALERT_FIRING"])
    other = await create_channel(client, admin_key, url=other_hook.url, event_types=["CHANNEL_DISABLED"])
    await add_events(session_maker, project_id, 3)
    # One dispatch pass: the first 410 disables the channel, its other items go dead unsent.
    await dispatcher.run_dispatch(
        session_maker,
        fast_settings.with_overrides(notify_concurrency=1, notify_batch_size=1),
        project_id=project_id,
        max_seconds=5,
    )
    items = await dispatch_until(
        session_maker,
        fast_settings,
        project_id,
        lambda items: all(i.status in ("delivered", "dead") for i in items),
    )
    mine = [i for i in items if str(i.channel_id) == gone["id"]]
    assert [i.status for i in mine] == ["dead"] * 3
    assert sorted(i.last_error_code or "" for i in mine) == [
        "channel_disabled",
        "channel_disabled",
        "http_4xx",
    ]
    assert gone_hook.count == 1
    row = await channel_row(session_maker, gone["id"])
    assert row.enabled is False
    assert row.disabled_reason == "the receiver answered 410 Gone"
    (notice,) = [i for i in items if str(i.channel_id) == other["id"]]
    assert notice.event_type == "CHANNEL_DISABLED"
    assert notice.status == "delivered"
    assert notice.payload["channel"]["id"] == gone["id"]
    async with session_scope(session_maker) as session:
        audit = list(
            await session.scalars(select(AuditEvent).where(AuditEvent.subject_id == UUID(gone["id"])))
        )
    assert [(a.action, a.details["reason"]) for a in audit] == [("channel.disabled", row.disabled_reason)]

    listed = (await client.get(f"{CHANNELS}/{gone['id']}", headers={"X-API-Key": admin_key})).json()
    assert (listed["enabled"], listed["disabled_reason"]) == (False, row.disabled_reason)
    gone_hook.script(default=Reply(200))
    patched = await client.patch(
        f"{CHANNELS}/{gone['id']}", json={"enabled": True}, headers={"X-API-Key": admin_key}
    )
    assert patched.status_code == 200
    assert (patched.json()["enabled"], patched.json()["disabled_reason"]) == (True, None)
    await add_events(session_maker, project_id, 1)
    await dispatch_until(
        session_maker,
        fast_settings,
        project_id,
        lambda items: any(i.status == "delivered" and str(i.channel_id) == gone["id"] for i in items),
    )


async def test_persistent_failure_disables_after_the_time_and_the_count(
    client: Client,
    admin_key: str,
    project_id: UUID,
    session_maker: SessionMaker,
    fast_settings: Settings,
    receivers: Callable[..., Receiver],
) -> None:
    hook = receivers(default=Reply(500))
    channel = await create_channel(client, admin_key, url=hook.url)
    await add_events(session_maker, project_id, 1)
    patient = fast_settings.with_overrides(channel_disable_min_failures=3, channel_disable_after_seconds=3600)
    await dispatch_until(session_maker, patient, project_id, lambda items: items[0].status == "dead")
    assert (
        await channel_row(session_maker, channel["id"])
    ).enabled is True  # 3 failures, but not for an hour

    strict = fast_settings.with_overrides(channel_disable_min_failures=4, channel_disable_after_seconds=0)
    await add_events(session_maker, project_id, 1)
    await dispatch_until(
        session_maker, strict, project_id, lambda items: all(i.status == "dead" for i in items)
    )
    row = await channel_row(session_maker, channel["id"])
    assert row.enabled is False
    assert row.disabled_reason is not None
    assert row.disabled_reason.startswith("every attempt failed for")
    assert len(await ledger(session_maker, project_id)) == 4  # disabled at the 4th failure


async def test_link_local_destinations_are_refused_at_create_and_at_delivery(
    client: Client,
    admin_key: str,
    project_id: UUID,
    session_maker: SessionMaker,
    fast_settings: Settings,
    receivers: Callable[..., Receiver],
) -> None:
    for url in (
        "http://169.254.169.254/latest/meta-data",
        "http://[fe80::1]/hook",
        "http://[::ffff:169.254.1.1]/",
    ):
        response = await client.post(
            CHANNELS, json={"name": "meta", "url": url}, headers={"X-API-Key": admin_key}
        )
        assert response.status_code == 422, url
        assert "link-local" in response.json()["detail"]
    hook = receivers()
    channel = await create_channel(client, admin_key, url=hook.url)
    async with session_scope(session_maker) as session:  # as if its name resolved elsewhere later
        await session.execute(
            update(Channel).where(Channel.id == UUID(channel["id"])).values(url="http://169.254.169.254/x")
        )
    await add_events(session_maker, project_id, 1)
    (item,) = await dispatch_until(
        session_maker, fast_settings, project_id, lambda items: items[0].status == "dead"
    )
    assert (item.attempts, item.last_error_code) == (1, "blocked_destination")


async def test_block_private_refuses_loopback(
    admin_key: str, settings: Settings, session_maker: SessionMaker, project_id: UUID, fast_settings: Settings
) -> None:
    with pytest.raises(egress.BlockedDestinationError):
        await egress.resolve("127.0.0.1", 80, block_private=True)
    assert await egress.resolve("127.0.0.1", 80, block_private=False) == "127.0.0.1"
    assert egress.blocked_reason("10.1.2.3", block_private=True) == "10.1.2.3 is a private address"
    assert egress.blocked_reason("8.8.8.8", block_private=True) is None
    app = create_app(settings.with_overrides(notify_block_private=True))
    async with AsyncTestClient(app) as guarded:
        response = await guarded.post(
            CHANNELS, json={"name": "l", "url": "http://127.0.0.1:9/h"}, headers={"X-API-Key": admin_key}
        )
    assert response.status_code == 422
    assert "loopback" in response.json()["detail"]


async def test_retry_after_on_429_pauses_that_channel_only(
    client: Client,
    admin_key: str,
    project_id: UUID,
    session_maker: SessionMaker,
    fast_settings: Settings,
    receivers: Callable[..., Receiver],
) -> None:
    busy_hook, calm_hook = receivers(default=Reply(429, headers={"Retry-After": "120"})), receivers()
    busy = await create_channel(client, admin_key, url=busy_hook.url)
    await create_channel(client, admin_key, url=calm_hook.url)
    serial = fast_settings.with_overrides(notify_batch_size=1, notify_concurrency=1)
    await add_events(session_maker, project_id, 3)
    await dispatcher.run_dispatch(session_maker, serial, project_id=project_id, max_seconds=5)
    items = await outbox(session_maker, project_id)
    assert busy_hook.count == 1  # the first 429 paused the channel: its other items waited
    assert calm_hook.count == 3
    row = await channel_row(session_maker, busy["id"])
    assert row.throttled_until is not None
    mine = [i for i in items if str(i.channel_id) == busy["id"]]
    assert sorted(i.status for i in mine) == ["pending", "pending", "retrying"]
    assert uuid.UUID(busy["id"]) == row.id
