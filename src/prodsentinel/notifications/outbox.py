"""The outbox's write side: events written in the caller's transaction, the dispatcher's wake-up, replays.

Delivery contract (SPEC §8, details in docs/notifications.md): :func:`add_event` writes one outbox item
per matching channel inside the caller's transaction and registers :func:`enqueue_dispatch` on the
session (``lib.after_commit``), so delivery starts as soon as that transaction commits (the dispatch
cron is the net) and never for a rolled-back one. Replays write new items the same way.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from sqlalchemy.ext.asyncio import AsyncSession

from prodsentinel.lib import jobs, vocabulary
from prodsentinel.lib.after_commit import after_commit
from prodsentinel.lib.errors import ConflictError, NotFoundError
from prodsentinel.lib.pagination import check_limit
from prodsentinel.lib.time import utcnow
from prodsentinel.notifications import routing
from prodsentinel.notifications.models import OutboxItem
from prodsentinel.notifications.reports import ReportService
from prodsentinel.notifications.repositories import ChannelRepository, OutboxRepository
from prodsentinel.notifications.schemas import OutboxItemOut, ReplayDeadOut

__all__ = ("DISPATCH_JOB", "DISPATCH_JOB_TIMEOUT", "OutboxService", "add_event", "enqueue_dispatch")

#: The SAQ function a commit that wrote outbox items enqueues (see :func:`enqueue_dispatch`).
DISPATCH_JOB = "dispatch_due"
#: SAQ timeout of one dispatch job; its loop stops claiming after ``dispatcher.DISPATCH_BUDGET_SECONDS``.
DISPATCH_JOB_TIMEOUT = 120


async def add_event(
    session: AsyncSession,
    *,
    project_id: UUID,
    event_type: str,
    severity: str,
    payload: dict[str, Any],
    event_id: UUID | None = None,
    channel_ids: Sequence[UUID] | None = None,
) -> UUID:
    """Write one outbox item per enabled channel of the project that wants this event.

    A channel wants it when the event type is one of its ``event_types`` and ``routing.passes``
    (``min_severity``, ``matchers`` over the event's labels). ``channel_ids`` (a TEST event) sends to
    those channels only, whatever their filters.

    Flushes, never commits: the caller's transaction makes the state change and its notifications
    durable together. Returns the ``event_id`` (new unless given). It registers :func:`enqueue_dispatch`
    to run after that commit (``lib.after_commit``), so delivery starts at once instead of at the next
    cron tick, whichever service wrote the event; callers do nothing more.

    The body is ``{"event_id", "event_type", "severity", "occurred_at", "project_id", **payload}``.
    """
    if event_type not in vocabulary.EVENT_TYPES:
        raise ValueError(f"unknown outbox event type {event_type!r}")
    level = vocabulary.Severity(severity)  # an unknown severity is a caller's bug: ValueError
    event_id = event_id or uuid.uuid4()
    repository = ChannelRepository(session=session)
    if channel_ids is not None:
        wanted = [c.id for c in await repository.of_project(project_id) if c.id in channel_ids and c.enabled]
    else:
        channels = await repository.for_event(project_id=project_id, event_type=event_type)
        labels = routing.event_labels(event_type, payload)
        wanted = [
            channel.id
            for channel in channels
            if routing.passes(
                severity=level,
                min_severity=channel.min_severity,
                matchers=routing.compile_matchers(channel.matchers),
                labels=labels,
            )
        ]
    if not wanted:
        return event_id
    now = utcnow()
    body = {
        "event_id": str(event_id),
        "event_type": event_type,
        "severity": severity,
        "occurred_at": now.isoformat(),
        "project_id": str(project_id),
        **payload,
    }
    await OutboxRepository(session=session).insert_items(
        project_id=project_id,
        channel_ids=wanted,
        event_id=event_id,
        event_type=event_type,
        severity=severity,
        payload=body,
        now=now,
        subject=routing.subject_of(event_type, payload),
    )
    after_commit(session, enqueue_dispatch)
    return event_id


async def enqueue_dispatch() -> bool:
    """Ask a worker to deliver now (registered by :func:`add_event` and the replays, run after commit).

    The job key dedups bursts (one queued/running dispatch per queue; it loops until nothing is due).
    A lost or deduplicated enqueue only delays delivery until the next cron tick (a few seconds).
    """
    return await jobs.enqueue(DISPATCH_JOB, key=DISPATCH_JOB, timeout=DISPATCH_JOB_TIMEOUT)


class OutboxService(SQLAlchemyAsyncRepositoryService[OutboxItem]):
    """Replays: a replay is a new delivery of a finished item (new ``delivery_id``, same ``event_id``,
    ``replayed_from_id`` set), written and woken like any outbox write."""

    repository_type = OutboxRepository
    repository: OutboxRepository

    @property
    def _session(self) -> AsyncSession:
        """The unit of work's session, the one the wake-up is registered on (never a scoped session)."""
        session = self.repository.session
        assert isinstance(session, AsyncSession)
        return session

    async def replay(self, *, project_id: UUID, item_id: UUID) -> OutboxItemOut:
        """Replay one delivered or dead item; 404 for another project's or no item, 409 while in flight."""
        new_id = await self.repository.replay_item(item_id=item_id, project_id=project_id)
        if new_id is None:
            existing = await self.get_one_or_none(id=item_id, project_id=project_id)
            if existing is None:
                raise NotFoundError("Outbox item not found.")
            raise ConflictError(
                f"only delivered or dead items can be replayed; this one is {existing.status}."
            )
        after_commit(self._session, enqueue_dispatch)
        return await ReportService(session=self.repository.session).get_outbox_item(
            project_id=project_id, item_id=new_id
        )

    async def replay_dead(
        self, *, project_id: UUID, limit: int, channel_id: UUID | None = None
    ) -> ReplayDeadOut:
        """Replay up to ``limit`` dead items not replayed before, oldest first (idempotent)."""
        check_limit(limit)
        pairs = await self.repository.replay_dead(project_id=project_id, limit=limit, channel_id=channel_id)
        if pairs:
            after_commit(self._session, enqueue_dispatch)
        return ReplayDeadOut(
            count=len(pairs), ids=[new for new, _ in pairs], replayed_from_ids=[old for _, old in pairs]
        )
