"""The audit trail's table: who did what to which subject, when (append-only)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from advanced_alchemy.base import UUIDv7Base
from advanced_alchemy.types import DateTimeUTC
from sqlalchemy import ForeignKey, Index, PrimaryKeyConstraint, String, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

__all__ = ("AuditEvent",)


class AuditEvent(UUIDv7Base):
    """Append-only audit trail: alert transitions, acks, silences, policies, evaluations, incident actions."""

    __tablename__ = "audit_events"
    __table_args__ = (
        PrimaryKeyConstraint("project_id", "id"),
        Index("ix_audit_events_project_at", "project_id", "at"),
    )

    project_id: Mapped[UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True), server_default=text("now()"))
    actor: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(String(64))
    subject_type: Mapped[str] = mapped_column(String(32))
    subject_id: Mapped[UUID | None] = mapped_column(default=None)
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
