"""Incidents (one row per project + fingerprint, reopened on regression), their occurrences, the grouping
high-water marks and metric anomalies."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from advanced_alchemy.base import UUIDv7AuditBase, UUIDv7Base
from advanced_alchemy.types import DateTimeUTC
from sqlalchemy import (
    BigInteger,
    Double,
    ForeignKey,
    Identity,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TIMESTAMP
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.orm import Mapped, mapped_column

from prodsentinel.lib.models import PlainBase

__all__ = (
    "INCIDENT_STATUSES",
    "Anomaly",
    "GroupingCursor",
    "Incident",
    "IncidentOccurrence",
    "IncidentStatus",
)


class IncidentStatus:
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


#: Every status, in lifecycle order (filters, error messages, the OpenAPI description).
INCIDENT_STATUSES: tuple[str, ...] = (
    IncidentStatus.OPEN,
    IncidentStatus.ACKNOWLEDGED,
    IncidentStatus.RESOLVED,
)


class Incident(UUIDv7AuditBase):
    __tablename__ = "incidents"
    __table_args__ = (
        UniqueConstraint("project_id", "fingerprint"),
        Index("ix_incidents_project_status_last_seen", "project_id", "status", "last_seen"),
        # The list endpoint pages by id within a project; auto-resolve scans unresolved rows by last_seen.
        Index("ix_incidents_project_id", "project_id", "id"),
        Index(
            "ix_incidents_unresolved_last_seen", "last_seen", postgresql_where=text("status <> 'resolved'")
        ),
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


class IncidentOccurrence(PlainBase):
    """One error signal folded into an incident (log or span row, by its bigint id).

    Written set-based by the grouping job in the same transaction as the incident upsert. The unique
    ``(source, signal_pk)`` makes re-processing idempotent (a signal is counted once however often the
    job sees it), and ``(project_id, fingerprint, ts)`` serves the 5-minute rate window. Rows are pruned
    after a day once the high-water mark has passed them.
    """

    __tablename__ = "incident_occurrences"
    __table_args__ = (
        UniqueConstraint("source", "signal_pk"),
        Index("ix_incident_occurrences_fingerprint_ts", "project_id", "fingerprint", "ts"),
        Index("ix_incident_occurrences_grouped_at", "grouped_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    project_id: Mapped[UUID] = mapped_column(PG_UUID(as_uuid=True))
    fingerprint: Mapped[str] = mapped_column(String(64))
    #: log | span
    source: Mapped[str] = mapped_column(String(8))
    #: ``logs.id`` or ``spans.id`` of the signal.
    signal_pk: Mapped[int] = mapped_column(BigInteger)
    ts: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True))
    trace_id: Mapped[str | None] = mapped_column(Text)
    service_name: Mapped[str] = mapped_column(Text)
    level: Mapped[int] = mapped_column(SmallInteger)
    grouped_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=text("now()"))


class GroupingCursor(PlainBase):
    """Durable high-water mark of the grouping job, one row per signal table (``logs``, ``spans``).

    ``high_water_id``: every row with ``id <= high_water_id`` has been grouped, and no transaction can
    still commit one there. Ids are allocated before commit, so a committed row may sit above an id that
    is still in flight; the mark therefore advances only to a *checkpoint* (``checkpoint_id``, the
    largest visible id when it was taken) once every transaction that held an xid then has ended
    (``pg_snapshot_xmin(now) >= checkpoint_xmax``). Rows above the mark are still processed at once:
    ``incident_occurrences`` dedups them. See docs/incidents.md.
    """

    __tablename__ = "incident_grouping_cursors"

    source: Mapped[str] = mapped_column(String(16), primary_key=True)
    high_water_id: Mapped[int] = mapped_column(BigInteger, default=0)
    checkpoint_id: Mapped[int | None] = mapped_column(BigInteger, default=None)
    checkpoint_xmax: Mapped[int | None] = mapped_column(BigInteger, default=None)
    updated_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=text("now()"))
