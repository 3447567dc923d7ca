"""Every cron loop records its tick (``prodsentinel_scheduler_last_tick_timestamp_seconds{loop}``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.alerts.tasks import evaluate_alerts
from prodsentinel.incidents.tasks import detect_anomalies, group_new_errors_cron
from prodsentinel.notifications.tasks import dispatch_due_cron
from prodsentinel.settings import Settings
from prodsentinel.signals.tasks import purge_expired_signals
from prodsentinel.system.models import SchedulerTick


async def last_tick(session_maker: async_sessionmaker[AsyncSession], loop: str) -> datetime | None:
    async with session_maker() as session:
        return await session.scalar(select(SchedulerTick.last_tick_at).where(SchedulerTick.loop == loop))


@pytest.mark.parametrize(
    ("task", "loop"),
    [
        (evaluate_alerts, "alerts"),
        (group_new_errors_cron, "incidents"),
        (detect_anomalies, "anomalies"),
        (purge_expired_signals, "retention"),
        (dispatch_due_cron, "dispatch"),
    ],
)
async def test_cron_records_its_tick(
    task: Callable[[Any], Awaitable[Any]],
    loop: str,
    session_maker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    before = await last_tick(session_maker, loop)
    await task({"session_maker": session_maker, "settings": settings})
    after = await last_tick(session_maker, loop)
    assert after is not None
    assert before is None or after > before
