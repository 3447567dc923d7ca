"""Alert policies, alert instances, silences and inhibit rules (the audit trail is ``audit.models``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from advanced_alchemy.base import UUIDv7AuditBase
from advanced_alchemy.types import DateTimeUTC
from sqlalchemy import (
    Boolean,
    Double,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.orm import Mapped, mapped_column

from prodsentinel.lib.models import PlainBase

__all__ = ("Alert", "AlertPolicy", "InhibitRule", "Silence")


class AlertPolicy(UUIDv7AuditBase):
    """A policy. The common fields are columns; the per-kind fields (service, level, q, metric, agg,
    match_labels, min_severity) sit in ``params`` and are validated by the schemas."""

    __tablename__ = "alert_policies"
    # Keys lead with project_id: the table is distributed by it (docs/scaling.md, Citus).
    __table_args__ = (PrimaryKeyConstraint("project_id", "id"), UniqueConstraint("project_id", "name"))

    project_id: Mapped[UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str] = mapped_column(String(16))
    for_seconds: Mapped[int] = mapped_column(Integer, default=0)
    window_seconds: Mapped[int] = mapped_column(Integer, default=300)
    operator: Mapped[str] = mapped_column(String(2), default=">")
    threshold: Mapped[float] = mapped_column(Double)
    labels: Mapped[dict[str, str]] = mapped_column(JSONB, default=dict)
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)


class Alert(UUIDv7AuditBase):
    """One alert instance per (policy, label set), moving inactive -> pending -> firing -> resolved."""

    __tablename__ = "alerts"
    __table_args__ = (
        PrimaryKeyConstraint("project_id", "id"),
        UniqueConstraint("project_id", "policy_id", "labels_key"),
        # Composite, so the policy and its alerts live on one shard (co-located by project_id).
        ForeignKeyConstraint(
            ["project_id", "policy_id"],
            ["alert_policies.project_id", "alert_policies.id"],
            ondelete="CASCADE",
        ),
        Index("ix_alerts_project_state", "project_id", "state"),
    )

    project_id: Mapped[UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    policy_id: Mapped[UUID] = mapped_column()
    labels: Mapped[dict[str, str]] = mapped_column(JSONB)
    labels_key: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="inactive")
    severity: Mapped[str] = mapped_column(String(16))
    value: Mapped[float | None] = mapped_column(Double, default=None)
    started_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
    fired_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
    resolved_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
    last_evaluated_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
    acked_by: Mapped[str | None] = mapped_column(Text, default=None)
    acked_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
    silenced_by: Mapped[UUID | None] = mapped_column(default=None)
    #: The inhibit rule that held back this alert's ALERT_FIRING (cleared once it is announced).
    inhibited_by: Mapped[UUID | None] = mapped_column(PG_UUID(as_uuid=True), default=None)


class Silence(UUIDv7AuditBase):
    __tablename__ = "silences"
    __table_args__ = (
        PrimaryKeyConstraint("project_id", "id"),
        Index("ix_silences_project_window", "project_id", "starts_at", "ends_at"),
    )

    project_id: Mapped[UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    matchers: Mapped[list[dict[str, str]]] = mapped_column(JSONB)
    starts_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True))
    ends_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True))
    comment: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(Text)
    expired_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)


class InhibitRule(PlainBase):
    """An inhibit rule (SPEC §13): while an alert matching ``source_matchers`` fires, alerts matching
    ``target_matchers`` with the same values of the ``equal`` labels send no notification.

    Keyed by (project, id) so every lookup and constraint is scoped to a project. ``fingerprint`` is the
    canonical text of the rule's content: the same rule twice in a project is refused (409), and the
    routing file is loaded idempotently by it. ``origin`` is ``api`` or ``file``
    (``PRODSENTINEL_ROUTING_FILE``, whose rules are replaced at each start).
    """

    __tablename__ = "inhibit_rules"
    __table_args__ = (UniqueConstraint("project_id", "fingerprint"),)

    project_id: Mapped[UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    id: Mapped[UUID] = mapped_column(PG_UUID(as_uuid=True), primary_key=True)
    source_matchers: Mapped[list[dict[str, str]]] = mapped_column(JSONB)
    target_matchers: Mapped[list[dict[str, str]]] = mapped_column(JSONB)
    equal: Mapped[list[str]] = mapped_column(JSONB)
    fingerprint: Mapped[str] = mapped_column(String(64))
    origin: Mapped[str] = mapped_column(String(8), default="api")
    created_by: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True), server_default=text("now()"))
