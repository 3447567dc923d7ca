"""The dispatcher: claim due outbox items, send them, record every attempt and its outcome (SPEC §8).

- :func:`dispatch_batch` claims due items (``OutboxRepository.claim_due``) and COMMITS the claim before
  any HTTP request, so a worker killed mid-send leaves a ``delivering`` item whose claim expires after
  the visibility timeout and is claimed again: never lost, possibly received twice (``event_id`` dedups).
- Each item is sent by its channel kind's sender (``delivery.SENDERS``). In the transaction that
  records the results: the channel state the senders return (Slack ``ts``, root ``Message-ID``,
  PagerDuty ``dedup_key``), the pause a ``Retry-After`` asks of a channel (that channel only), and
  endpoint health (``health.check_channels``: 410 or persistent failure disables a channel).
- Each attempt appends one immutable ledger row; ``retry.decide`` turns it into delivered / retrying
  (full-jitter backoff or ``Retry-After``) / dead, with ``PRODSENTINEL_NOTIFY_MAX_ATTEMPTS`` counting
  every attempt.
- :func:`run_dispatch` is the background pass (the ``dispatch_due`` task, its cron twin and
  ``POST /dispatch`` call it): batch after batch until nothing is due or its time budget is spent. It
  owns its units of work (two short transactions per batch, none held across HTTP calls), so it takes
  the session maker, not a session.
"""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.lib.database import session_scope
from prodsentinel.notifications import delivery, health, retry
from prodsentinel.notifications.models import OutboxStatus
from prodsentinel.notifications.repositories import (
    AttemptRecord,
    ChannelRepository,
    ChannelStateRepository,
    DeliveryAttemptRepository,
    ItemResult,
    OutboxRepository,
)
from prodsentinel.notifications.schemas import DispatchOut
from prodsentinel.settings import Settings

__all__ = ("DISPATCH_BUDGET_SECONDS", "dispatch_batch", "run_dispatch")

logger = structlog.get_logger("prodsentinel.notifications")

#: How long one :func:`run_dispatch` keeps claiming (the SAQ job's timeout is larger).
DISPATCH_BUDGET_SECONDS = 30.0

_FINAL_STATUS = {
    "delivered": OutboxStatus.DELIVERED,
    "retry": OutboxStatus.RETRYING,
    "dead": OutboxStatus.DEAD,
}


async def dispatch_batch(
    session_maker: async_sessionmaker[AsyncSession],
    settings: Settings,
    *,
    project_id: UUID | None = None,
    limit: int | None = None,
) -> DispatchOut:
    """Claim one batch (committed), send it concurrently, record every attempt and outcome.

    The two transactions are deliberate: nothing is held open across HTTP calls, and the claim is
    durable before the first byte leaves, which is what makes a kill -9 recoverable.
    """
    async with session_scope(session_maker) as session:
        claim = await OutboxRepository(session=session).claim_due(
            limit=limit or settings.notify_batch_size,
            visibility_seconds=settings.notify_visibility,
            max_attempts=settings.notify_max_attempts,
            project_id=project_id,
        )
    counts = DispatchOut(
        batches=1,
        claimed=len(claim.items),
        delivered=0,
        retrying=0,
        dead=claim.lost_dead,
        lost=claim.recovered + claim.lost_dead,
        stale=0,
    )
    if not claim.items:
        counts.batches = 0 if not claim.lost_dead else 1
        return counts
    facts = await delivery.send_batch(claim.items, settings, concurrency=settings.notify_concurrency)
    results: list[ItemResult] = []
    records: list[AttemptRecord] = []
    states: list[tuple[UUID, UUID, str, dict[str, Any]]] = []
    throttles: dict[tuple[UUID, UUID], float] = {}
    failed_channels: set[tuple[UUID, UUID]] = set()
    for fact in facts:
        decision = (
            retry.RetryDecision("delivered")
            if fact.accepted
            else retry.decide(
                attempt=fact.item.attempt,
                max_attempts=settings.notify_max_attempts,
                http_status=fact.http_status,
                error_code=fact.error_code,
                retry_after_seconds=fact.retry_after_seconds,
                base_seconds=settings.notify_backoff_seconds,
            )
        )
        if fact.state is not None and fact.item.subject is not None:
            states.append((fact.item.project_id, fact.item.channel_id, fact.item.subject, fact.state))
        if fact.http_status in retry.RETRY_AFTER_STATUSES and fact.retry_after_seconds:
            channel = (fact.item.project_id, fact.item.channel_id)
            throttles[channel] = max(throttles.get(channel, 0.0), fact.retry_after_seconds)
        if decision.outcome != "delivered":
            failed_channels.add((fact.item.project_id, fact.item.channel_id))
        status = _FINAL_STATUS[decision.outcome]
        results.append(
            ItemResult(
                id=fact.item.id,
                project_id=fact.item.project_id,
                attempt=fact.item.attempt,
                status=status,
                delay_seconds=decision.delay_seconds or 0.0,
                http_status=fact.http_status,
                error_code=fact.error_code,
            )
        )
        records.append(
            AttemptRecord(
                item=fact.item,
                started_at=fact.started_at,
                duration_ms=fact.duration_ms,
                http_status=fact.http_status,
                error_code=fact.error_code,
                outcome=decision.outcome,
            )
        )
        if status == OutboxStatus.DELIVERED:
            counts.delivered += 1
        elif status == OutboxStatus.RETRYING:
            counts.retrying += 1
        else:
            counts.dead += 1
    async with session_scope(session_maker) as session:
        outbox = OutboxRepository(session=session)
        present = await outbox.lock_present([(record.item.project_id, record.item.id) for record in records])
        present_channels = {record.item.channel_id for record in records if record.item.id in present}
        await DeliveryAttemptRepository(session=session).insert_records(
            [record for record in records if record.item.id in present]
        )
        updated = await outbox.record_results(results)
        await ChannelStateRepository(session=session).save([s for s in states if s[1] in present_channels])
        if throttles:
            await ChannelRepository(session=session).throttle(throttles)
        if failed_channels:
            await health.check_channels(
                session,
                failed_channels,
                after_seconds=settings.channel_disable_after_seconds,
                min_failures=settings.channel_disable_min_failures,
            )
    if len(present) < len(records):  # their channel was deleted while they were being sent
        logger.info("outbox_items_deleted_during_delivery", count=len(records) - len(present))
    counts.stale = len(results) - updated
    if counts.stale:
        logger.warning("outbox_stale_results", stale=counts.stale)
    return counts


async def run_dispatch(
    session_maker: async_sessionmaker[AsyncSession],
    settings: Settings,
    *,
    project_id: UUID | None = None,
    max_seconds: float = DISPATCH_BUDGET_SECONDS,
) -> DispatchOut:
    """Claim and send batches until nothing is due or ``max_seconds`` have passed.

    The bound keeps one job from running forever under a constant stream; the next enqueue or cron
    tick continues. Items that become due again during the loop (short retry delays) are picked up.
    """
    total = DispatchOut(batches=0, claimed=0, delivered=0, retrying=0, dead=0, lost=0, stale=0)
    deadline = time.monotonic() + max_seconds
    while True:
        counts = await dispatch_batch(session_maker, settings, project_id=project_id)
        for field in DispatchOut.__struct_fields__:
            setattr(total, field, getattr(total, field) + getattr(counts, field))
        if counts.batches == 0 or time.monotonic() >= deadline:
            return total
