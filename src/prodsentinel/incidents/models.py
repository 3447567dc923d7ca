"""Incidents (one row per project + fingerprint, reopened on regression), their occurrences, the grouping
high-water marks, metric anomalies, and correlated problems (SPEC §14: ``Problem`` and its membership,
trace keys and by-hand rules)."""

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
    PrimaryKeyConstraint,
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
    "Problem",
    "ProblemDetachRule",
    "ProblemMember",
    "ProblemMergeRule",
    "ProblemTraceKey",
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
        # Keys lead with project_id: the table is distributed by it (docs/scaling.md, Citus). The list
        # endpoint pages by id within a project on this primary key.
        PrimaryKeyConstraint("project_id", "id"),
        UniqueConstraint("project_id", "fingerprint"),
        Index("ix_incidents_project_status_last_seen", "project_id", "status", "last_seen"),
        # Auto-resolve scans unresolved rows by last_seen.
        Index(
            "ix_incidents_unresolved_last_seen", "last_seen", postgresql_where=text("status <> 'resolved'")
        ),
        # A problem's current incidents (rollup of severity, status and services).
        Index("ix_incidents_project_problem", "project_id", "problem_id"),
    )

    project_id: Mapped[UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
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
    #: The problem the incident currently belongs to (SPEC §14); set by the correlation pass.
    problem_id: Mapped[UUID | None] = mapped_column(PG_UUID(as_uuid=True), default=None)


class Anomaly(UUIDv7Base):
    """A metric point that scored beyond the threshold against its own series' history."""

    __tablename__ = "anomalies"
    __table_args__ = (
        PrimaryKeyConstraint("project_id", "id"),
        UniqueConstraint("project_id", "metric_name", "service_name", "labels_key", "ts"),
        Index("ix_anomalies_project_ts", "project_id", "ts"),
    )

    project_id: Mapped[UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
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
    ``(project_id, source, signal_pk)`` makes re-processing idempotent (a signal is counted once however
    often the job sees it; ``project_id`` leads every key so the table can be distributed by project), and
    ``(project_id, fingerprint, ts)`` serves the 5-minute rate window. Rows are pruned after a day once
    the high-water mark has passed them.
    """

    __tablename__ = "incident_occurrences"
    __table_args__ = (
        PrimaryKeyConstraint("project_id", "id"),
        UniqueConstraint("project_id", "source", "signal_pk"),
        Index("ix_incident_occurrences_fingerprint_ts", "project_id", "fingerprint", "ts"),
        Index("ix_incident_occurrences_grouped_at", "grouped_at"),
        # The correlation pass reads a batch's occurrences back by (project_id, source, signal_pk): the
        # unique index.
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    project_id: Mapped[UUID] = mapped_column(PG_UUID(as_uuid=True), primary_key=True)
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


class Problem(PlainBase):
    """A cascade: the incidents one failure caused, correlated by trace, dependency or by hand (SPEC §14).

    Written by the correlation pass (``incidents.problems``) in the grouping transaction, and by merge and
    detach. ``severity``/``status``/``services``/``root_*`` are a rollup of the current member incidents
    (``incidents.problem_id``), recomputed whenever one of them changes. ``window_until`` is the last
    moment (signal time) an incident may still join: extended by each join to ``join + window``, never
    past ``first_seen + 24 h``. A merged-away problem keeps its row, resolved, with ``merged_into``.
    """

    __tablename__ = "problems"
    __table_args__ = (
        Index(
            "ix_problems_project_open_window",
            "project_id",
            "window_until",
            postgresql_where=text("status <> 'resolved'"),
        ),
    )

    project_id: Mapped[UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    id: Mapped[UUID] = mapped_column(PG_UUID(as_uuid=True), primary_key=True)
    title: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=IncidentStatus.OPEN)
    severity: Mapped[str] = mapped_column(String(16))
    root_service: Mapped[str | None] = mapped_column(Text, default=None)
    root_dependency: Mapped[str | None] = mapped_column(Text, default=None)
    root_incident_id: Mapped[UUID | None] = mapped_column(PG_UUID(as_uuid=True), default=None)
    root_span_id: Mapped[str | None] = mapped_column(Text, default=None)
    services: Mapped[list[str]] = mapped_column(ARRAY(Text), default=list)
    first_seen: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True))
    last_seen: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True))
    window_until: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True))
    merged_into: Mapped[UUID | None] = mapped_column(PG_UUID(as_uuid=True), default=None)
    resolved_at: Mapped[datetime | None] = mapped_column(TIMESTAMP(timezone=True), default=None)
    analysis: Mapped[dict[str, Any] | None] = mapped_column(JSONB, default=None)
    analysed_at: Mapped[datetime | None] = mapped_column(TIMESTAMP(timezone=True), default=None)
    created_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=text("now()"))
    updated_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=text("now()"))


class ProblemMember(PlainBase):
    """Why an incident is (or was) in a problem: the ``evidence`` item of SPEC §14.

    ``joined_by`` is trace | dependency | merge; ``signal_ids`` are the log/span signal ids the join rests
    on (at most 10). A detached incident's row is deleted; a reopened incident that joins another
    problem keeps its row here as history (the rollup reads ``incidents.problem_id``).
    """

    __tablename__ = "problem_members"
    __table_args__ = (Index("ix_problem_members_incident", "project_id", "incident_id"),)

    project_id: Mapped[UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    problem_id: Mapped[UUID] = mapped_column(PG_UUID(as_uuid=True), primary_key=True)
    incident_id: Mapped[UUID] = mapped_column(PG_UUID(as_uuid=True), primary_key=True)
    joined_by: Mapped[str] = mapped_column(String(16))
    signal_ids: Mapped[list[UUID]] = mapped_column(ARRAY(PG_UUID(as_uuid=True)), default=list)
    joined_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=text("now()"))


class ProblemTraceKey(PlainBase):
    """One failing trace of a problem per key: ``service:<name>`` for every service with an error in the
    trace, ``dependency:<dep>`` for every dependency a failing client span called, and the marker ``*``
    (one row per trace of the problem).

    The correlation pass joins new incidents by these rows (same trace, or same dependency key), and the
    root is the key present in the most traces (``first_ts``: earliest error time of that key in the
    trace; ``span_pk``: one failing span of it, for the depth walk).
    """

    __tablename__ = "problem_trace_keys"
    __table_args__ = (
        # Trace joins look up the one marker row per (problem, trace) (``key = '*'``); dependency joins
        # go by primary key per open problem, so no index on ``key`` is needed (fewer writes).
        Index("ix_problem_trace_keys_trace", "project_id", "trace_id", postgresql_where=text("key = '*'")),
    )

    project_id: Mapped[UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    problem_id: Mapped[UUID] = mapped_column(PG_UUID(as_uuid=True), primary_key=True)
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    trace_id: Mapped[str] = mapped_column(Text, primary_key=True)
    first_ts: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True))
    span_pk: Mapped[int | None] = mapped_column(BigInteger, default=None)


class ProblemMergeRule(PlainBase):
    """A by-hand merge, kept: fingerprints of one ``group_id`` always land in the same open problem."""

    __tablename__ = "problem_merge_rules"

    project_id: Mapped[UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    group_id: Mapped[UUID] = mapped_column(PG_UUID(as_uuid=True))
    created_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=text("now()"))


class ProblemDetachRule(PlainBase):
    """A by-hand detach, kept: this fingerprint never joins ``problem_id`` again."""

    __tablename__ = "problem_detach_rules"

    project_id: Mapped[UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    problem_id: Mapped[UUID] = mapped_column(PG_UUID(as_uuid=True), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=text("now()"))
