"""Operability state kept in the database: when each scheduler loop last ticked."""

from __future__ import annotations

from datetime import datetime

from advanced_alchemy.types import DateTimeUTC
from sqlalchemy import String, text
from sqlalchemy.orm import Mapped, mapped_column

from prodsentinel.lib.models import PlainBase

__all__ = ("SchedulerTick",)


class SchedulerTick(PlainBase):
    """One row per scheduler loop (alerts, dispatch, anomalies, incidents, retention).

    Written by each cron run through ``system.services.SchedulerTickService.record`` and read at scrape
    time as ``prodsentinel_scheduler_last_tick_timestamp_seconds{loop}``. The time is the database's
    ``now()``, so ticks from workers on different hosts compare on one clock.
    """

    __tablename__ = "scheduler_ticks"

    loop: Mapped[str] = mapped_column(String(32), primary_key=True)
    last_tick_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True), server_default=text("now()"))
