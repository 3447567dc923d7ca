"""SQL of the notifications domain's write side: channels, outbox writes, the claim, results, replays.

The claim and the result write are hand-written SQL on purpose: ``FOR UPDATE SKIP LOCKED`` with a
data-modifying CTE, and a set-based ``UPDATE ... FROM unnest(...)`` for a whole batch, have no
advanced-alchemy equivalent and are the hot path of delivery (one statement per batch, not per row).
The read models (pages, stats, trends, channel health) are in ``report_queries.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import uuid_utils.compat as uuid_compat
from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from sqlalchemy import any_, insert, literal, or_, select, text, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert

from prodsentinel.lib.time import utcnow
from prodsentinel.notifications.models import Channel, ChannelState, DeliveryAttempt, OutboxItem, OutboxStatus

__all__ = (
    "ACTIVE_STATUSES",
    "WORKER_LOST",
    "AttemptRecord",
    "ChannelRepository",
    "ChannelStateRepository",
    "Claim",
    "ClaimedItem",
    "DeliveryAttemptRepository",
    "FailureStreak",
    "ItemResult",
    "OutboxRepository",
    "new_id",
    "outbox_row",
)

#: Error code of the ledger row written when a claim expired: the worker died (or stalled) mid-send.
WORKER_LOST = "worker_lost"
#: Statuses of items that still have to be delivered.
ACTIVE_STATUSES = (OutboxStatus.PENDING, OutboxStatus.RETRYING, OutboxStatus.DELIVERING)


def new_id() -> UUID:
    """Time-ordered ids, like the ORM's (UUIDv7 keeps the ledger's primary key index append-mostly)."""
    return uuid_compat.uuid7()


class ChannelRepository(SQLAlchemyAsyncRepository[Channel]):
    model_type = Channel

    async def for_event(self, *, project_id: UUID, event_type: str) -> list[Channel]:
        """The project's enabled channels that want ``event_type`` (no ``event_types`` means all of them)."""
        channels = await self.session.scalars(
            select(Channel).where(
                Channel.project_id == project_id,
                Channel.enabled.is_(True),
                or_(Channel.event_types.is_(None), literal(event_type) == any_(Channel.event_types)),
            )
        )
        return list(channels)

    async def enabled_of_project(self, project_id: UUID) -> list[Channel]:
        """The project's enabled channels (the write side routes each event over all of them)."""
        channels = await self.session.scalars(
            select(Channel).where(Channel.project_id == project_id, Channel.enabled.is_(True))
        )
        return list(channels)

    async def throttle(self, delays: dict[tuple[UUID, UUID], float]) -> None:
        """Pause channels (keyed ``(project_id, channel_id)``) whose receiver asked for it
        (``Retry-After``): nothing of theirs is claimed before then, while other channels keep going."""
        for (project_id, channel_id), seconds in delays.items():
            await self.session.execute(
                text(
                    """
                    UPDATE notification_channels
                    SET throttled_until = GREATEST(coalesce(throttled_until, now()),
                                                   now() + make_interval(secs => :seconds))
                    WHERE project_id = :project_id AND id = :id
                    """
                ),
                {"project_id": project_id, "id": channel_id, "seconds": float(seconds)},
            )

    async def failure_streaks(self, channel_keys: Sequence[tuple[UUID, UUID]]) -> list[FailureStreak]:
        """Failed attempts of these ``(project_id, channel_id)`` (enabled) channels since their last
        success or re-enabling."""
        if not channel_keys:
            return []
        rows = await self.session.execute(
            text(_STREAK_SQL),
            {"project_ids": [key[0] for key in channel_keys], "ids": [key[1] for key in channel_keys]},
        )
        return [
            FailureStreak(r.project_id, r.channel_id, r.failures, r.first_failure_at, bool(r.gone))
            for r in rows
        ]

    async def disable(self, project_id: UUID, channel_id: UUID, reason: str) -> Channel | None:
        """Disable an enabled channel (None when it already was disabled or is gone)."""
        now = utcnow()
        row = await self.session.execute(
            text(
                """
                UPDATE notification_channels
                SET enabled = false, disabled_reason = :reason, disabled_at = :now, updated_at = :now
                WHERE project_id = :project_id AND id = :id AND enabled
                RETURNING id
                """
            ),
            {"project_id": project_id, "id": channel_id, "reason": reason, "now": now},
        )
        if row.scalar_one_or_none() is None:
            return None
        channel = await self.session.get(Channel, (project_id, channel_id), populate_existing=True)
        return channel

    async def of_project(self, project_id: UUID) -> list[Channel]:
        """The project's channels by name."""
        channels = await self.session.scalars(
            select(Channel).where(Channel.project_id == project_id).order_by(Channel.name)
        )
        return list(channels)

    async def upsert_by_name(self, *, project_id: UUID, values: dict[str, Any]) -> None:
        """Insert the channel, or overwrite ``values`` of the project's channel of the same name."""
        now = utcnow()
        statement = pg_insert(Channel).values(
            id=new_id(), project_id=project_id, created_at=now, updated_at=now, **values
        )
        await self.session.execute(
            statement.on_conflict_do_update(
                index_elements=["project_id", "name"],
                set_={**{k: statement.excluded[k] for k in values}, "updated_at": now},
            )
        )


@dataclass(frozen=True, slots=True)
class FailureStreak:
    """A channel's failed attempts since its last success (or its re-enabling)."""

    project_id: UUID
    channel_id: UUID
    failures: int
    first_failure_at: datetime
    gone: bool


_STREAK_SQL = """
SELECT c.project_id, c.id AS channel_id, count(a.id) AS failures, min(a.started_at) AS first_failure_at,
       bool_or(a.http_status = 410) AS gone
FROM notification_channels AS c
JOIN delivery_attempts AS a ON a.project_id = c.project_id AND a.channel_id = c.id
WHERE (c.project_id, c.id) IN (SELECT * FROM unnest(CAST(:project_ids AS uuid[]), CAST(:ids AS uuid[])))
  AND c.enabled
  AND a.outcome <> 'delivered'
  AND a.started_at > GREATEST(
        coalesce(c.reenabled_at, '-infinity'::timestamptz),
        coalesce((SELECT max(d.started_at) FROM delivery_attempts AS d
                  WHERE d.project_id = c.project_id AND d.channel_id = c.id AND d.outcome = 'delivered'),
                 '-infinity'::timestamptz))
GROUP BY c.project_id, c.id
"""


class ChannelStateRepository(SQLAlchemyAsyncRepository[ChannelState]):
    """Per-channel, per-subject delivery state (Slack ts, root Message-ID, PagerDuty dedup_key)."""

    model_type = ChannelState
    id_attribute = "channel_id"

    async def save(self, states: Sequence[tuple[UUID, UUID, str, dict[str, Any]]]) -> None:
        """Upsert ``(project_id, channel_id, subject, data)`` rows; the last one of a key wins."""
        latest = {(project_id, channel_id, subject): data for project_id, channel_id, subject, data in states}
        if not latest:
            return
        now = utcnow()
        statement = pg_insert(ChannelState).values(
            [
                {
                    "project_id": project_id,
                    "channel_id": channel_id,
                    "subject": subject,
                    "data": data,
                    "updated_at": now,
                }
                for (project_id, channel_id, subject), data in latest.items()
            ]
        )
        await self.session.execute(
            statement.on_conflict_do_update(
                index_elements=["project_id", "channel_id", "subject"],
                set_={"data": statement.excluded.data, "updated_at": now},
            )
        )


@dataclass(frozen=True, slots=True)
class ClaimedItem:
    """One outbox item claimed for sending, with its channel's delivery settings at claim time.

    ``secret``/``secret_env``: the channel's credential, whatever its kind (HMAC key, bot token,
    routing key). ``state``: the channel's stored state of the item's ``subject`` (None: no thread yet).
    """

    id: UUID
    project_id: UUID
    channel_id: UUID
    channel_name: str
    event_id: UUID
    delivery_id: UUID
    attempt: int
    body: bytes
    url: str | None
    secret: str | None
    secret_env: str | None
    kind: str = "webhook"
    signing: str = "prodsentinel"
    event_type: str = ""
    severity: str = "low"
    subject: str | None = None
    replayed: bool = False
    slack_channel: str | None = None
    email_to: tuple[str, ...] = ()
    state: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ItemResult:
    """The new state of one claimed item after its attempt (``status`` retrying/delivered/dead)."""

    id: UUID
    project_id: UUID
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


@dataclass(frozen=True, slots=True)
class Claim:
    """A committed-to-be claim: ``items`` to send now; ``recovered`` of them had an expired claim
    (a lost worker); ``lost_dead`` expired claims that had no attempt left and went dead instead."""

    items: list[ClaimedItem]
    recovered: int
    lost_dead: int


_CLAIM_SQL = """
WITH due AS (
    SELECT o.project_id, o.id, o.status AS prev_status
    FROM outbox_items AS o
    JOIN notification_channels AS c ON c.project_id = o.project_id AND c.id = o.channel_id
    WHERE o.status IN ('pending', 'retrying', 'delivering')
      AND o.next_attempt_at <= now()
      AND c.enabled
      AND (c.throttled_until IS NULL OR c.throttled_until <= now())
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
    WHERE o.project_id = due.project_id AND o.id = due.id
    RETURNING o.id, o.project_id, o.channel_id, o.event_id, o.delivery_id, o.attempts, o.status,
              o.payload, due.prev_status, o.event_type, o.severity, o.subject, o.replayed_from_id
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
       cl.attempts, cl.status, cl.prev_status, cl.payload::text AS body, c.url, c.secret, c.secret_env,
       c.kind, c.signing, c.slack_channel, c.email_to, cl.event_type, cl.severity, cl.subject,
       cl.replayed_from_id, s.data AS state
FROM claimed AS cl
JOIN notification_channels AS c ON c.project_id = cl.project_id AND c.id = cl.channel_id
LEFT JOIN notification_channel_state AS s
    ON s.project_id = cl.project_id AND s.channel_id = cl.channel_id AND s.subject = cl.subject
"""


_RECORD_SQL = """
WITH v AS (
    SELECT *
    FROM unnest(CAST(:project_ids AS uuid[]), CAST(:ids AS uuid[]), CAST(:attempts AS integer[]),
                CAST(:statuses AS text[]), CAST(:delays AS double precision[]), CAST(:http AS integer[]),
                CAST(:codes AS text[]))
         AS v(project_id, id, attempt, status, delay, http_status, error_code)
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
WHERE o.project_id = v.project_id AND o.id = v.id AND o.status = 'delivering' AND o.attempts = v.attempt
RETURNING o.id
"""


_REPLAY_COLUMNS = """
    id, project_id, channel_id, event_id, delivery_id, replayed_from_id, event_type, severity, subject,
    payload, status, attempts, next_attempt_at, created_at, updated_at
"""


def outbox_row(
    *,
    project_id: UUID,
    channel_id: UUID,
    event_id: UUID,
    event_type: str,
    severity: str,
    payload: dict[str, Any],
    now: datetime,
    subject: str | None,
) -> dict[str, Any]:
    """One pending outbox item, due now, with its own ``delivery_id`` (for ``insert_rows``)."""
    return {
        "id": new_id(),
        "project_id": project_id,
        "channel_id": channel_id,
        "event_id": event_id,
        "delivery_id": uuid.uuid4(),
        "event_type": event_type,
        "severity": severity,
        "subject": subject,
        "payload": payload,
        "status": OutboxStatus.PENDING,
        "attempts": 0,
        "next_attempt_at": now,
    }


class OutboxRepository(SQLAlchemyAsyncRepository[OutboxItem]):
    """The outbox's writes: new items, the dispatcher's claim and results, replays."""

    model_type = OutboxItem

    async def insert_rows(self, rows: Sequence[dict[str, Any]]) -> None:
        """Items built by ``outbox.outbox_row`` (many events at once), in multi-row INSERTs."""
        for start in range(0, len(rows), 2000):
            await self.session.execute(insert(OutboxItem), list(rows[start : start + 2000]))

    async def claim_due(
        self,
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
        statement = text(_CLAIM_SQL.format(project_filter=project_filter))
        rows = (await self.session.execute(statement, params)).all()
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
                kind=row.kind,
                signing=row.signing,
                event_type=row.event_type,
                severity=row.severity,
                subject=row.subject,
                replayed=row.replayed_from_id is not None,
                slack_channel=row.slack_channel,
                email_to=tuple(row.email_to or ()),
                state=row.state,
            )
            for row in sendable
        ]
        recovered = sum(1 for row in sendable if row.prev_status == OutboxStatus.DELIVERING)
        return Claim(items=items, recovered=recovered, lost_dead=len(rows) - len(sendable))

    async def record_results(self, results: Sequence[ItemResult]) -> int:
        """Apply a batch of attempt outcomes in one statement; returns how many items it updated.

        Fenced by ``(status = 'delivering', attempts = attempt)``: if this worker's claim expired and
        another worker re-claimed the item meanwhile, the stale result is ignored (its ledger row is
        still kept).
        """
        if not results:
            return 0
        rows = await self.session.execute(
            text(_RECORD_SQL),
            {
                "project_ids": [r.project_id for r in results],
                "ids": [r.id for r in results],
                "attempts": [r.attempt for r in results],
                "statuses": [r.status for r in results],
                "delays": [r.delay_seconds for r in results],
                "http": [r.http_status for r in results],
                "codes": [r.error_code for r in results],
            },
        )
        return len(rows.all())

    async def kill_active(self, project_id: UUID, channel_id: UUID, error_code: str) -> int:
        """Every not yet delivered item of the channel goes ``dead`` (its channel was disabled)."""
        rows = await self.session.execute(
            text(
                """
                UPDATE outbox_items
                SET status = 'dead', locked_until = NULL, last_error_code = :code, updated_at = now()
                WHERE project_id = :project_id AND channel_id = :id
                  AND status IN ('pending', 'retrying', 'delivering')
                RETURNING id
                """
            ),
            {"project_id": project_id, "id": channel_id, "code": error_code},
        )
        return len(rows.all())

    async def lock_present(self, item_keys: Sequence[tuple[UUID, UUID]]) -> set[UUID]:
        """The ids of these ``(project_id, id)`` outbox items that still exist, key-share locked until the
        transaction ends.

        A channel deleted while its items were being sent takes them with it (cascade); the lock makes a
        concurrent delete wait, so the ledger rows inserted next never point at a vanished item.
        """
        if not item_keys:
            return set()
        rows = await self.session.scalars(
            select(OutboxItem.id)
            .where(tuple_(OutboxItem.project_id, OutboxItem.id).in_(list(item_keys)))
            .with_for_update(key_share=True)
        )
        return set(rows)

    async def replay_item(self, *, item_id: UUID, project_id: UUID) -> UUID | None:
        """Insert a new delivery of a finished item (new id and delivery_id, same event_id); None if
        there is no finished item of that id in the project.

        Only delivered or dead items are replayed: an item still in flight would be sent twice at once.
        """
        row = await self.session.execute(
            text(
                f"""
                INSERT INTO outbox_items ({_REPLAY_COLUMNS})
                SELECT :new_id, o.project_id, o.channel_id, o.event_id, :delivery_id, o.id, o.event_type,
                       o.severity, o.subject, o.payload, 'pending', 0, now(), now(), now()
                FROM outbox_items AS o
                WHERE o.id = :item_id AND o.project_id = :project_id AND o.status IN ('delivered', 'dead')
                RETURNING id
                """
            ),
            {"new_id": new_id(), "delivery_id": uuid.uuid4(), "item_id": item_id, "project_id": project_id},
        )
        return row.scalar_one_or_none()

    async def replay_dead(
        self, *, project_id: UUID, limit: int, channel_id: UUID | None = None
    ) -> list[tuple[UUID, UUID]]:
        """Replay up to ``limit`` dead items (oldest first) not replayed before; ``[(new_id, original_id)]``.

        Skipping already-replayed items makes the call idempotent: calling it twice does not double the
        deliveries. Set-based: one INSERT ... SELECT.
        """
        channel_filter = "AND o.channel_id = :channel_id" if channel_id is not None else ""
        params: dict[str, Any] = {"project_id": project_id, "limit": limit}
        if channel_id is not None:
            params["channel_id"] = channel_id
        rows = await self.session.execute(
            text(
                f"""
                WITH picked AS (
                    SELECT o.project_id, o.id
                    FROM outbox_items AS o
                    WHERE o.project_id = :project_id AND o.status = 'dead' {channel_filter}
                      AND NOT EXISTS (SELECT 1 FROM outbox_items AS r
                                      WHERE r.project_id = o.project_id AND r.replayed_from_id = o.id)
                    ORDER BY o.updated_at, o.id
                    LIMIT :limit
                    FOR UPDATE OF o SKIP LOCKED
                )
                INSERT INTO outbox_items ({_REPLAY_COLUMNS})
                SELECT gen_random_uuid(), o.project_id, o.channel_id, o.event_id, gen_random_uuid(), o.id,
                       o.event_type, o.severity, o.subject, o.payload, 'pending', 0, now(), now(), now()
                FROM outbox_items AS o JOIN picked USING (project_id, id)
                RETURNING id, replayed_from_id
                """
            ),
            params,
        )
        return [(row.id, row.replayed_from_id) for row in rows]


class DeliveryAttemptRepository(SQLAlchemyAsyncRepository[DeliveryAttempt]):
    """The attempt ledger: insert only (it is immutable)."""

    model_type = DeliveryAttempt

    async def insert_records(self, records: Sequence[AttemptRecord]) -> None:
        """Append ledger rows, one statement for the batch."""
        if not records:
            return
        await self.session.execute(
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
