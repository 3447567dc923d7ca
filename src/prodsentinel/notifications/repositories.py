"""SQL of the notifications domain: outbox writes, the claim, result recording, replays, channels, reads.

The claim and the result write are hand-written SQL on purpose: ``FOR UPDATE SKIP LOCKED`` with a
data-modifying CTE, and a set-based ``UPDATE ... FROM unnest(...)`` for a whole batch, have no
advanced-alchemy equivalent and are the hot path of delivery (one statement per batch, not per row).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import uuid_utils.compat as uuid_compat
from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from sqlalchemy import Select, and_, any_, func, insert, literal, or_, select, text, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from prodsentinel.lib.time import utcnow
from prodsentinel.notifications.models import Channel, DeliveryAttempt, OutboxItem, OutboxStatus

__all__ = (
    "ACTIVE_STATUSES",
    "WORKER_LOST",
    "AttemptRecord",
    "ChannelRepository",
    "Claim",
    "ClaimedItem",
    "ItemResult",
    "attempts_page",
    "channel_error_codes",
    "channel_health_rows",
    "channels_for_event",
    "claim_due",
    "delete_channel",
    "insert_attempts",
    "insert_outbox_items",
    "ledger_stats",
    "lock_present_items",
    "new_id",
    "outbox_gauges",
    "outbox_item",
    "outbox_page",
    "project_channels",
    "record_results",
    "replay_dead",
    "replay_item",
    "status_totals",
    "trends",
    "upsert_channel",
)

#: Error code of the ledger row written when a claim expired: the worker died (or stalled) mid-send.
WORKER_LOST = "worker_lost"
#: Statuses of items that still have to be delivered.
ACTIVE_STATUSES = (OutboxStatus.PENDING, OutboxStatus.RETRYING, OutboxStatus.DELIVERING)


class ChannelRepository(SQLAlchemyAsyncRepository[Channel]):
    model_type = Channel


# --- channels ------------------------------------------------------------------------------------


async def channels_for_event(session: AsyncSession, *, project_id: UUID, event_type: str) -> list[Channel]:
    """The project's enabled channels that want ``event_type`` (no ``event_types`` means all of them)."""
    channels = await session.scalars(
        select(Channel).where(
            Channel.project_id == project_id,
            Channel.enabled.is_(True),
            or_(Channel.event_types.is_(None), literal(event_type) == any_(Channel.event_types)),
        )
    )
    return list(channels)


async def project_channels(session: AsyncSession, project_id: UUID) -> list[Channel]:
    channels = await session.scalars(
        select(Channel).where(Channel.project_id == project_id).order_by(Channel.name)
    )
    return list(channels)


async def delete_channel(session: AsyncSession, channel: Channel) -> None:
    """Mark the channel deleted; the DELETE (cascading to its outbox items and attempts) runs at flush."""
    await session.delete(channel)


async def upsert_channel(session: AsyncSession, *, project_id: UUID, values: dict[str, Any]) -> None:
    """Insert the channel, or overwrite ``values`` of the project's channel of the same name."""
    now = utcnow()
    statement = pg_insert(Channel).values(
        id=new_id(), project_id=project_id, created_at=now, updated_at=now, **values
    )
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=["project_id", "name"],
            set_={**{k: statement.excluded[k] for k in values}, "updated_at": now},
        )
    )


# --- the outbox write side -----------------------------------------------------------------------


async def insert_outbox_items(
    session: AsyncSession,
    *,
    project_id: UUID,
    channel_ids: Sequence[UUID],
    event_id: UUID,
    event_type: str,
    severity: str,
    payload: dict[str, Any],
    now: datetime,
) -> None:
    """One pending item per channel, due at ``now``, each with its own ``delivery_id``."""
    if not channel_ids:
        return
    await session.execute(
        insert(OutboxItem),
        [
            {
                "id": new_id(),
                "project_id": project_id,
                "channel_id": channel_id,
                "event_id": event_id,
                "delivery_id": uuid.uuid4(),
                "event_type": event_type,
                "severity": severity,
                "payload": payload,
                "status": OutboxStatus.PENDING,
                "attempts": 0,
                "next_attempt_at": now,
            }
            for channel_id in channel_ids
        ],
    )


@dataclass(frozen=True, slots=True)
class ClaimedItem:
    """One outbox item claimed for sending, with its channel's delivery settings at claim time."""

    id: UUID
    project_id: UUID
    channel_id: UUID
    channel_name: str
    event_id: UUID
    delivery_id: UUID
    attempt: int
    body: bytes
    url: str
    secret: str | None
    secret_env: str | None


@dataclass(frozen=True, slots=True)
class ItemResult:
    """The new state of one claimed item after its attempt (``status`` retrying/delivered/dead)."""

    id: UUID
    attempt: int
    status: str
    delay_seconds: float
    http_status: int | None
    error_code: str | None


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One ledger row (an HTTP attempt, successful or not)."""

    item: ClaimedItem
    started_at: datetime
    duration_ms: float
    http_status: int | None
    error_code: str | None
    outcome: str


_CLAIM_SQL = """
WITH due AS (
    SELECT o.id, o.status AS prev_status
    FROM outbox_items AS o
    JOIN notification_channels AS c ON c.id = o.channel_id
    WHERE o.status IN ('pending', 'retrying', 'delivering')
      AND o.next_attempt_at <= now()
      AND c.enabled
      {project_filter}
    ORDER BY o.next_attempt_at
    LIMIT :limit
    FOR UPDATE OF o SKIP LOCKED
),
claimed AS (
    UPDATE outbox_items AS o
    SET status = CASE WHEN due.prev_status = 'delivering' AND o.attempts >= :max_attempts
                      THEN 'dead' ELSE 'delivering' END,
        attempts = CASE WHEN due.prev_status = 'delivering' AND o.attempts >= :max_attempts
                        THEN o.attempts ELSE o.attempts + 1 END,
        locked_until = now() + make_interval(secs => :visibility),
        next_attempt_at = now() + make_interval(secs => :visibility),
        last_error_code = CASE WHEN due.prev_status = 'delivering' THEN 'worker_lost'
                               ELSE o.last_error_code END,
        last_http_status = CASE WHEN due.prev_status = 'delivering' THEN NULL
                                ELSE o.last_http_status END,
        updated_at = now()
    FROM due
    WHERE o.id = due.id
    RETURNING o.id, o.project_id, o.channel_id, o.event_id, o.delivery_id, o.attempts, o.status,
              o.payload, due.prev_status
),
lost AS (
    INSERT INTO delivery_attempts (id, project_id, outbox_id, channel_id, delivery_id, event_id,
                                   attempt_number, started_at, duration_ms, http_status, error_code,
                                   outcome)
    SELECT gen_random_uuid(), cl.project_id, cl.id, cl.channel_id, cl.delivery_id, cl.event_id,
           CASE WHEN cl.status = 'dead' THEN cl.attempts ELSE cl.attempts - 1 END,
           now(), 0, NULL, 'worker_lost',
           CASE WHEN cl.status = 'dead' THEN 'dead' ELSE 'retry' END
    FROM claimed AS cl
    WHERE cl.prev_status = 'delivering'
)
SELECT cl.id, cl.project_id, cl.channel_id, c.name AS channel_name, cl.event_id, cl.delivery_id,
       cl.attempts, cl.status, cl.prev_status, cl.payload::text AS body, c.url, c.secret, c.secret_env
FROM claimed AS cl
JOIN notification_channels AS c ON c.id = cl.channel_id
"""


@dataclass(frozen=True, slots=True)
class Claim:
    """A committed-to-be claim: ``items`` to send now; ``recovered`` of them had an expired claim
    (a lost worker); ``lost_dead`` expired claims that had no attempt left and went dead instead."""

    items: list[ClaimedItem]
    recovered: int
    lost_dead: int


async def claim_due(
    session: AsyncSession,
    *,
    limit: int,
    visibility_seconds: float,
    max_attempts: int,
    project_id: UUID | None = None,
) -> Claim:
    """Claim up to ``limit`` due items for this worker; the caller must COMMIT before sending.

    Due means pending/retrying with ``next_attempt_at <= now()``, or delivering with an expired claim
    (a worker that died mid-send). A claim sets ``next_attempt_at = locked_until = now() + visibility``,
    so one partial index (``ix_outbox_items_due``) finds all three cases. ``SKIP LOCKED`` makes
    concurrent dispatchers take disjoint items. An expired claim is recorded as a ``worker_lost``
    attempt (it counts towards ``max_attempts``: a payload that crashes workers must end up dead).
    Items of disabled channels are not claimed: disabling a channel pauses it.
    """
    project_filter = "AND o.project_id = :project_id" if project_id is not None else ""
    params: dict[str, Any] = {
        "limit": limit,
        "visibility": float(visibility_seconds),
        "max_attempts": max_attempts,
    }
    if project_id is not None:
        params["project_id"] = project_id
    rows = (await session.execute(text(_CLAIM_SQL.format(project_filter=project_filter)), params)).all()
    sendable = [row for row in rows if row.status == OutboxStatus.DELIVERING]
    items = [
        ClaimedItem(
            id=row.id,
            project_id=row.project_id,
            channel_id=row.channel_id,
            channel_name=row.channel_name,
            event_id=row.event_id,
            delivery_id=row.delivery_id,
            attempt=row.attempts,
            body=row.body.encode(),
            url=row.url,
            secret=row.secret,
            secret_env=row.secret_env,
        )
        for row in sendable
    ]
    recovered = sum(1 for row in sendable if row.prev_status == OutboxStatus.DELIVERING)
    return Claim(items=items, recovered=recovered, lost_dead=len(rows) - len(sendable))


_RECORD_SQL = """
WITH v AS (
    SELECT *
    FROM unnest(CAST(:ids AS uuid[]), CAST(:attempts AS integer[]), CAST(:statuses AS text[]),
                CAST(:delays AS double precision[]), CAST(:http AS integer[]), CAST(:codes AS text[]))
         AS v(id, attempt, status, delay, http_status, error_code)
)
UPDATE outbox_items AS o
SET status = v.status,
    next_attempt_at = CASE WHEN v.status = 'retrying' THEN now() + make_interval(secs => v.delay)
                           ELSE o.next_attempt_at END,
    locked_until = NULL,
    last_http_status = v.http_status,
    last_error_code = v.error_code,
    delivered_at = CASE WHEN v.status = 'delivered' THEN now() ELSE o.delivered_at END,
    updated_at = now()
FROM v
WHERE o.id = v.id AND o.status = 'delivering' AND o.attempts = v.attempt
RETURNING o.id
"""


async def record_results(session: AsyncSession, results: Sequence[ItemResult]) -> int:
    """Apply a batch of attempt outcomes in one statement; returns how many items it updated.

    Fenced by ``(status = 'delivering', attempts = attempt)``: if this worker's claim expired and another
    worker re-claimed the item meanwhile, the stale result is ignored (its ledger row is still kept).
    """
    if not results:
        return 0
    rows = await session.execute(
        text(_RECORD_SQL),
        {
            "ids": [r.id for r in results],
            "attempts": [r.attempt for r in results],
            "statuses": [r.status for r in results],
            "delays": [r.delay_seconds for r in results],
            "http": [r.http_status for r in results],
            "codes": [r.error_code for r in results],
        },
    )
    return len(rows.all())


def new_id() -> UUID:
    """Time-ordered ids, like the ORM's (UUIDv7 keeps the ledger's primary key index append-mostly)."""
    return uuid_compat.uuid7()


async def lock_present_items(session: AsyncSession, item_ids: Sequence[UUID]) -> set[UUID]:
    """The ids of these outbox items that still exist, key-share locked until the transaction ends.

    A channel deleted while its items were being sent takes them with it (cascade); the lock makes a
    concurrent delete wait, so the ledger rows inserted next never point at a vanished item.
    """
    if not item_ids:
        return set()
    rows = await session.scalars(
        select(OutboxItem.id).where(OutboxItem.id.in_(item_ids)).with_for_update(key_share=True)
    )
    return set(rows)


async def insert_attempts(session: AsyncSession, records: Sequence[AttemptRecord]) -> None:
    """Append ledger rows (insert only: the ledger is immutable)."""
    if not records:
        return
    await session.execute(
        insert(DeliveryAttempt),
        [
            {
                "id": new_id(),
                "project_id": r.item.project_id,
                "outbox_id": r.item.id,
                "channel_id": r.item.channel_id,
                "delivery_id": r.item.delivery_id,
                "event_id": r.item.event_id,
                "attempt_number": r.item.attempt,
                "started_at": r.started_at,
                "duration_ms": r.duration_ms,
                "http_status": r.http_status,
                "error_code": r.error_code,
                "outcome": r.outcome,
            }
            for r in records
        ],
    )


# --- replays -------------------------------------------------------------------------------------

_REPLAY_COLUMNS = """
    id, project_id, channel_id, event_id, delivery_id, replayed_from_id, event_type, severity, payload,
    status, attempts, next_attempt_at, created_at, updated_at
"""


async def replay_item(session: AsyncSession, *, item_id: UUID, project_id: UUID) -> UUID | None:
    """Insert a new delivery of a finished item (new id and delivery_id, same event_id); None if absent.

    Only delivered or dead items are replayed: an item still in flight would be sent twice at once.
    """
    replay_id = new_id()
    row = await session.execute(
        text(
            f"""
            INSERT INTO outbox_items ({_REPLAY_COLUMNS})
            SELECT :new_id, o.project_id, o.channel_id, o.event_id, :delivery_id, o.id, o.event_type,
                   o.severity, o.payload, 'pending', 0, now(), now(), now()
            FROM outbox_items AS o
            WHERE o.id = :item_id AND o.project_id = :project_id AND o.status IN ('delivered', 'dead')
            RETURNING id
            """
        ),
        {"new_id": replay_id, "delivery_id": uuid.uuid4(), "item_id": item_id, "project_id": project_id},
    )
    return row.scalar_one_or_none()


async def replay_dead(
    session: AsyncSession, *, project_id: UUID, limit: int, channel_id: UUID | None = None
) -> list[tuple[UUID, UUID]]:
    """Replay up to ``limit`` dead items (oldest first) not replayed before; ``[(new_id, original_id)]``.

    Skipping already-replayed items makes the call idempotent: calling it twice does not double the
    deliveries. Set-based: one INSERT ... SELECT.
    """
    channel_filter = "AND o.channel_id = :channel_id" if channel_id is not None else ""
    params: dict[str, Any] = {"project_id": project_id, "limit": limit}
    if channel_id is not None:
        params["channel_id"] = channel_id
    rows = await session.execute(
        text(
            f"""
            WITH picked AS (
                SELECT o.id
                FROM outbox_items AS o
                WHERE o.project_id = :project_id AND o.status = 'dead' {channel_filter}
                  AND NOT EXISTS (SELECT 1 FROM outbox_items AS r WHERE r.replayed_from_id = o.id)
                ORDER BY o.updated_at, o.id
                LIMIT :limit
                FOR UPDATE OF o SKIP LOCKED
            )
            INSERT INTO outbox_items ({_REPLAY_COLUMNS})
            SELECT gen_random_uuid(), o.project_id, o.channel_id, o.event_id, gen_random_uuid(), o.id,
                   o.event_type, o.severity, o.payload, 'pending', 0, now(), now(), now()
            FROM outbox_items AS o JOIN picked USING (id)
            RETURNING id, replayed_from_id
            """
        ),
        params,
    )
    return [(row.id, row.replayed_from_id) for row in rows]


# --- read models ---------------------------------------------------------------------------------


def _keyset_desc(columns: tuple[Any, Any], cursor: tuple[Any, Any] | None) -> Any:
    """``(a, b) < cursor`` for newest-first keyset pages."""
    if cursor is None:
        return None
    return tuple_(*columns) < tuple_(*cursor)


async def outbox_item(
    session: AsyncSession, *, project_id: UUID, item_id: UUID
) -> tuple[OutboxItem, str] | None:
    """One outbox item of the project with its channel's name; None if absent."""
    row = (
        await session.execute(
            select(OutboxItem, Channel.name)
            .join(Channel, Channel.id == OutboxItem.channel_id)
            .where(OutboxItem.id == item_id, OutboxItem.project_id == project_id)
        )
    ).first()
    return None if row is None else (row[0], row[1])


async def outbox_page(
    session: AsyncSession,
    *,
    project_id: UUID,
    limit: int,
    cursor: tuple[datetime, UUID] | None,
    statuses: Sequence[str] | None = None,
    event_type: str | None = None,
    channel_id: UUID | None = None,
    order_by_updated: bool = False,
) -> list[tuple[OutboxItem, str]]:
    """One newest-first page of outbox items (by ``created_at``, or ``updated_at`` for history)."""
    order_column = OutboxItem.updated_at if order_by_updated else OutboxItem.created_at
    statement: Select[OutboxItem, str] = (
        select(OutboxItem, Channel.name)
        .join(Channel, Channel.id == OutboxItem.channel_id)
        .where(OutboxItem.project_id == project_id)
    )
    if statuses:
        statement = statement.where(OutboxItem.status.in_(statuses))
    if event_type is not None:
        statement = statement.where(OutboxItem.event_type == event_type)
    if channel_id is not None:
        statement = statement.where(OutboxItem.channel_id == channel_id)
    keyset = _keyset_desc((order_column, OutboxItem.id), cursor)
    if keyset is not None:
        statement = statement.where(keyset)
    statement = statement.order_by(order_column.desc(), OutboxItem.id.desc()).limit(limit)
    return [(item, name) for item, name in (await session.execute(statement)).all()]


async def attempts_page(
    session: AsyncSession,
    *,
    project_id: UUID,
    limit: int,
    cursor: tuple[datetime, UUID] | None,
    outbox_id: UUID | None = None,
    channel_id: UUID | None = None,
    event_id: UUID | None = None,
    outcome: str | None = None,
    error_code: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[DeliveryAttempt]:
    """One newest-first page of the attempt ledger."""
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
    keyset = _keyset_desc((DeliveryAttempt.started_at, DeliveryAttempt.id), cursor)
    if keyset is not None:
        statement = statement.where(keyset)
    statement = statement.order_by(DeliveryAttempt.started_at.desc(), DeliveryAttempt.id.desc()).limit(limit)
    return list((await session.scalars(statement)).all())


async def status_totals(session: AsyncSession, project_id: UUID) -> dict[str, int]:
    rows = await session.execute(
        select(OutboxItem.status, func.count())
        .where(OutboxItem.project_id == project_id)
        .group_by(OutboxItem.status)
    )
    return dict(rows.all())


async def outbox_gauges(
    session: AsyncSession, project_id: UUID | None = None
) -> tuple[int, int, float | None]:
    """``(pending, dead, oldest pending age in seconds)``; all projects when ``project_id`` is None.

    Pending counts every item not yet finished (pending, retrying, delivering). Read from the database
    so the figures are right with any number of instances (Prometheus gauges can use it too).
    """
    conditions = [] if project_id is None else [OutboxItem.project_id == project_id]
    row = (
        await session.execute(
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


async def ledger_stats(session: AsyncSession, *, project_id: UUID, since: datetime) -> dict[str, Any]:
    """Attempt counts and latency percentiles since ``since`` (``worker_lost`` rows carry no latency)."""
    row = (
        await session.execute(
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
    session: AsyncSession, *, project_id: UUID, unit: str, since: datetime, until: datetime
) -> list[tuple[datetime, int, int, int, int]]:
    """``(bucket start, sent, retry, dead, replay)`` per UTC hour/day bucket, empty buckets included.

    sent/retry/dead count ledger rows by outcome; replay counts replay deliveries created.
    """
    step = timedelta(hours=1) if unit == "hour" else timedelta(days=1)
    rows = await session.execute(
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
    session: AsyncSession, *, project_id: UUID, since: datetime, channel_id: UUID | None = None
) -> dict[UUID, dict[str, Any]]:
    """Per channel: attempts and successes since ``since``, last success/failure ever, pending/dead."""
    channel_filter = "AND c.id = :channel_id" if channel_id is not None else ""
    params: dict[str, Any] = {"project_id": project_id, "since": since}
    if channel_id is not None:
        params["channel_id"] = channel_id
    rows = await session.execute(
        text(
            f"""
            SELECT c.id, h.attempts, h.succeeded, ls.started_at AS last_success_at,
                   lf.started_at AS last_failure_at, lf.error_code AS last_error_code,
                   q.pending, q.dead
            FROM notification_channels AS c
            LEFT JOIN LATERAL (
                SELECT count(*) AS attempts, count(*) FILTER (WHERE d.outcome = 'delivered') AS succeeded
                FROM delivery_attempts AS d
                WHERE d.channel_id = c.id AND d.started_at >= :since
            ) AS h ON true
            LEFT JOIN LATERAL (
                SELECT d.started_at FROM delivery_attempts AS d
                WHERE d.channel_id = c.id AND d.outcome = 'delivered'
                ORDER BY d.started_at DESC LIMIT 1
            ) AS ls ON true
            LEFT JOIN LATERAL (
                SELECT d.started_at, d.error_code FROM delivery_attempts AS d
                WHERE d.channel_id = c.id AND d.outcome <> 'delivered'
                ORDER BY d.started_at DESC LIMIT 1
            ) AS lf ON true
            LEFT JOIN LATERAL (
                SELECT count(*) FILTER (WHERE o.status IN ('pending', 'retrying', 'delivering')) AS pending,
                       count(*) FILTER (WHERE o.status = 'dead') AS dead
                FROM outbox_items AS o
                WHERE o.channel_id = c.id
            ) AS q ON true
            WHERE c.project_id = :project_id {channel_filter}
            """
        ),
        params,
    )
    return {row.id: dict(row._mapping) for row in rows.all()}


async def channel_error_codes(
    session: AsyncSession, *, project_id: UUID, since: datetime
) -> dict[UUID, list[tuple[str, int]]]:
    """Failed-attempt counts per channel and error code since ``since``, most frequent first."""
    rows = await session.execute(
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
