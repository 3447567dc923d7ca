"""The outbox write side. ``add_event`` runs inside the caller's transaction (the state change's)."""

from __future__ import annotations

import uuid
from typing import Any
from uuid import UUID

from sqlalchemy import any_, insert, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from prodsentinel.incidents.severity import Severity, rank
from prodsentinel.lib.time import utcnow
from prodsentinel.notifications.models import Channel, OutboxItem, OutboxStatus

__all__ = ("EVENT_TYPES", "add_event")

EVENT_TYPES = (
    "ALERT_FIRING",
    "ALERT_RESOLVED",
    "INCIDENT_OPENED",
    "INCIDENT_ESCALATED",
    "INCIDENT_RESOLVED",
    "INCIDENT_REOPENED",
)


async def add_event(
    session: AsyncSession,
    *,
    project_id: UUID,
    event_type: str,
    severity: str,
    payload: dict[str, Any],
    event_id: UUID | None = None,
) -> UUID:
    """Write one outbox item per enabled channel of the project that wants this event.

    Flushes, never commits: the caller's transaction makes the state change and its notifications
    durable together. Returns the ``event_id`` (new unless given). After the commit, callers enqueue
    the ``dispatch_due`` job so delivery starts at once instead of at the next cron tick.
    """
    event_id = event_id or uuid.uuid4()
    channels = await session.scalars(
        select(Channel).where(
            Channel.project_id == project_id,
            Channel.enabled.is_(True),
            or_(Channel.event_types.is_(None), literal(event_type) == any_(Channel.event_types)),
        )
    )
    wanted = [c for c in channels if rank(Severity(severity)) >= rank(Severity(c.min_severity))]
    if not wanted:
        return event_id
    now = utcnow()
    body = {
        "event_id": str(event_id),
        "event_type": event_type,
        "severity": severity,
        "occurred_at": now.isoformat(),
        **payload,
    }
    await session.execute(
        insert(OutboxItem),
        [
            {
                "id": uuid.uuid4(),
                "project_id": project_id,
                "channel_id": channel.id,
                "event_id": event_id,
                "delivery_id": uuid.uuid4(),
                "event_type": event_type,
                "severity": severity,
                "payload": body,
                "status": OutboxStatus.PENDING,
                "attempts": 0,
                "next_attempt_at": now,
            }
            for channel in wanted
        ],
    )
    return event_id
