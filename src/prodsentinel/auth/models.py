"""Projects (tenants) and their API keys."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from advanced_alchemy.base import UUIDv7AuditBase
from advanced_alchemy.types import DateTimeUTC
from sqlalchemy import ForeignKey, String
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

__all__ = ("ApiKey", "Project")


class Project(UUIDv7AuditBase):
    """A tenant: every signal, incident, alert, policy, channel and outbox item belongs to one."""

    __tablename__ = "projects"

    name: Mapped[str] = mapped_column(String(100), unique=True)


class ApiKey(UUIDv7AuditBase):
    """An API key. Only the SHA-256 of the secret part is stored; ``prefix`` finds the row in O(1).

    SHA-256 rather than a slow password hash is deliberate: keys carry 192 bits of randomness, so they
    cannot be brute-forced, and ingest checks a key on every request.
    """

    __tablename__ = "api_keys"

    project_id: Mapped[UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[str]] = mapped_column(ARRAY(String(16)))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
