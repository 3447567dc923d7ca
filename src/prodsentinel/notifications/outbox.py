"""The outbox's write side: events written in the caller's transaction, the dispatcher's wake-up, replays.

Delivery contract (SPEC §8, details in docs/notifications.md): :func:`add_event` writes one outbox item
per matching channel inside the caller's transaction and registers :func:`enqueue_dispatch` on the
session (``lib.after_commit``), so delivery starts as soon as that transaction commits (the dispatch
cron is the net) and never for a rolled-back one. Replays write new items the same way.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from sqlalchemy.ext.asyncio import AsyncSession

from prodsentinel.alerts.matchers import Matcher
from prodsentinel.lib import jobs, vocabulary
from prodsentinel.lib.after_commit import after_commit
from prodsentinel.lib.errors import ConflictError, NotFoundError
from prodsentinel.lib.pagination import check_limit
from prodsentinel.lib.time import utcnow
from prodsentinel.notifications import escalation_rules, grouping, routing
from prodsentinel.notifications.escalation_queries import EscalationQueries
from prodsentinel.notifications.escalation_rules import EscalationRule
from prodsentinel.notifications.group_queries import GroupQueries, GroupUpdate
from prodsentinel.notifications.models import OutboxItem
from prodsentinel.notifications.reports import ReportService
from prodsentinel.notifications.repositories import ChannelRepository, OutboxRepository, outbox_row
from prodsentinel.notifications.schemas import OutboxItemOut, ReplayDeadOut

__all__ = (
    "DISPATCH_JOB",
    "DISPATCH_JOB_TIMEOUT",
    "OutboxEvent",
    "OutboxService",
    "add_event",
    "add_events",
    "enqueue_dispatch",
    "event_body",
    "outbox_row",
)

#: The SAQ function a commit that wrote outbox items enqueues (see :func:`enqueue_dispatch`).
DISPATCH_JOB = "dispatch_due"
#: SAQ timeout of one dispatch job; its loop stops claiming after ``dispatcher.DISPATCH_BUDGET_SECONDS``.
DISPATCH_JOB_TIMEOUT = 120


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """One event for :func:`add_events` (``event_id`` None: a new one)."""

    project_id: UUID
    event_type: str
    severity: str
    payload: dict[str, Any]
    event_id: UUID | None = None


@dataclass(frozen=True, slots=True)
class _Route:
    """A channel as routing needs it, its matchers compiled once per write."""

    id: UUID
    event_types: frozenset[str] | None
    min_severity: str
    matchers: list[Matcher]
    group_by: list[str] | None
    group_wait: int


@dataclass(slots=True)
class _ProjectRoutes:
    channels: list[_Route]
    escalations: list[EscalationRule]
    #: The label names the escalations' matchers read, and their matching results by those labels'
    #: values: alerts of one group share them, so 1,000 alerts cost one match per distinct value set.
    escalation_labels: tuple[str, ...] = ()
    matched: dict[tuple[str, ...], list[EscalationRule]] = field(default_factory=dict)

    def escalations_of(self, event_type: str, labels: dict[str, str]) -> list[EscalationRule]:
        if not self.escalations:
            return []
        key = (event_type[:5], *(labels.get(name, "") for name in self.escalation_labels))
        found = self.matched.get(key)
        if found is None:
            found = self.matched[key] = escalation_rules.matching(self.escalations, event_type, labels)
        return found


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
    """Write one event: :func:`add_events` of one, or (``channel_ids``, a TEST event) one item per
    named enabled channel, whatever their filters, grouping and escalations.

    Flushes, never commits: the caller's transaction makes the state change and its notifications
    durable together. Returns the ``event_id`` (new unless given).
    """
    if channel_ids is None:
        [written] = await add_events(
            session,
            [
                OutboxEvent(
                    project_id=project_id,
                    event_type=event_type,
                    severity=severity,
                    payload=payload,
                    event_id=event_id,
                )
            ],
        )
        return written
    _check(event_type, severity)
    event_id = event_id or uuid.uuid4()
    repository = ChannelRepository(session=session)
    wanted = [c.id for c in await repository.of_project(project_id) if c.id in channel_ids and c.enabled]
    if wanted:
        now = utcnow()
        body = event_body(event_id, event_type, severity, project_id, payload, now)
        subject = routing.subject_of(event_type, payload)
        await OutboxRepository(session=session).insert_rows(
            [
                outbox_row(
                    project_id=project_id,
                    channel_id=channel_id,
                    event_id=event_id,
                    event_type=event_type,
                    severity=severity,
                    payload=body,
                    now=now,
                    subject=subject,
                )
                for channel_id in wanted
            ]
        )
        after_commit(session, enqueue_dispatch)
    return event_id


async def add_events(session: AsyncSession, events: Sequence[OutboxEvent]) -> list[UUID]:
    """Write many events in the caller's transaction (routing state read once per project).

    Per event and enabled channel of its project: the channel wants it when the event type is one of
    its ``event_types`` and ``routing.passes`` (``min_severity``, ``matchers`` over the event's labels).
    Then (SPEC §13):

    - a channel named in a step of an escalation whose matchers hold over an alert or incident event
      gets that event only through the escalation's steps, never directly;
    - a channel with ``group_by`` gets ``ALERT_FIRING``/``ALERT_RESOLVED`` through its alert groups
      (``group_queries``; the group flush sends them), the resolution even when ``event_types`` leaves
      it out (the group must learn that the alert stopped firing);
    - every other wanted channel gets one outbox item;
    - a firing alert or an opened/reopened incident (re)starts the matching escalations; a resolution
      or an acknowledgement cancels the steps of its alert or incident not yet sent.

    Registers :func:`enqueue_dispatch` to run after the commit when items were written. The body is
    ``{"event_id", "event_type", "severity", "occurred_at", "project_id", **payload}``.
    """
    now = utcnow()
    routes: dict[UUID, _ProjectRoutes] = {}
    rows: list[dict[str, Any]] = []
    group_updates: list[GroupUpdate] = []
    plan = escalation_rules.EscalationPlan()
    ids: list[UUID] = []
    for event in events:
        _check(event.event_type, event.severity)
        event_id = event.event_id or uuid.uuid4()
        ids.append(event_id)
        project = routes.get(event.project_id)
        if project is None:
            project = routes[event.project_id] = await _routes_of(session, event.project_id)
        labels = routing.event_labels(event.event_type, event.payload)
        subject = routing.subject_of(event.event_type, event.payload)
        body = event_body(event_id, event.event_type, event.severity, event.project_id, event.payload, now)
        matched = project.escalations_of(event.event_type, labels)
        plan.add(event.project_id, event.event_type, event.severity, subject, body, matched, now)
        escalated = escalation_rules.step_channels(matched)
        alert_id = event.payload.get("alert_id")
        for channel in project.channels:
            if channel.id in escalated:
                continue
            grouped = (
                channel.group_by is not None and event.event_type in grouping.GROUPED_EVENTS and alert_id
            )
            unwanted = channel.event_types is not None and event.event_type not in channel.event_types
            if unwanted and not (grouped and event.event_type == "ALERT_RESOLVED"):
                continue
            if not routing.passes(
                severity=event.severity,
                min_severity=channel.min_severity,
                matchers=channel.matchers,
                labels=labels,
            ):
                continue
            if grouped:
                key, group_labels = grouping.group_labels(labels, channel.group_by or ())
                group_updates.append(
                    GroupUpdate(
                        project_id=event.project_id,
                        channel_id=channel.id,
                        group_wait=channel.group_wait,
                        group_key=key,
                        group_labels=group_labels,
                        alert_id=UUID(str(alert_id)),
                        firing=event.event_type == "ALERT_FIRING",
                        severity=event.severity,
                        alert=body,
                    )
                )
                continue
            rows.append(
                outbox_row(
                    project_id=event.project_id,
                    channel_id=channel.id,
                    event_id=event_id,
                    event_type=event.event_type,
                    severity=event.severity,
                    payload=body,
                    now=now,
                    subject=subject,
                )
            )
    if rows:
        await OutboxRepository(session=session).insert_rows(rows)
    await GroupQueries(session).apply(group_updates, now)
    escalated_items = await EscalationQueries(session).apply(plan)
    if rows or escalated_items:
        after_commit(session, enqueue_dispatch)
    return ids


def _check(event_type: str, severity: str) -> None:
    """An unknown event type or severity is a caller's bug: ValueError."""
    if event_type not in vocabulary.EVENT_TYPES:
        raise ValueError(f"unknown outbox event type {event_type!r}")
    vocabulary.Severity(severity)


def event_body(
    event_id: UUID, event_type: str, severity: str, project_id: UUID, payload: dict[str, Any], now: datetime
) -> dict[str, Any]:
    """What a receiver gets: the envelope, then the emitting domain's fields."""
    return {
        "event_id": str(event_id),
        "event_type": event_type,
        "severity": severity,
        "occurred_at": now.isoformat(),
        "project_id": str(project_id),
        **payload,
    }


async def _routes_of(session: AsyncSession, project_id: UUID) -> _ProjectRoutes:
    """The project's enabled channels (matchers compiled) and escalations: read once per write."""
    channels = await ChannelRepository(session=session).enabled_of_project(project_id)
    escalations = await EscalationQueries(session).rules_of(project_id)
    return _ProjectRoutes(
        escalation_labels=tuple(sorted({m.name for rule in escalations for m in rule.matchers})),
        channels=[
            _Route(
                id=c.id,
                event_types=frozenset(c.event_types) if c.event_types is not None else None,
                min_severity=c.min_severity,
                matchers=routing.compile_matchers(c.matchers),
                group_by=list(c.group_by) if c.group_by else None,
                group_wait=c.group_wait,
            )
            for c in channels
        ],
        escalations=escalations,
    )


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
