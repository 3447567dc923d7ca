"""The group notification pass (SPEC §13): flush due groups, at most one notification each.

Run by the ``group_flush_cron`` SAQ cron (every second) and nothing else. Each batch is one
transaction under the ``notifications.group_flush`` lease: claim due groups (``FOR UPDATE SKIP
LOCKED``), decide per group (``grouping.decide``), write the notification's outbox item, advance the
group's timer and notification log, prune resolved alerts and empty groups, count the reasons. The
outbox item and the group's new state commit together, so a notification is written once whatever
number of workers run the pass, and a worker dying mid-pass rolls back to a group still due: the next
tick sends it. Delivery is then the outbox's (retries, ledger, replay); the item's event id is derived
from (group, sequence), stable for receivers to dedup on.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.lib.after_commit import after_commit
from prodsentinel.lib.database import session_scope
from prodsentinel.lib.jobs import try_lease
from prodsentinel.lib.time import utcnow
from prodsentinel.notifications import grouping
from prodsentinel.notifications.group_queries import DueGroup, GroupQueries, bump_counters, group_subject
from prodsentinel.notifications.outbox import enqueue_dispatch, event_body
from prodsentinel.notifications.repositories import OutboxRepository, outbox_row

__all__ = ("LEASE", "GroupPassResult", "flush_batch", "run_group_pass")

LEASE = "notifications.group_flush"
#: Groups per transaction; one pass keeps flushing batches for at most this many seconds.
BATCH_SIZE = 500
PASS_BUDGET_SECONDS = 20.0


class GroupPassResult(msgspec.Struct, kw_only=True):
    flushed: int = 0
    notified: int = 0
    leased: bool = True


def _flush_one(group: DueGroup, now: datetime) -> tuple[grouping.Reason | None, dict[str, Any] | None]:
    """The decision for one group and, when it notifies, its outbox row."""
    firing = [a.alert_id for a in group.alerts if a.firing]
    resolved = [a.alert_id for a in group.alerts if not a.firing]
    reason = grouping.decide(
        firing=firing,
        resolved=resolved,
        notified_firing=group.notified_firing,
        notified_resolved=group.notified_resolved,
        last_notified_at=group.last_notified_at,
        repeat_interval=group.repeat_interval,
        now=now,
    )
    if reason is None or not group.channel_enabled:
        return None, None
    sequence = group.sequence + 1
    event_type, severity, payload = grouping.group_body(
        group_id=group.id,
        channel_id=group.channel_id,
        labels=group.group_labels,
        alerts=group.alerts,
        reason=reason,
        sequence=sequence,
    )
    event_id = grouping.notification_event_id(group.id, sequence)
    row = outbox_row(
        project_id=group.project_id,
        channel_id=group.channel_id,
        event_id=event_id,
        event_type=event_type,
        severity=severity,
        payload=event_body(event_id, event_type, severity, group.project_id, payload, now),
        now=now,
        subject=group_subject(group.channel_id, group.group_key),
    )
    return reason, row


async def flush_batch(session: AsyncSession, *, now: datetime, limit: int = BATCH_SIZE) -> tuple[int, int]:
    """Flush up to ``limit`` due groups in the caller's transaction: ``(flushed, notified)``."""
    queries = GroupQueries(session)
    groups = await queries.claim_due(now, limit)
    if not groups:
        return 0, 0
    items: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    empty: list[UUID] = []
    reasons: Counter[tuple[UUID, str]] = Counter()
    for group in groups:
        reason, row = _flush_one(group, now)
        update: dict[str, Any] = {
            "project_id": group.project_id,
            "id": group.id,
            "next_flush_at": now + timedelta(seconds=group.group_interval),
            "updated_at": now,
        }
        if row is not None and reason is not None:
            items.append(row)
            reasons[(group.project_id, reason)] += 1
            update.update(
                last_notified_at=now,
                notified_firing=[a.alert_id for a in group.alerts if a.firing],
                notified_resolved=[a.alert_id for a in group.alerts if not a.firing],
                sequence=group.sequence + 1,
            )
        if any(a.firing for a in group.alerts):
            updates.append(update)
        else:
            empty.append(group.id)
    await queries.save_flushes(updates)
    await queries.prune([g.id for g in groups], empty)
    if items:
        await OutboxRepository(session=session).insert_rows(items)
        await bump_counters(session, "grouped", dict(reasons))
        after_commit(session, enqueue_dispatch)
    return len(groups), len(items)


async def run_group_pass(
    session_maker: async_sessionmaker[AsyncSession], *, budget_seconds: float = PASS_BUDGET_SECONDS
) -> GroupPassResult:
    """Flush due groups batch after batch (each its own transaction) until none is due."""
    result = GroupPassResult()
    deadline = time.monotonic() + budget_seconds
    while time.monotonic() < deadline:
        async with session_scope(session_maker) as session:
            if not await try_lease(session, LEASE):
                result.leased = False
                return result
            flushed, notified = await flush_batch(session, now=utcnow())
        result.flushed += flushed
        result.notified += notified
        if flushed < BATCH_SIZE:
            break
    return result
