"""The notifications read models: outbox and ledger pages, status totals, ledger stats, trends and
channel health. SQL of no single model (most read several tables), so a plain queries class over the
request's session, as ``CONVENTIONS``' repository shape says; the writes are in ``repositories.py``.

Pages are keyset pages (``lib.pagination.Keyset``): newest first by ``(time, id)``, strictly below the
cursor's key, ``fetch`` rows (one more than the page) so the caller knows whether another page exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import Select, and_, func, select, text, tuple_
from sqlalchemy.ext.asyncio import AsyncSession, async_scoped_session

from prodsentinel.notifications.models import Channel, DeliveryAttempt, OutboxItem, OutboxStatus
from prodsentinel.notifications.repositories import ACTIVE_STATUSES

__all__ = ("NotificationReportQueries",)


class NotificationReportQueries:
    """Read-only SQL of the notification reports (``reports.py``)."""

    def __init__(self, session: AsyncSession | async_scoped_session[AsyncSession]) -> None:
        self.session = session

    async def outbox_item(self, *, project_id: UUID, item_id: UUID) -> tuple[OutboxItem, str] | None:
        """One outbox item of the project with its channel's name; None if absent."""
        row = (
            await self.session.execute(
                select(OutboxItem, Channel.name)
                .join(
                    Channel,
                    and_(Channel.project_id == OutboxItem.project_id, Channel.id == OutboxItem.channel_id),
                )
                .where(OutboxItem.id == item_id, OutboxItem.project_id == project_id)
            )
        ).first()
        return None if row is None else (row[0], row[1])

    async def outbox_page(
        self,
        *,
        project_id: UUID,
        fetch: int,
        after: tuple[Any, ...] | None,
        statuses: Sequence[str] | None = None,
        event_type: str | None = None,
        channel_id: UUID | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        order_by_updated: bool = False,
    ) -> list[tuple[OutboxItem, str]]:
        """Newest-first outbox items with their channel's name, by ``created_at`` (or ``updated_at``,
        the time an item finished, for history); ``since``/``until`` bound that same column."""
        order_column = OutboxItem.updated_at if order_by_updated else OutboxItem.created_at
        statement: Select[OutboxItem, str] = (
            select(OutboxItem, Channel.name)
            .join(
                Channel,
                and_(Channel.project_id == OutboxItem.project_id, Channel.id == OutboxItem.channel_id),
            )
            .where(OutboxItem.project_id == project_id)
        )
        if statuses:
            statement = statement.where(OutboxItem.status.in_(statuses))
        if event_type is not None:
            statement = statement.where(OutboxItem.event_type == event_type)
        if channel_id is not None:
            statement = statement.where(OutboxItem.channel_id == channel_id)
        if since is not None:
            statement = statement.where(order_column >= since)
        if until is not None:
            statement = statement.where(order_column < until)
        if after is not None:
            statement = statement.where(tuple_(order_column, OutboxItem.id) < tuple_(*after))
        statement = statement.order_by(order_column.desc(), OutboxItem.id.desc()).limit(fetch)
        return [(item, name) for item, name in (await self.session.execute(statement)).all()]

    async def attempts_page(
        self,
        *,
        project_id: UUID,
        fetch: int,
        after: tuple[Any, ...] | None,
        outbox_id: UUID | None = None,
        channel_id: UUID | None = None,
        event_id: UUID | None = None,
        outcome: str | None = None,
        error_code: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[DeliveryAttempt]:
        """Newest-first rows of the attempt ledger (by ``started_at``)."""
        statement = select(DeliveryAttempt).where(DeliveryAttempt.project_id == project_id)
        filters = [
            (outbox_id, DeliveryAttempt.outbox_id),
            (channel_id, DeliveryAttempt.channel_id),
            (event_id, DeliveryAttempt.event_id),
            (outcome, DeliveryAttempt.outcome),
            (error_code, DeliveryAttempt.error_code),
        ]
        for value, column in filters:
            if value is not None:
                statement = statement.where(column == value)
        if since is not None:
            statement = statement.where(DeliveryAttempt.started_at >= since)
        if until is not None:
            statement = statement.where(DeliveryAttempt.started_at < until)
        if after is not None:
            statement = statement.where(
                tuple_(DeliveryAttempt.started_at, DeliveryAttempt.id) < tuple_(*after)
            )
        statement = statement.order_by(DeliveryAttempt.started_at.desc(), DeliveryAttempt.id.desc()).limit(
            fetch
        )
        return list((await self.session.scalars(statement)).all())

    async def attempt(self, *, project_id: UUID, attempt_id: UUID) -> DeliveryAttempt | None:
        """One ledger row of the project; None if absent."""
        return await self.session.get(DeliveryAttempt, (project_id, attempt_id))

    async def status_totals(self, project_id: UUID) -> dict[str, int]:
        rows = await self.session.execute(
            select(OutboxItem.status, func.count())
            .where(OutboxItem.project_id == project_id)
            .group_by(OutboxItem.status)
        )
        return dict(rows.all())

    async def outbox_gauges(self, project_id: UUID | None = None) -> tuple[int, int, float | None]:
        """``(pending, dead, oldest pending age in seconds)``; all projects when ``project_id`` is None.

        Pending counts every item not yet finished (pending, retrying, delivering). Read from the database
        so the figures are right with any number of instances (Prometheus gauges can use it too).
        """
        conditions = [] if project_id is None else [OutboxItem.project_id == project_id]
        row = (
            await self.session.execute(
                select(
                    func.count().filter(OutboxItem.status.in_(ACTIVE_STATUSES)),
                    func.count().filter(OutboxItem.status == OutboxStatus.DEAD),
                    func.extract(
                        "epoch",
                        func.now()
                        - func.min(OutboxItem.created_at).filter(OutboxItem.status.in_(ACTIVE_STATUSES)),
                    ),
                ).where(and_(*conditions) if conditions else text("true"))
            )
        ).one()
        age = float(row[2]) if row[2] is not None else None
        return int(row[0]), int(row[1]), age

    async def ledger_stats(self, *, project_id: UUID, since: datetime) -> dict[str, Any]:
        """Attempt counts and latency percentiles since ``since`` (``worker_lost`` rows carry no latency)."""
        row = (
            await self.session.execute(
                text(
                    """
                    SELECT count(*) AS attempts,
                           count(*) FILTER (WHERE outcome = 'delivered') AS succeeded,
                           percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms)
                               FILTER (WHERE error_code IS DISTINCT FROM 'worker_lost') AS p50,
                           percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms)
                               FILTER (WHERE error_code IS DISTINCT FROM 'worker_lost') AS p95
                    FROM delivery_attempts
                    WHERE project_id = :project_id AND started_at >= :since
                    """
                ),
                {"project_id": project_id, "since": since},
            )
        ).one()
        return {"attempts": row.attempts, "succeeded": row.succeeded, "p50": row.p50, "p95": row.p95}

    async def trends(
        self, *, project_id: UUID, unit: str, since: datetime, until: datetime
    ) -> list[tuple[datetime, int, int, int, int]]:
        """``(bucket start, sent, retry, dead, replay)`` per UTC hour/day bucket, empty buckets included.

        sent/retry/dead count ledger rows by outcome; replay counts replay deliveries created.
        """
        step = timedelta(hours=1) if unit == "hour" else timedelta(days=1)
        rows = await self.session.execute(
            text(
                """
                WITH buckets AS (
                    SELECT generate_series(date_trunc(:unit, CAST(:since AS timestamptz) AT TIME ZONE 'UTC'),
                                           date_trunc(:unit, CAST(:until AS timestamptz) AT TIME ZONE 'UTC'),
                                           CAST(:step AS interval)) AS ts
                ),
                a AS (
                    SELECT date_trunc(:unit, started_at AT TIME ZONE 'UTC') AS ts,
                           count(*) FILTER (WHERE outcome = 'delivered') AS sent,
                           count(*) FILTER (WHERE outcome = 'retry') AS retry,
                           count(*) FILTER (WHERE outcome = 'dead') AS dead
                    FROM delivery_attempts
                    WHERE project_id = :project_id AND started_at >= :since AND started_at < :until
                    GROUP BY 1
                ),
                r AS (
                    SELECT date_trunc(:unit, created_at AT TIME ZONE 'UTC') AS ts, count(*) AS replay
                    FROM outbox_items
                    WHERE project_id = :project_id AND replayed_from_id IS NOT NULL
                      AND created_at >= :since AND created_at < :until
                    GROUP BY 1
                )
                SELECT b.ts, coalesce(a.sent, 0) AS sent, coalesce(a.retry, 0) AS retry,
                       coalesce(a.dead, 0) AS dead, coalesce(r.replay, 0) AS replay
                FROM buckets AS b
                LEFT JOIN a ON a.ts = b.ts
                LEFT JOIN r ON r.ts = b.ts
                ORDER BY b.ts
                """
            ),
            {"unit": unit, "since": since, "until": until, "step": step, "project_id": project_id},
        )
        return [(row.ts.replace(tzinfo=UTC), row.sent, row.retry, row.dead, row.replay) for row in rows.all()]

    async def channel_health_rows(
        self, *, project_id: UUID, since: datetime, channel_id: UUID | None = None
    ) -> dict[UUID, dict[str, Any]]:
        """Per channel: attempts and successes since ``since``, last success/failure ever, pending/dead."""
        channel_filter = "AND c.id = :channel_id" if channel_id is not None else ""
        params: dict[str, Any] = {"project_id": project_id, "since": since}
        if channel_id is not None:
            params["channel_id"] = channel_id
        rows = await self.session.execute(
            text(
                f"""
                SELECT c.id, h.attempts, h.succeeded, ls.started_at AS last_success_at,
                       lf.started_at AS last_failure_at, lf.error_code AS last_error_code,
                       q.pending, q.dead
                FROM notification_channels AS c
                LEFT JOIN LATERAL (
                    SELECT count(*) AS attempts, count(*) FILTER (WHERE d.outcome = 'delivered') AS succeeded
                    FROM delivery_attempts AS d
                    WHERE d.project_id = c.project_id AND d.channel_id = c.id AND d.started_at >= :since
                ) AS h ON true
                LEFT JOIN LATERAL (
                    SELECT d.started_at FROM delivery_attempts AS d
                    WHERE d.project_id = c.project_id AND d.channel_id = c.id AND d.outcome = 'delivered'
                    ORDER BY d.started_at DESC LIMIT 1
                ) AS ls ON true
                LEFT JOIN LATERAL (
                    SELECT d.started_at, d.error_code FROM delivery_attempts AS d
                    WHERE d.project_id = c.project_id AND d.channel_id = c.id AND d.outcome <> 'delivered'
                    ORDER BY d.started_at DESC LIMIT 1
                ) AS lf ON true
                LEFT JOIN LATERAL (
                    SELECT count(*) FILTER (WHERE o.status IN ('pending', 'retrying', 'delivering'))
                               AS pending,
                           count(*) FILTER (WHERE o.status = 'dead') AS dead
                    FROM outbox_items AS o
                    WHERE o.project_id = c.project_id AND o.channel_id = c.id
                ) AS q ON true
                WHERE c.project_id = :project_id {channel_filter}
                """
            ),
            params,
        )
        return {row.id: dict(row._mapping) for row in rows.all()}

    async def channel_error_codes(
        self, *, project_id: UUID, since: datetime
    ) -> dict[UUID, list[tuple[str, int]]]:
        """Failed-attempt counts per channel and error code since ``since``, most frequent first."""
        rows = await self.session.execute(
            select(DeliveryAttempt.channel_id, DeliveryAttempt.error_code, func.count().label("n"))
            .where(
                DeliveryAttempt.project_id == project_id,
                DeliveryAttempt.started_at >= since,
                DeliveryAttempt.error_code.is_not(None),
            )
            .group_by(DeliveryAttempt.channel_id, DeliveryAttempt.error_code)
            .order_by(func.count().desc(), DeliveryAttempt.error_code)
        )
        codes: dict[UUID, list[tuple[str, int]]] = {}
        for channel_id, code, count in rows.all():
            codes.setdefault(channel_id, []).append((str(code), int(count)))
        return codes
