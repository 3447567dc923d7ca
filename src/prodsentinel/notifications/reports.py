"""What the notifications API reports: outbox items, history, the attempt ledger, stats, trends and
channel health (SPEC §8).

Reads only; the SQL is in ``report_queries.py``. Every list is a ``lib.pagination`` keyset page with its
own cursor tag, so ``next_cursor`` is set exactly when another row exists (the lists used to hand out a
cursor to an empty last page whenever exactly ``limit`` rows remained) and a cursor of one list is a 400
on another.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession, async_scoped_session

from prodsentinel.lib import vocabulary
from prodsentinel.lib.errors import BadRequestError, NotFoundError
from prodsentinel.lib.pagination import Keyset
from prodsentinel.lib.time import utcnow
from prodsentinel.notifications.models import DeliveryAttempt, OutboxItem, OutboxStatus
from prodsentinel.notifications.report_queries import NotificationReportQueries
from prodsentinel.notifications.repositories import ACTIVE_STATUSES
from prodsentinel.notifications.schemas import (
    AttemptOut,
    AttemptPage,
    ChannelHealth,
    ErrorCodeCount,
    LatencyOut,
    OutboxItemOut,
    OutboxPage,
    StatsOut,
    TrendBucket,
    TrendsOut,
)

__all__ = (
    "ATTEMPTS_KEYSET",
    "HEALTH_WINDOW",
    "HISTORY_KEYSET",
    "OUTBOX_KEYSET",
    "ReportService",
    "check_window",
    "empty_health",
)

#: Default window of the stats and of channel health: the last 24 hours.
HEALTH_WINDOW = 86_400
_MAX_BUCKETS = 2000
_STATUSES = (*ACTIVE_STATUSES, OutboxStatus.DELIVERED, OutboxStatus.DEAD)
_FINISHED = (OutboxStatus.DELIVERED, OutboxStatus.DEAD)
_OUTCOMES = ("delivered", "retry", "dead")

ItemRow = tuple[OutboxItem, str]

#: ``/outbox``: newest first by ``(created_at, id)``.
OUTBOX_KEYSET: Keyset[ItemRow] = Keyset(
    "outbox", (datetime, UUID), lambda row: (row[0].created_at, row[0].id)
)
#: ``/history``: most recently finished first by ``(updated_at, id)``.
HISTORY_KEYSET: Keyset[ItemRow] = Keyset(
    "history", (datetime, UUID), lambda row: (row[0].updated_at, row[0].id)
)
#: ``/attempts``: newest first by ``(started_at, id)``.
ATTEMPTS_KEYSET: Keyset[DeliveryAttempt] = Keyset(
    "attempts", (datetime, UUID), lambda row: (row.started_at, row.id)
)


def check_window(window_seconds: int) -> None:
    """``window`` of stats and channel health: 60 seconds to 90 days, else a 400."""
    if not 60 <= window_seconds <= 90 * 86_400:
        raise BadRequestError("window must be between 60 seconds and 90 days.")


def empty_health(window_seconds: int = HEALTH_WINDOW) -> ChannelHealth:
    """The health of a channel with no attempt and no item (a new one)."""
    return ChannelHealth(
        status="unknown",
        window_seconds=window_seconds,
        attempts=0,
        succeeded=0,
        success_rate=None,
        last_success_at=None,
        last_failure_at=None,
        last_error_code=None,
        top_error_codes=[],
        pending=0,
        dead=0,
    )


def _health_status(attempts: int, rate: float | None, last_ok: Any, last_bad: Any) -> str:
    """``unknown`` without attempts in the window; ``failing`` when the latest attempt failed and none
    succeeded after it; ``degraded`` below 95 % success; else ``healthy``."""
    if not attempts:
        return "unknown"
    if last_bad is not None and (last_ok is None or last_bad > last_ok):
        return "failing"
    if rate is not None and rate < 0.95:
        return "degraded"
    return "healthy"


def _item_out(item: OutboxItem, channel_name: str) -> OutboxItemOut:
    return OutboxItemOut(
        id=item.id,
        channel_id=item.channel_id,
        channel_name=channel_name,
        event_id=item.event_id,
        delivery_id=item.delivery_id,
        replayed_from_id=item.replayed_from_id,
        event_type=item.event_type,
        severity=item.severity,
        status=item.status,
        attempts=item.attempts,
        next_attempt_at=item.next_attempt_at,
        locked_until=item.locked_until,
        last_http_status=item.last_http_status,
        last_error_code=item.last_error_code,
        delivered_at=item.delivered_at,
        created_at=item.created_at,
        updated_at=item.updated_at,
        payload=item.payload,
    )


def _attempt_out(row: DeliveryAttempt) -> AttemptOut:
    return AttemptOut(
        id=row.id,
        outbox_id=row.outbox_id,
        channel_id=row.channel_id,
        delivery_id=row.delivery_id,
        event_id=row.event_id,
        attempt_number=row.attempt_number,
        started_at=row.started_at,
        duration_ms=row.duration_ms,
        http_status=row.http_status,
        error_code=row.error_code,
        outcome=row.outcome,
    )


class ReportService:
    """The read side of the notifications API for one session.

    A plain class rather than an advanced-alchemy service: its reads span channels, outbox items and the
    ledger, so no single model (and no single repository) fits; it is built and injected the same way,
    ``ReportService(session=session)``.
    """

    def __init__(self, session: AsyncSession | async_scoped_session[AsyncSession]) -> None:
        self.queries = NotificationReportQueries(session)

    async def get_outbox_item(self, *, project_id: UUID, item_id: UUID) -> OutboxItemOut:
        row = await self.queries.outbox_item(project_id=project_id, item_id=item_id)
        if row is None:
            raise NotFoundError("Outbox item not found.")
        return _item_out(*row)

    async def list_outbox(
        self,
        *,
        project_id: UUID,
        limit: int,
        cursor: str | None,
        status: str | None = None,
        event_type: str | None = None,
        channel_id: UUID | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> OutboxPage:
        """Outbox items, newest first; ``since``/``until`` bound ``created_at``."""
        fetch = OUTBOX_KEYSET.fetch_size(limit)
        if status is not None and status not in _STATUSES:
            raise BadRequestError(f"status must be one of {', '.join(_STATUSES)}.")
        if event_type is not None and event_type not in vocabulary.EVENT_TYPES:
            raise BadRequestError(f"event_type must be one of {', '.join(vocabulary.EVENT_TYPES)}.")
        rows = await self.queries.outbox_page(
            project_id=project_id,
            fetch=fetch,
            after=OUTBOX_KEYSET.after(cursor),
            statuses=[status] if status else None,
            event_type=event_type,
            channel_id=channel_id,
            since=since,
            until=until,
        )
        items, next_cursor = OUTBOX_KEYSET.page(rows, limit)
        return OutboxPage(items=[_item_out(*row) for row in items], next_cursor=next_cursor)

    async def history(
        self,
        *,
        project_id: UUID,
        limit: int,
        cursor: str | None,
        status: str | None = None,
        channel_id: UUID | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> OutboxPage:
        """Finished items (delivered and dead), most recently finished first; ``since``/``until`` bound
        the time they finished (``updated_at``)."""
        fetch = HISTORY_KEYSET.fetch_size(limit)
        if status is not None and status not in _FINISHED:
            raise BadRequestError("status must be delivered or dead.")
        rows = await self.queries.outbox_page(
            project_id=project_id,
            fetch=fetch,
            after=HISTORY_KEYSET.after(cursor),
            statuses=[status] if status else list(_FINISHED),
            channel_id=channel_id,
            since=since,
            until=until,
            order_by_updated=True,
        )
        items, next_cursor = HISTORY_KEYSET.page(rows, limit)
        return OutboxPage(items=[_item_out(*row) for row in items], next_cursor=next_cursor)

    async def list_attempts(
        self,
        *,
        project_id: UUID,
        limit: int,
        cursor: str | None,
        outbox_id: UUID | None = None,
        channel_id: UUID | None = None,
        event_id: UUID | None = None,
        outcome: str | None = None,
        error_code: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> AttemptPage:
        """The ledger, newest first; ``since``/``until`` bound ``started_at``."""
        fetch = ATTEMPTS_KEYSET.fetch_size(limit)
        if outcome is not None and outcome not in _OUTCOMES:
            raise BadRequestError("outcome must be delivered, retry or dead.")
        rows = await self.queries.attempts_page(
            project_id=project_id,
            fetch=fetch,
            after=ATTEMPTS_KEYSET.after(cursor),
            outbox_id=outbox_id,
            channel_id=channel_id,
            event_id=event_id,
            outcome=outcome,
            error_code=error_code,
            since=since,
            until=until,
        )
        items, next_cursor = ATTEMPTS_KEYSET.page(rows, limit)
        return AttemptPage(items=[_attempt_out(row) for row in items], next_cursor=next_cursor)

    async def get_attempt(self, *, project_id: UUID, attempt_id: UUID) -> AttemptOut:
        row = await self.queries.attempt(project_id=project_id, attempt_id=attempt_id)
        if row is None:
            raise NotFoundError("Delivery attempt not found.")
        return _attempt_out(row)

    async def stats(self, *, project_id: UUID, window_seconds: int = HEALTH_WINDOW) -> StatsOut:
        """Totals by status (all time) plus ledger figures over the last ``window_seconds``."""
        check_window(window_seconds)
        totals = dict.fromkeys(_STATUSES, 0)
        totals.update(await self.queries.status_totals(project_id))
        pending, dead, oldest = await self.queries.outbox_gauges(project_id)
        ledger = await self.queries.ledger_stats(
            project_id=project_id, since=utcnow() - timedelta(seconds=window_seconds)
        )
        finished = totals[OutboxStatus.DELIVERED] + totals[OutboxStatus.DEAD]
        return StatsOut(
            totals=totals,
            total=sum(totals.values()),
            success_rate=totals[OutboxStatus.DELIVERED] / finished if finished else None,
            attempts=ledger["attempts"],
            attempt_success_rate=ledger["succeeded"] / ledger["attempts"] if ledger["attempts"] else None,
            latency_ms=LatencyOut(p50=ledger["p50"], p95=ledger["p95"]),
            pending=pending,
            dead=dead,
            oldest_pending_age_seconds=oldest,
            window_seconds=window_seconds,
        )

    async def trends(
        self, *, project_id: UUID, bucket: str, since: datetime | None, until: datetime | None
    ) -> TrendsOut:
        """Sent/retry/dead/replay counts per UTC hour or day; defaults: the last 24 hours / 30 days."""
        if bucket not in ("hour", "day"):
            raise BadRequestError("bucket must be hour or day.")
        step = timedelta(hours=1) if bucket == "hour" else timedelta(days=1)
        until = until or utcnow()
        # until >= lib.time's MIN_TIME (time_range checked it), so the default cannot underflow.
        since = since or until - (timedelta(hours=24) if bucket == "hour" else timedelta(days=30))
        if since >= until:
            raise BadRequestError("since must be before until.")
        if (until - since) / step > _MAX_BUCKETS:
            raise BadRequestError(f"the range holds more than {_MAX_BUCKETS} {bucket} buckets; narrow it.")
        rows = await self.queries.trends(project_id=project_id, unit=bucket, since=since, until=until)
        return TrendsOut(
            bucket=bucket,
            since=since,
            until=until,
            items=[TrendBucket(ts=ts, sent=s, retry=r, dead=d, replay=p) for ts, s, r, d, p in rows],
        )

    async def channel_health(
        self, *, project_id: UUID, channel_id: UUID | None = None, window_seconds: int = HEALTH_WINDOW
    ) -> dict[UUID, ChannelHealth]:
        """Delivery health per channel of the project (or of one channel) over ``window_seconds``."""
        since = utcnow() - timedelta(seconds=window_seconds)
        rows = await self.queries.channel_health_rows(
            project_id=project_id, since=since, channel_id=channel_id
        )
        codes = await self.queries.channel_error_codes(project_id=project_id, since=since)
        health: dict[UUID, ChannelHealth] = {}
        for cid, row in rows.items():
            attempts, succeeded = int(row["attempts"] or 0), int(row["succeeded"] or 0)
            rate = succeeded / attempts if attempts else None
            last_ok, last_bad = row["last_success_at"], row["last_failure_at"]
            health[cid] = ChannelHealth(
                status=_health_status(attempts, rate, last_ok, last_bad),
                window_seconds=window_seconds,
                attempts=attempts,
                succeeded=succeeded,
                success_rate=rate,
                last_success_at=last_ok,
                last_failure_at=last_bad,
                last_error_code=row["last_error_code"],
                top_error_codes=[ErrorCodeCount(code=c, count=n) for c, n in codes.get(cid, [])[:5]],
                pending=int(row["pending"] or 0),
                dead=int(row["dead"] or 0),
            )
        return health
