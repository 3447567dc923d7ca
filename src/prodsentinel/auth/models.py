"""Projects (tenants), their API keys, and the people who sign in (users, memberships, sessions)."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from advanced_alchemy.base import UUIDv7AuditBase
from advanced_alchemy.types import DateTimeUTC
from sqlalchemy import ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from prodsentinel.lib.models import PlainBase

__all__ = ("ApiKey", "Membership", "Project", "ServerSecret", "User", "UserSession")


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


class User(UUIDv7AuditBase):
    """A person who signs in. ``email`` is stored lower-cased; only an argon2 hash of the password is kept.

    Disabling (rather than deleting) keeps the audit trail's ``user:<email>`` actors meaningful and ends
    every session at once, because the per-request session check joins this row.
    """

    __tablename__ = "users"

    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(Text)
    disabled_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)


class Membership(UUIDv7AuditBase):
    """A user's role in one project: viewer (= read), operator (= operate) or admin (= admin)."""

    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("user_id", "project_id"),)

    user_id: Mapped[UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    project_id: Mapped[UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(16))


class UserSession(UUIDv7AuditBase):
    """One sign-in, acting in one project. The token names this row; logout sets ``revoked_at``.

    The row is checked on every request (``auth.lookup``), so a logout, a disabled user or a removed
    membership is refused on the next request on every instance: a signed token alone is never enough.
    """

    __tablename__ = "user_sessions"

    user_id: Mapped[UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    project_id: Mapped[UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    expires_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)


class ServerSecret(PlainBase):
    """Secrets the service generates for itself, shared by every instance through the database.

    Why here: with ``PRODSENTINEL_JWT_SECRET`` unset, each instance must sign and verify with the same
    key without any configuration; the first instance to start inserts it, the others read it.
    """

    __tablename__ = "server_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
