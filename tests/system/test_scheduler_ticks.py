"""Every cron loop records its tick (``prodsentinel_scheduler_last_tick_timestamp_seconds{loop}``)."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import pytest
from croniter import croniter
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel import worker
from prodsentinel.alerts.tasks import evaluate_alerts
from prodsentinel.incidents.tasks import detect_anomalies, group_new_errors_cron
from prodsentinel.notifications.tasks import dispatch_due_cron, escalation_cron, group_flush_cron
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
        (group_flush_cron, "group_flush"),
        (escalation_cron, "escalations"),
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


# Each cron's period (s). SAQ schedules with croniter, whose 6th field is seconds: "*/2 * * * * *" once
# meant "every second of every even minute" (no dispatch safety net in odd minutes).
CRON_PERIODS = {
    "dispatch_due_cron": 2,
    "group_flush_cron": 1,  # SPEC §13 grouping timers
    "escalation_cron": 1,  # SPEC §13 escalation steps
    "group_new_errors_cron": 10,
    "auto_resolve_incidents": 60,
    "detect_anomalies": 60,
    "analyse_pending_incidents": 60,
    "evaluate_alerts": 30,  # PRODSENTINEL_ALERTS_INTERVAL_SECONDS
    "purge_expired_signals": 3600,
    "create_signal_partitions": 3600,  # SPEC §16: partitions created ahead (hourly, minute 7)
}


@pytest.mark.parametrize("start", [datetime(2026, 11, 22, 6, 27, 13), datetime(2026, 11, 22, 6, 28, 59)])
def test_every_cron_fires_at_its_period_in_every_minute(start: datetime) -> None:
    periods = {}
    for cron in worker.cron_jobs(Settings()):
        schedule = croniter(cron.cron, start)
        times = [schedule.get_next(datetime) for _ in range(6)]
        gaps = {(later - earlier).total_seconds() for earlier, later in itertools.pairwise(times)}
        periods[getattr(cron.function, "__qualname__", "")] = gaps
    assert periods == {name: {float(seconds)} for name, seconds in CRON_PERIODS.items()}
