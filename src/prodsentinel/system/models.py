"""Operability state kept in the database: when each scheduler loop last ticked."""

from __future__ import annotations

from datetime import datetime

from advanced_alchemy.base import orm_registry
from advanced_alchemy.types import DateTimeUTC
from sqlalchemy import String, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ("SchedulerTick",)


class _Base(DeclarativeBase):
    """A plain declarative base on advanced-alchemy's registry: this table's key is the loop name."""

    registry = orm_registry


class SchedulerTick(_Base):
    """One row per scheduler loop (alerts, dispatch, anomalies, incidents, retention).

    Written by each cron run through ``system.services.record_tick`` and read at scrape time as
    ``prodsentinel_scheduler_last_tick_timestamp_seconds{loop}``. The time is the database's ``now()``, so
    ticks from workers on different hosts compare on one clock.
    """

    __tablename__ = "scheduler_ticks"

    loop: Mapped[str] = mapped_column(String(32), primary_key=True)
    last_tick_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True), server_default=text("now()"))
