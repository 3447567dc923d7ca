"""Endpoint health (SPEC §12): channels whose receiver is gone are disabled instead of retried forever.

Rule (:func:`disable_reason`, pure): a ``410 Gone`` answer disables a channel at once (the receiver
says it will never come back: a deleted Slack webhook, an archived channel). Otherwise a channel is
disabled when every attempt has failed for at least ``PRODSENTINEL_CHANNEL_DISABLE_AFTER_SECONDS``
(counted from the first failure after its last success or re-enabling) with at least
``PRODSENTINEL_CHANNEL_DISABLE_MIN_FAILURES`` failures: both, so neither one burst of failures nor one
lonely failure a week ago is enough.

Disabling (:func:`check_channels`, in the transaction that records the attempts): ``enabled`` false,
``disabled_reason``, an audit row, a ``CHANNEL_DISABLED`` event to the project's other channels, and
the channel's undelivered items go ``dead`` (error code ``channel_disabled``; ``replay-dead`` sends them
once it is re-enabled with ``PATCH {"enabled": true}``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from uuid import UUID

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from prodsentinel.audit import services as audit_services
from prodsentinel.audit.services import AuditEntry
from prodsentinel.lib.time import utcnow
from prodsentinel.notifications.outbox import add_event
from prodsentinel.notifications.repositories import ChannelRepository, FailureStreak, OutboxRepository

__all__ = ("CHANNEL_DISABLED_CODE", "HEALTH_ACTOR", "check_channels", "disable_reason")

logger = structlog.get_logger("prodsentinel.notifications")

#: ``last_error_code`` of the items a disabled channel leaves behind.
CHANNEL_DISABLED_CODE = "channel_disabled"
#: The audit actor of an automatic disable.
HEALTH_ACTOR = "system:endpoint-health"


def disable_reason(
    streak: FailureStreak, *, now: datetime, after_seconds: int, min_failures: int
) -> str | None:
    """Why this channel must be disabled now, or None (pure)."""
    if streak.gone:
        return "the receiver answered 410 Gone"
    failing_for = (now - streak.first_failure_at).total_seconds()
    if streak.failures >= min_failures and failing_for >= after_seconds:
        return f"every attempt failed for {int(failing_for)} s ({streak.failures} failures)"
    return None


async def check_channels(
    session: AsyncSession,
    channel_keys: Iterable[tuple[UUID, UUID]],
    *,
    after_seconds: int,
    min_failures: int,
) -> list[UUID]:
    """Disable the channels among ``channel_keys`` (``(project_id, channel_id)`` of ones that just
    failed) that meet the rule."""
    channels = ChannelRepository(session=session)
    now = utcnow()
    disabled: list[UUID] = []
    for streak in await channels.failure_streaks(sorted(set(channel_keys))):
        reason = disable_reason(streak, now=now, after_seconds=after_seconds, min_failures=min_failures)
        if reason is None:
            continue
        channel = await channels.disable(streak.project_id, streak.channel_id, reason)
        if channel is None:
            continue
        killed = await OutboxRepository(session=session).kill_active(
            channel.project_id, channel.id, CHANNEL_DISABLED_CODE
        )
        await audit_services.record(
            session,
            AuditEntry(
                project_id=channel.project_id,
                actor=HEALTH_ACTOR,
                action="channel.disabled",
                subject_type="channel",
                subject_id=channel.id,
                details={"reason": reason, "failures": streak.failures, "items_dead": killed},
                at=now,
            ),
        )
        await add_event(
            session,
            project_id=channel.project_id,
            event_type="CHANNEL_DISABLED",
            severity="high",
            payload={
                "channel": {"id": str(channel.id), "name": channel.name, "kind": channel.kind},
                "reason": reason,
            },
        )
        logger.warning("channel_disabled", channel=channel.name, reason=reason, items_dead=killed)
        disabled.append(channel.id)
    return disabled
