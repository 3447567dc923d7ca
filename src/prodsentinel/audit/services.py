"""The audit trail's one writer and one reader.

Every domain records its actions with :func:`record` in the caller's transaction, so an audit row
exists exactly when the change it describes was committed. Actions are ``<subject>.<verb>`` or the
incident's ``incident_<verb>`` names that the API already documents (docs/alerts.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession
from uuid_utils.compat import uuid7

from prodsentinel.audit.models import AuditEvent
from prodsentinel.audit.repositories import AuditRepository
from prodsentinel.lib.pagination import Keyset
from prodsentinel.lib.time import utcnow

__all__ = ("AUDIT_KEYSET", "AuditEntry", "page", "record")

#: Newest first by ``(at, id)``.
AUDIT_KEYSET: Keyset[AuditEvent] = Keyset("audit", (datetime, UUID), lambda row: (row.at, row.id))


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audited action. ``at`` defaults to the time of :func:`record`."""

    project_id: UUID
    actor: str
    action: str
    subject_type: str
    subject_id: UUID | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    at: datetime | None = None


async def record(session: AsyncSession, *entries: AuditEntry) -> None:
    """Write ``entries`` in the caller's transaction, in one statement."""
    if not entries:
        return
    now = utcnow()
    await AuditRepository(session=session).insert_rows(
        [
            {
                "id": uuid7(),
                "project_id": entry.project_id,
                "at": entry.at or now,
                "actor": entry.actor,
                "action": entry.action,
                "subject_type": entry.subject_type,
                "subject_id": entry.subject_id,
                "details": dict(entry.details),
            }
            for entry in entries
        ]
    )


async def page(
    session: AsyncSession,
    project_id: UUID,
    *,
    subject_types: Sequence[str],
    action: str | None = None,
    actor: str | None = None,
    subject_type: str | None = None,
    subject_id: UUID | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    cursor: str | None = None,
    limit: int,
) -> tuple[list[AuditEvent], str | None]:
    """A keyset page of the project's audit rows about ``subject_types``, newest first."""
    rows = await AuditRepository(session=session).page(
        project_id,
        subject_types=subject_types,
        action=action,
        actor=actor,
        subject_type=subject_type,
        subject_id=subject_id,
        since=since,
        until=until,
        after=AUDIT_KEYSET.after(cursor),
        limit=AUDIT_KEYSET.fetch_size(limit),
    )
    return AUDIT_KEYSET.page(rows, limit)
