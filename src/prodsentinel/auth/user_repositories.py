"""SQL of people: users, their memberships and their sessions."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from uuid_utils.compat import uuid7

from prodsentinel.auth.models import Membership, Project, User, UserSession
from prodsentinel.lib.time import utcnow

__all__ = ("MembershipRepository", "UserRepository", "UserSessionRepository")


class UserRepository(SQLAlchemyAsyncRepository[User]):
    model_type = User

    async def by_email(self, email: str) -> User | None:
        return (await self.session.execute(select(User).where(User.email == email))).scalar_one_or_none()

    async def memberships(self, user_ids: list[UUID]) -> list[tuple[UUID, str, str, UUID]]:
        """``(user_id, project name, role, project_id)`` of ``user_ids``, oldest membership first."""
        rows = await self.session.execute(
            select(Membership.user_id, Project.name, Membership.role, Project.id)
            .join(Project, Project.id == Membership.project_id)
            .where(Membership.user_id.in_(user_ids))
            .order_by(Membership.created_at, Membership.id)
        )
        return [(row[0], row[1], row[2], row[3]) for row in rows.all()]

    async def in_project(self, project_id: UUID) -> list[tuple[User, str]]:
        rows = await self.session.execute(
            select(User, Membership.role)
            .join(Membership, Membership.user_id == User.id)
            .where(Membership.project_id == project_id)
            .order_by(User.email)
        )
        return [(user, role) for user, role in rows.all()]


class MembershipRepository(SQLAlchemyAsyncRepository[Membership]):
    model_type = Membership

    async def put_role(self, user_id: UUID, project_id: UUID, role: str) -> None:
        """Add the membership or change its role (``INSERT … ON CONFLICT DO UPDATE``)."""
        now = utcnow()
        statement = pg_insert(Membership).values(
            id=uuid7(), user_id=user_id, project_id=project_id, role=role, created_at=now, updated_at=now
        )
        await self.session.execute(
            statement.on_conflict_do_update(
                index_elements=[Membership.user_id, Membership.project_id],
                set_={"role": role, "updated_at": now},
            )
        )


class UserSessionRepository(SQLAlchemyAsyncRepository[UserSession]):
    model_type = UserSession

    async def revoke(
        self, *, session_id: UUID | None = None, user_id: UUID | None = None, project_id: UUID | None = None
    ) -> None:
        """End one session, or every open session of a user (optionally in one project)."""
        statement = update(UserSession).where(UserSession.revoked_at.is_(None))
        if session_id is not None:
            statement = statement.where(UserSession.id == session_id)
        if user_id is not None:
            statement = statement.where(UserSession.user_id == user_id)
        if project_id is not None:
            statement = statement.where(UserSession.project_id == project_id)
        await self.session.execute(statement.values(revoked_at=utcnow()))

    async def open(self, user_id: UUID, project_id: UUID, expires_at: datetime) -> UserSession:
        return await self.add(UserSession(user_id=user_id, project_id=project_id, expires_at=expires_at))
