"""SQL of the audit trail: one multi-row insert, one keyset page."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from sqlalchemy import insert, select, tuple_

from prodsentinel.audit.models import AuditEvent

__all__ = ("AuditRepository",)


class AuditRepository(SQLAlchemyAsyncRepository[AuditEvent]):
    model_type = AuditEvent

    async def insert_rows(self, rows: Sequence[dict[str, Any]]) -> None:
        """One ``INSERT`` for all rows (a grouping pass may audit hundreds of transitions)."""
        if rows:
            await self.session.execute(insert(AuditEvent), list(rows))

    async def page(
        self,
        project_id: UUID,
        *,
        subject_types: Sequence[str],
        action: str | None = None,
        actor: str | None = None,
        subject_type: str | None = None,
        subject_id: UUID | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        after: tuple[Any, ...] | None = None,
        limit: int,
    ) -> list[AuditEvent]:
        """Newest first by ``(at, id)``, strictly below ``after``."""
        statement = select(AuditEvent).where(
            AuditEvent.project_id == project_id, AuditEvent.subject_type.in_(subject_types)
        )
        if action is not None:
            statement = statement.where(AuditEvent.action == action)
        if actor is not None:
            statement = statement.where(AuditEvent.actor == actor)
        if subject_type is not None:
            statement = statement.where(AuditEvent.subject_type == subject_type)
        if subject_id is not None:
            statement = statement.where(AuditEvent.subject_id == subject_id)
        if since is not None:
            statement = statement.where(AuditEvent.at >= since)
        if until is not None:
            statement = statement.where(AuditEvent.at < until)
        if after is not None:
            statement = statement.where(tuple_(AuditEvent.at, AuditEvent.id) < tuple_(*after))
        statement = statement.order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).limit(limit)
        return list(await self.session.scalars(statement))
