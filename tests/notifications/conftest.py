"""Fixtures of the notification tests: real receivers, a project with an admin key, fast settings."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any
from uuid import UUID

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.lib.database import session_scope
from prodsentinel.notifications import dispatcher
from prodsentinel.notifications import outbox as notification_outbox
from prodsentinel.notifications.models import DeliveryAttempt, OutboxItem
from prodsentinel.settings import Settings
from tests.conftest import Tenant
from tests.receivers import Receiver, Reply

CHANNELS = "/api/v1/notifications/channels"


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    """Start receivers on 127.0.0.1; all are stopped at the end of the test."""
    started: list[Receiver] = []

    def factory(*script: Reply, default: Reply | None = None) -> Receiver:
        receiver = Receiver(*script, default=default).start()
        started.append(receiver)
        return receiver

    yield factory
    for receiver in started:
        receiver.stop()


@pytest.fixture
def admin_key(tenant: Tenant) -> str:
    """The raw admin key of this test's tenant (the notification helpers take a key string)."""
    return tenant.admin["X-API-Key"]


@pytest.fixture
def project_id(tenant: Tenant) -> UUID:
    return tenant.project_id


@pytest.fixture
def fast_settings(settings: Settings) -> Settings:
    """Tiny backoff, 3 attempts, 1 s timeout, 2 s visibility: the retry paths in milliseconds."""
    return settings.with_overrides(
        notify_backoff_seconds=0.01,
        notify_max_attempts=3,
        notify_timeout_seconds=1.0,
        notify_visibility_seconds=2.0,
    )


async def create_channel(client: AsyncTestClient[Litestar], key: str, **fields: Any) -> dict[str, Any]:
    body = {"name": f"ch-{time.monotonic_ns()}", **fields}
    response = await client.post(CHANNELS, json=body, headers={"X-API-Key": key})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def add_events(
    session_maker: async_sessionmaker[AsyncSession],
    project_id: UUID,
    count: int = 1,
    *,
    event_type: str = "ALERT_FIRING",
    severity: str = "high",
) -> list[UUID]:
    """Write events through the real outbox write side (one committed transaction)."""
    async with session_scope(session_maker) as session:
        return [
            await notification_outbox.add_event(
                session,
                project_id=project_id,
                event_type=event_type,
                severity=severity,
                payload={"alert": {"name": f"a{i}", "labels": {"service": "api"}}},
            )
            for i in range(count)
        ]


async def outbox(session_maker: async_sessionmaker[AsyncSession], project_id: UUID) -> list[OutboxItem]:
    async with session_scope(session_maker) as session:
        return list(
            await session.scalars(
                select(OutboxItem).where(OutboxItem.project_id == project_id).order_by(OutboxItem.created_at)
            )
        )


async def ledger(session_maker: async_sessionmaker[AsyncSession], project_id: UUID) -> list[DeliveryAttempt]:
    async with session_scope(session_maker) as session:
        return list(
            await session.scalars(
                select(DeliveryAttempt)
                .where(DeliveryAttempt.project_id == project_id)
                .order_by(DeliveryAttempt.started_at, DeliveryAttempt.attempt_number)
            )
        )


async def dispatch_until(
    session_maker: async_sessionmaker[AsyncSession],
    settings: Settings,
    project_id: UUID,
    done: Callable[[list[OutboxItem]], bool],
    timeout: float = 15.0,
) -> list[OutboxItem]:
    """Run dispatch passes (as the cron would) until ``done(items)`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        await dispatcher.run_dispatch(session_maker, settings, project_id=project_id, max_seconds=5)
        items = await outbox(session_maker, project_id)
        if done(items):
            return items
        if time.monotonic() > deadline:
            raise AssertionError(f"not done after {timeout}s: {[(i.status, i.attempts) for i in items]}")
        await asyncio.sleep(0.02)


def all_status(status: str) -> Callable[[list[OutboxItem]], bool]:
    return lambda items: bool(items) and all(item.status == status for item in items)
