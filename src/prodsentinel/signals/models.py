"""Stored telemetry: append-only tables for logs, spans and metric points.

These tables are written set-based by the ingest path (never one ORM object per signal) and are only
ever removed from by retention, which drops whole partitions. Each is range-partitioned by its time
column (``signals.partitions``; SPEC §16), so every primary key and unique constraint carries that column
as PostgreSQL requires, and ``project_id`` first (distributed-PostgreSQL readiness):

- primary key ``(project_id, time, id)``: also the index of every "newest first" page and time-window
  scan of a project, so no separate ``(project_id, time)`` index is kept;
- unique ``(project_id, signal_id, time)``: the identity of a stored signal (SPEC §4). A resend carries
  the same timestamp and lands in the same partition, where this index finds it; ``docs/ingest.md``
  states the guarantee and its one limit (a reused ``signal_id`` with a *changed* timestamp).

Every other index is justified by a query in ``docs/query.md``. ``id`` stays a unique identity (one
sequence for all partitions): incident occurrences and keyset cursors refer to rows by it.
The ORM classes exist for Alembic and for typed reads; inserts go through ``signals.writes``, reads
through ``signals.read_queries``.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from sqlalchemy import (
    BigInteger,
    Double,
    Identity,
    Index,
    Integer,
    Numeric,
    SmallInteger,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.orm import Mapped, mapped_column

from prodsentinel.lib.models import PlainBase
from prodsentinel.lib.vocabulary import LEVEL_NAMES, LEVELS, SPAN_STATUS_NAMES, SPAN_STATUSES

__all__ = (
    "LEVELS",
    "LEVEL_NAMES",
    "SPAN_STATUSES",
    "SPAN_STATUS_NAMES",
    "LogRecord",
    "MetricPoint",
    "MetricRollup",
    "ServiceRollup",
    "Span",
)

# The stored codes of levels and span statuses are the shared vocabulary (lib.vocabulary).
TZ = TIMESTAMP(timezone=True)


class LogRecord(PlainBase):
    __tablename__ = "logs"
    __table_args__ = (
        UniqueConstraint("project_id", "signal_id", "timestamp", name="uq_logs_project_id"),
        Index("ix_logs_project_service_ts", "project_id", "service_name", "timestamp"),
        Index(
            "ix_logs_project_trace", "project_id", "trace_id", postgresql_where=text("trace_id IS NOT NULL")
        ),
        Index("ix_logs_project_errors_ts", "project_id", "timestamp", postgresql_where=text("level >= 40")),
        # The grouping pass walks new error rows by id (incidents.grouping_queries): error rows only.
        Index("ix_logs_errors_id", "id", postgresql_where=text("level >= 40")),
        {"postgresql_partition_by": "RANGE (timestamp)"},
    )

    project_id: Mapped[UUID] = mapped_column(PG_UUID(as_uuid=True), primary_key=True)
    timestamp: Mapped[datetime] = mapped_column(TZ, primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    signal_id: Mapped[UUID] = mapped_column(PG_UUID(as_uuid=True))
    trace_id: Mapped[str | None] = mapped_column(Text)
    span_id: Mapped[str | None] = mapped_column(Text)
    service_name: Mapped[str] = mapped_column(Text)
    level: Mapped[int] = mapped_column(SmallInteger)
    message: Mapped[str] = mapped_column(Text)
    attributes: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    received_at: Mapped[datetime] = mapped_column(TZ, server_default=text("now()"))


class Span(PlainBase):
    __tablename__ = "spans"
    __table_args__ = (
        UniqueConstraint("project_id", "signal_id", "start_time", name="uq_spans_project_id"),
        Index("ix_spans_project_service_ts", "project_id", "service_name", "start_time"),
        Index("ix_spans_project_trace", "project_id", "trace_id"),
        Index("ix_spans_project_errors_ts", "project_id", "start_time", postgresql_where=text("status = 2")),
        # Span trees and problem analysis join spans by id (incidents.analysis_queries, problem_queries).
        Index("ix_spans_id", "id"),
        {"postgresql_partition_by": "RANGE (start_time)"},
    )

    project_id: Mapped[UUID] = mapped_column(PG_UUID(as_uuid=True), primary_key=True)
    start_time: Mapped[datetime] = mapped_column(TZ, primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    signal_id: Mapped[UUID] = mapped_column(PG_UUID(as_uuid=True))
    trace_id: Mapped[str] = mapped_column(Text)
    span_id: Mapped[str] = mapped_column(Text)
    parent_span_id: Mapped[str | None] = mapped_column(Text)
    service_name: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)
    end_time: Mapped[datetime] = mapped_column(TZ)
    duration_ms: Mapped[float] = mapped_column(Double)
    status: Mapped[int] = mapped_column(SmallInteger)
    attributes: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    received_at: Mapped[datetime] = mapped_column(TZ, server_default=text("now()"))


class MetricPoint(PlainBase):
    __tablename__ = "metric_points"
    __table_args__ = (
        UniqueConstraint("project_id", "signal_id", "timestamp", name="uq_metric_points_project_id"),
        Index("ix_metric_points_series_ts", "project_id", "name", "service_name", "timestamp"),
        {"postgresql_partition_by": "RANGE (timestamp)"},
    )

    project_id: Mapped[UUID] = mapped_column(PG_UUID(as_uuid=True), primary_key=True)
    timestamp: Mapped[datetime] = mapped_column(TZ, primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    signal_id: Mapped[UUID] = mapped_column(PG_UUID(as_uuid=True))
    name: Mapped[str] = mapped_column(Text)
    service_name: Mapped[str] = mapped_column(Text)
    value: Mapped[float] = mapped_column(Double)
    labels: Mapped[dict[str, str]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    received_at: Mapped[datetime] = mapped_column(TZ, server_default=text("now()"))


class ServiceRollup(PlainBase):
    """Signals per (project, width, bucket, service, signal, code): what ``/services`` counts.

    ``width_s`` is 60 (minute buckets) or 3600 (hour buckets).

    ``signal`` 1 = logs (``code`` = level), 2 = spans (``code`` = status), 3 = metric points (0).
    Written only by the ``ps_rollup_*`` statement triggers of the signal tables (migration
    ``query_scale``), read by ``signals.rollup_queries``; retention deletes old buckets.
    """

    __tablename__ = "service_rollups"
    __table_args__ = (Index("ix_service_rollups_bucket", "bucket"),)

    project_id: Mapped[UUID] = mapped_column(PG_UUID(as_uuid=True), primary_key=True)
    width_s: Mapped[int] = mapped_column(Integer, primary_key=True)
    bucket: Mapped[datetime] = mapped_column(TZ, primary_key=True)
    service_name: Mapped[str] = mapped_column(Text, primary_key=True)
    signal: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    code: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)
    last_seen: Mapped[datetime] = mapped_column(TZ)


class MetricRollup(PlainBase):
    """Metric points per (project, name, width, bucket, service, labels), width 60 s or 3600 s.

    ``sum_small`` is the float8 sum of values below 1e150 in magnitude, ``sum_large`` the exact sum of
    the others: the two halves of ``lib.float_sql``'s overflow-free sum, so series from rollups
    equal the raw computation. Written by the ``ps_rollup_metric_points`` trigger.
    """

    __tablename__ = "metric_rollups"
    __table_args__ = (Index("ix_metric_rollups_bucket", "bucket"),)

    project_id: Mapped[UUID] = mapped_column(PG_UUID(as_uuid=True), primary_key=True)
    name: Mapped[str] = mapped_column(Text, primary_key=True)
    width_s: Mapped[int] = mapped_column(Integer, primary_key=True)
    bucket: Mapped[datetime] = mapped_column(TZ, primary_key=True)
    service_name: Mapped[str] = mapped_column(Text, primary_key=True)
    labels: Mapped[dict[str, str]] = mapped_column(JSONB, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)
    sum_small: Mapped[float | None] = mapped_column(Double)
    sum_large: Mapped[Decimal | None] = mapped_column(Numeric)
    min_value: Mapped[float] = mapped_column(Double)
    max_value: Mapped[float] = mapped_column(Double)
