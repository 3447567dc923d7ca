"""The SQL of grouping (SPEC §13): alerts joining groups, and the flush's claim and writes.

Lock order makes the write side and the flush serial per group without waiting on each other's
work: a writer upserts the group row first (``ON CONFLICT DO UPDATE`` takes its row lock), then its
alert rows; the flush claims due group rows ``FOR UPDATE SKIP LOCKED`` (a group a writer holds waits
for the next tick) and reads and prunes their alerts under that lock. So a flush never decides on a
half-written group, and an alert upserted after a flush read the group is simply seen by the next one.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from prodsentinel.notifications.grouping import GroupAlert
from prodsentinel.notifications.models import (
    Channel,
    NotificationCounter,
    NotificationGroup,
    NotificationGroupAlert,
)
from prodsentinel.notifications.repositories import new_id

__all__ = ("DueGroup", "GroupQueries", "GroupUpdate", "bump_counters", "group_subject")

#: Rows per multi-row statement (asyncpg's bind-parameter limit is 32,767).
_CHUNK = 2000


@dataclass(frozen=True, slots=True)
class GroupUpdate:
    """One alert event for one grouped channel."""

    project_id: UUID
    channel_id: UUID
    group_wait: int
    group_key: str
    group_labels: dict[str, str]
    alert_id: UUID
    firing: bool
    severity: str
    alert: dict[str, Any]


@dataclass(slots=True)
class DueGroup:
    """A claimed group with its channel's timing and its alerts."""

    project_id: UUID
    id: UUID
    channel_id: UUID
    group_key: str
    group_labels: dict[str, str]
    last_notified_at: datetime | None
    notified_firing: list[UUID]
    notified_resolved: list[UUID]
    sequence: int
    group_interval: int
    repeat_interval: int
    channel_enabled: bool
    alerts: list[GroupAlert]


def _chunks(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    return [rows[i : i + _CHUNK] for i in range(0, len(rows), _CHUNK)]


class GroupQueries:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def apply(self, updates: Sequence[GroupUpdate], now: datetime) -> None:
        """Alerts join (or change state in) their groups; a new group is due after its ``group_wait``.

        Groups are upserted in key order (two writers lock shared groups in one order), then the
        alerts, the last event of an alert winning within the batch.
        """
        if not updates:
            return
        groups: dict[tuple[UUID, UUID, str], GroupUpdate] = {}
        for u in updates:
            groups.setdefault((u.project_id, u.channel_id, u.group_key), u)
        rows = [
            {
                "project_id": u.project_id,
                "id": new_id(),
                "channel_id": u.channel_id,
                "group_key": u.group_key,
                "group_labels": u.group_labels,
                "created_at": now,
                "updated_at": now,
                "next_flush_at": now + timedelta(seconds=u.group_wait),
                "notified_firing": [],
                "notified_resolved": [],
                "sequence": 0,
            }
            for _, u in sorted(groups.items(), key=lambda kv: (str(kv[0][1]), kv[0][2]))
        ]
        ids: dict[tuple[UUID, str], UUID] = {}
        # executemany form (SQLAlchemy's insertmanyvalues batches it): no per-row statement compiling.
        base = pg_insert(NotificationGroup)
        groups_upsert = base.on_conflict_do_update(
            index_elements=["project_id", "channel_id", "group_key"],
            set_={"updated_at": base.excluded.updated_at},
        ).returning(NotificationGroup.id, NotificationGroup.channel_id, NotificationGroup.group_key)
        for chunk in _chunks(rows):
            result = await self.session.execute(groups_upsert, chunk)
            ids.update({(r.channel_id, r.group_key): r.id for r in result})
        alerts: dict[tuple[UUID, UUID], dict[str, Any]] = {}
        for u in updates:
            group_id = ids[(u.channel_id, u.group_key)]
            alerts[(group_id, u.alert_id)] = {
                "project_id": u.project_id,
                "group_id": group_id,
                "alert_id": u.alert_id,
                "firing": u.firing,
                "severity": u.severity,
                "alert": u.alert,
                "updated_at": now,
            }
        alerts_upsert = pg_insert(NotificationGroupAlert)
        alerts_upsert = alerts_upsert.on_conflict_do_update(
            index_elements=["project_id", "group_id", "alert_id"],
            set_={
                name: alerts_upsert.excluded[name] for name in ("firing", "severity", "alert", "updated_at")
            },
        )
        for chunk in _chunks(list(alerts.values())):
            await self.session.execute(alerts_upsert, chunk)

    async def claim_due(self, now: datetime, limit: int) -> list[DueGroup]:
        """Due groups (``next_flush_at`` passed) locked for this transaction, with their alerts."""
        claim = (
            select(
                NotificationGroup,
                Channel.group_interval,
                Channel.repeat_interval,
                Channel.enabled,
            )
            .join(Channel, Channel.id == NotificationGroup.channel_id)
            .where(NotificationGroup.next_flush_at <= now)
            .order_by(NotificationGroup.next_flush_at)
            .limit(limit)
            .with_for_update(of=NotificationGroup, skip_locked=True)
        )
        rows = (await self.session.execute(claim)).all()
        if not rows:
            return []
        groups = {
            group.id: DueGroup(
                project_id=group.project_id,
                id=group.id,
                channel_id=group.channel_id,
                group_key=group.group_key,
                group_labels=group.group_labels,
                last_notified_at=group.last_notified_at,
                notified_firing=list(group.notified_firing or ()),
                notified_resolved=list(group.notified_resolved or ()),
                sequence=group.sequence,
                group_interval=group_interval,
                repeat_interval=repeat_interval,
                channel_enabled=enabled,
                alerts=[],
            )
            for group, group_interval, repeat_interval, enabled in rows
        }
        members = await self.session.scalars(
            select(NotificationGroupAlert).where(NotificationGroupAlert.group_id.in_(list(groups)))
        )
        for alert in members:
            groups[alert.group_id].alerts.append(
                GroupAlert(
                    alert_id=alert.alert_id, firing=alert.firing, severity=alert.severity, alert=alert.alert
                )
            )
        return list(groups.values())

    async def save_flushes(self, rows: list[dict[str, Any]]) -> None:
        """The flushed groups' new timer and notification-log fields (bulk UPDATE by primary key)."""
        if rows:
            await self.session.execute(update(NotificationGroup), rows)

    async def prune(self, group_ids: Sequence[UUID], empty_ids: Sequence[UUID]) -> None:
        """After a flush: resolved alerts leave their groups; groups with nothing left are deleted."""
        if group_ids:
            await self.session.execute(
                delete(NotificationGroupAlert).where(
                    NotificationGroupAlert.group_id.in_(list(group_ids)),
                    NotificationGroupAlert.firing.is_(False),
                )
            )
        if empty_ids:
            await self.session.execute(
                delete(NotificationGroup).where(NotificationGroup.id.in_(list(empty_ids)))
            )


async def bump_counters(session: AsyncSession, name: str, counts: dict[tuple[UUID, str], int]) -> None:
    """Add to the ``/metrics`` counters kept in PostgreSQL (``notification_counters``)."""
    if not counts:
        return
    statement = pg_insert(NotificationCounter).values(
        [
            {"project_id": p, "name": name, "label": label, "value": n}
            for (p, label), n in sorted(counts.items(), key=str)
        ]
    )
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=["project_id", "name", "label"],
            set_={"value": NotificationCounter.value + statement.excluded.value},
        )
    )


def group_subject(channel_id: UUID, group_key: str) -> str:
    """``group:<uuid>``: one thread per (channel, group labels), stable across the group's lifetimes,
    so a PagerDuty dedup key, a Slack message and a mail thread belong to the group."""
    return f"group:{uuid.uuid5(channel_id, group_key)}"
