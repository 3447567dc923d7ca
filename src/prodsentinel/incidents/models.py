"""Incidents (one row per project + fingerprint, reopened on regression) and metric anomalies."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from advanced_alchemy.base import UUIDv7AuditBase, UUIDv7Base
from advanced_alchemy.types import DateTimeUTC
from sqlalchemy import Double, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

__all__ = ("Anomaly", "Incident", "IncidentStatus")


class IncidentStatus:
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class Incident(UUIDv7AuditBase):
    __tablename__ = "incidents"
    __table_args__ = (
        UniqueConstraint("project_id", "fingerprint"),
        Index("ix_incidents_project_status_last_seen", "project_id", "status", "last_seen"),
    )

    project_id: Mapped[UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    fingerprint: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(Text)
    service_name: Mapped[str] = mapped_column(Text)
    #: log | span | anomaly: where the occurrences come from
    source: Mapped[str] = mapped_column(String(16), default="log")
    severity: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=IncidentStatus.OPEN)
    count: Mapped[int] = mapped_column(Integer, default=0)
    first_seen: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True))
    last_seen: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True))
    sample_trace_ids: Mapped[list[str]] = mapped_column(ARRAY(Text), default=list)
    reopened_count: Mapped[int] = mapped_column(Integer, default=0)
    acked_by: Mapped[str | None] = mapped_column(Text, default=None)
    acked_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
    resolved_by: Mapped[str | None] = mapped_column(Text, default=None)
    resolved_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
    analysis: Mapped[dict[str, Any] | None] = mapped_column(JSONB, default=None)
    analysed_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)


class Anomaly(UUIDv7Base):
    """A metric point that scored beyond the threshold against its own series' history."""

    __tablename__ = "anomalies"
    __table_args__ = (
        UniqueConstraint("project_id", "metric_name", "service_name", "labels_key", "ts"),
        Index("ix_anomalies_project_ts", "project_id", "ts"),
    )

    project_id: Mapped[UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    metric_name: Mapped[str] = mapped_column(Text)
    service_name: Mapped[str] = mapped_column(Text)
    labels: Mapped[dict[str, str]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    #: Canonical text of ``labels`` (sorted JSON), part of the series identity.
    labels_key: Mapped[str] = mapped_column(Text, default="{}")
    ts: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True))
    value: Mapped[float] = mapped_column(Double)
    expected: Mapped[float] = mapped_column(Double)
    score: Mapped[float] = mapped_column(Double)
    method: Mapped[str] = mapped_column(String(16), default="mad")
    detected_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True), server_default=text("now()"))
