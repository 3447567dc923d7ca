"""Rules of the notifications domain: the outbox write side, channels, the dispatcher, replays, reads.

Delivery contract (SPEC §8, details in docs/notifications.md):

- ``add_event`` writes one outbox item per matching channel inside the caller's transaction; after the
  commit the caller calls :func:`enqueue_dispatch` so delivery starts at once (the cron is the net).
- The dispatcher claims due items (``repositories.claim_due``) and COMMITS the claim before any HTTP
  request, so a worker killed mid-send leaves a ``delivering`` item whose claim expires after the
  visibility timeout and is claimed again: never lost, possibly received twice (``event_id`` dedups).
- Each attempt appends one immutable ledger row; ``retry.decide`` turns it into delivered / retrying
  (full-jitter backoff or ``Retry-After``) / dead, with ``PRODSENTINEL_NOTIFY_MAX_ATTEMPTS`` counting
  every attempt.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import msgspec
import structlog
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.auth.services import ProjectService
from prodsentinel.incidents.severity import Severity, rank
from prodsentinel.lib import jobs, vocabulary
from prodsentinel.lib.after_commit import after_commit
from prodsentinel.lib.config_files import config_file_error, read_yaml_list
from prodsentinel.lib.database import session_scope
from prodsentinel.lib.errors import BadRequestError, ConflictError, NotFoundError, ValidationError
from prodsentinel.lib.pagination import check_limit, decode_cursor, encode_cursor
from prodsentinel.lib.time import as_utc, utcnow
from prodsentinel.notifications import delivery, retry
from prodsentinel.notifications import repositories as repo
from prodsentinel.notifications.models import Channel, DeliveryAttempt, OutboxItem, OutboxStatus
from prodsentinel.notifications.schemas import (
    AttemptOut,
    AttemptPage,
    ChannelCreate,
    ChannelHealth,
    ChannelOut,
    ChannelUpdate,
    DispatchOut,
    ErrorCodeCount,
    LatencyOut,
    OutboxItemOut,
    OutboxPage,
    ReplayDeadOut,
    StatsOut,
    TrendBucket,
    TrendsOut,
)
from prodsentinel.settings import Settings, SettingsError

__all__ = (
    "DISPATCH_JOB",
    "DISPATCH_JOB_TIMEOUT",
    "EVENT_TYPES",
    "SEVERITIES",
    "add_event",
    "create_channel",
    "delete_channel",
    "dispatch_batch",
    "dispatch_due",
    "enqueue_dispatch",
    "get_attempt",
    "get_channel",
    "history",
    "list_attempts",
    "list_channels",
    "list_outbox",
    "load_channels_file",
    "parse_channels_file",
    "replay",
    "replay_dead",
    "stats",
    "trends",
    "update_channel",
)

logger = structlog.get_logger("prodsentinel.notifications")

SEVERITIES = tuple(sev.value for sev in vocabulary.SEVERITIES)
EVENT_TYPES = vocabulary.EVENT_TYPES

#: The SAQ function other domains enqueue after committing outbox events (see ``enqueue_dispatch``).
DISPATCH_JOB = "dispatch_due"
#: SAQ timeout of one dispatch job; its loop stops claiming after ``DISPATCH_BUDGET_SECONDS``.
DISPATCH_JOB_TIMEOUT = 120
DISPATCH_BUDGET_SECONDS = 30.0

_FINAL_STATUS = {
    "delivered": OutboxStatus.DELIVERED,
    "retry": OutboxStatus.RETRYING,
    "dead": OutboxStatus.DEAD,
}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,199}$")
_MAX_SECRET = 500
_MAX_URL = 2000
_HEALTH_WINDOW = 86_400


# --- the outbox write side ----------------------------------------------------------------------


async def add_event(
    session: AsyncSession,
    *,
    project_id: UUID,
    event_type: str,
    severity: str,
    payload: dict[str, Any],
    event_id: UUID | None = None,
) -> UUID:
    """Write one outbox item per enabled channel of the project that wants this event.

    Flushes, never commits: the caller's transaction makes the state change and its notifications
    durable together. Returns the ``event_id`` (new unless given). It registers :func:`enqueue_dispatch`
    to run after that commit (``lib.after_commit``), so delivery starts at once instead of at the next
    cron tick, whichever service wrote the event; callers do nothing more.

    The body is ``{"event_id", "event_type", "severity", "occurred_at", "project_id", **payload}``.
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown outbox event type {event_type!r}")
    event_id = event_id or uuid.uuid4()
    channels = await repo.channels_for_event(session, project_id=project_id, event_type=event_type)
    wanted = [c for c in channels if rank(Severity(severity)) >= rank(Severity(c.min_severity))]
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
    await repo.insert_outbox_items(
        session,
        project_id=project_id,
        channel_ids=[channel.id for channel in wanted],
        event_id=event_id,
        event_type=event_type,
        severity=severity,
        payload=body,
        now=now,
    )
    after_commit(session, enqueue_dispatch)
    return event_id


async def enqueue_dispatch() -> bool:
    """Ask a worker to deliver now (after the commit of an ``add_event`` or a replay).

    The job key dedups bursts (one queued/running dispatch per queue; it loops until nothing is due).
    A lost or deduplicated enqueue only delays delivery until the next cron tick (a few seconds).
    """
    return await jobs.enqueue(DISPATCH_JOB, key=DISPATCH_JOB, timeout=DISPATCH_JOB_TIMEOUT)


# --- channels ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ChannelFields:
    name: str
    url: str
    secret: str | None
    secret_env: str | None
    min_severity: str
    event_types: list[str] | None
    enabled: bool


def _validate_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 100:
        raise ValidationError("name must be 1 to 100 characters.")
    return name


def _validate_url(url: str) -> str:
    url = url.strip()
    if len(url) > _MAX_URL:
        raise ValidationError(f"url must be at most {_MAX_URL} characters.")
    try:
        parsed = httpx.URL(url)
        host = parsed.host  # decoded lazily: a bad IDNA label ("xn--") raises only here
    except Exception:
        raise ValidationError("url is not a valid URL.") from None
    if parsed.scheme not in {"http", "https"} or not host:
        raise ValidationError("url must be an absolute http:// or https:// URL with a host.")
    return url


def _validate_secret(secret: str | None, secret_env: str | None) -> tuple[str | None, str | None]:
    if secret is not None and secret_env is not None:
        raise ValidationError("give either secret or secret_env, not both.")
    if secret is not None and not 1 <= len(secret) <= _MAX_SECRET:
        raise ValidationError(f"secret must be 1 to {_MAX_SECRET} characters (omit it for no signature).")
    if secret_env is not None and not _ENV_NAME.match(secret_env):
        raise ValidationError("secret_env must be an environment variable name ([A-Za-z_][A-Za-z0-9_]*).")
    return secret, secret_env


def _validate_severity(severity: str) -> str:
    value = severity.strip().lower()
    if value not in SEVERITIES:
        raise ValidationError(f"min_severity must be one of {', '.join(SEVERITIES)}.")
    return value


def _validate_event_types(event_types: list[str] | None) -> list[str] | None:
    if event_types is None:
        return None
    cleaned: list[str] = []
    for name in event_types:
        value = name.strip().upper()
        if value not in EVENT_TYPES:
            raise ValidationError(f"unknown event type {name!r}; expected any of {', '.join(EVENT_TYPES)}.")
        if value not in cleaned:
            cleaned.append(value)
    if not cleaned:
        raise ValidationError("event_types must name at least one event type (omit it for all).")
    return cleaned


def _validated(data: ChannelCreate) -> _ChannelFields:
    secret, secret_env = _validate_secret(data.secret, data.secret_env)
    return _ChannelFields(
        name=_validate_name(data.name),
        url=_validate_url(data.url),
        secret=secret,
        secret_env=secret_env,
        min_severity=_validate_severity(data.min_severity),
        event_types=_validate_event_types(data.event_types),
        enabled=data.enabled,
    )


def _secret_hint(channel: Channel) -> str | None:
    """Enough to recognise which secret is set, never enough to matter: the last 4 characters of a
    secret of 12+ characters, ``****`` for shorter ones."""
    if not channel.secret:
        return None
    return "****" + channel.secret[-4:] if len(channel.secret) >= 12 else "****"


def _display_url(url: str) -> str:
    """The URL with any password in its userinfo masked (credentials are secrets too)."""
    try:
        parsed = httpx.URL(url)
    except Exception:
        return url
    if parsed.password:
        return str(parsed.copy_with(password="****"))
    return url


def _channel_out(channel: Channel, health: ChannelHealth | None = None) -> ChannelOut:
    return ChannelOut(
        id=channel.id,
        name=channel.name,
        url=_display_url(channel.url),
        has_secret=bool(channel.secret or channel.secret_env),
        secret_hint=_secret_hint(channel),
        secret_env=channel.secret_env,
        min_severity=channel.min_severity,
        event_types=list(channel.event_types) if channel.event_types else list(EVENT_TYPES),
        enabled=channel.enabled,
        created_at=channel.created_at,
        updated_at=channel.updated_at,
        health=health,
    )


async def _channel_of(session: AsyncSession, channel_id: UUID, project_id: UUID) -> Channel:
    channel = await session.get(Channel, channel_id)
    if channel is None or channel.project_id != project_id:
        raise NotFoundError("Channel not found.")
    return channel


async def _flush_unique(session: AsyncSession, name: str) -> None:
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError:
        raise ConflictError(f"a channel named {name!r} already exists in this project.") from None


async def create_channel(session: AsyncSession, *, project_id: UUID, data: ChannelCreate) -> ChannelOut:
    fields = _validated(data)
    channel = Channel(project_id=project_id, **_as_dict(fields))
    session.add(channel)
    await _flush_unique(session, fields.name)
    await session.refresh(channel)
    return _channel_out(channel, _empty_health())


def _as_dict(fields: _ChannelFields) -> dict[str, Any]:
    return {
        "name": fields.name,
        "url": fields.url,
        "secret": fields.secret,
        "secret_env": fields.secret_env,
        "min_severity": fields.min_severity,
        "event_types": fields.event_types,
        "enabled": fields.enabled,
    }


async def update_channel(
    session: AsyncSession, *, project_id: UUID, channel_id: UUID, data: ChannelUpdate
) -> ChannelOut:
    """PATCH semantics: absent fields are kept. Setting ``secret`` clears ``secret_env`` and vice versa
    unless both are given (422)."""
    channel = await _channel_of(session, channel_id, project_id)
    changes = {f: getattr(data, f) for f in data.__struct_fields__ if getattr(data, f) is not msgspec.UNSET}
    if "secret" in changes and "secret_env" in changes and changes["secret"] and changes["secret_env"]:
        raise ValidationError("give either secret or secret_env, not both.")
    if "name" in changes:
        channel.name = _validate_name(changes["name"])
    if "url" in changes:
        channel.url = _validate_url(changes["url"])
    if "secret" in changes:
        channel.secret, _ = _validate_secret(changes["secret"], None)
        if changes["secret"] is not None:
            channel.secret_env = None
    if "secret_env" in changes:
        _, channel.secret_env = _validate_secret(None, changes["secret_env"])
        if changes["secret_env"] is not None:
            channel.secret = None
    if "min_severity" in changes:
        channel.min_severity = _validate_severity(changes["min_severity"])
    if "event_types" in changes:
        channel.event_types = _validate_event_types(changes["event_types"])
    if "enabled" in changes:
        channel.enabled = bool(changes["enabled"])
    channel.updated_at = utcnow()
    await _flush_unique(session, channel.name)
    health = await _health_map(session, project_id=project_id, channel_id=channel.id)
    return _channel_out(channel, health.get(channel.id))


async def delete_channel(session: AsyncSession, *, project_id: UUID, channel_id: UUID) -> None:
    """Delete a channel and (by cascade) its outbox items and their attempts."""
    channel = await _channel_of(session, channel_id, project_id)
    await repo.delete_channel(session, channel)
    await session.flush()


async def get_channel(session: AsyncSession, *, project_id: UUID, channel_id: UUID) -> ChannelOut:
    channel = await _channel_of(session, channel_id, project_id)
    health = await _health_map(session, project_id=project_id, channel_id=channel.id)
    return _channel_out(channel, health.get(channel.id))


async def list_channels(
    session: AsyncSession, *, project_id: UUID, window_seconds: int = _HEALTH_WINDOW
) -> list[ChannelOut]:
    """The project's channels with delivery health over the last ``window_seconds``."""
    _check_window(window_seconds)
    channels = await repo.project_channels(session, project_id)
    health = await _health_map(session, project_id=project_id, window_seconds=window_seconds)
    return [_channel_out(channel, health.get(channel.id)) for channel in channels]


def _check_window(window_seconds: int) -> None:
    if not 60 <= window_seconds <= 90 * 86_400:
        raise BadRequestError("window must be between 60 seconds and 90 days.")


def _empty_health(window_seconds: int = _HEALTH_WINDOW) -> ChannelHealth:
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


async def _health_map(
    session: AsyncSession,
    *,
    project_id: UUID,
    channel_id: UUID | None = None,
    window_seconds: int = _HEALTH_WINDOW,
) -> dict[UUID, ChannelHealth]:
    since = utcnow() - timedelta(seconds=window_seconds)
    rows = await repo.channel_health_rows(session, project_id=project_id, since=since, channel_id=channel_id)
    codes = await repo.channel_error_codes(session, project_id=project_id, since=since)
    health: dict[UUID, ChannelHealth] = {}
    for cid, row in rows.items():
        attempts, succeeded = int(row["attempts"] or 0), int(row["succeeded"] or 0)
        rate = succeeded / attempts if attempts else None
        last_ok, last_bad = row["last_success_at"], row["last_failure_at"]
        if not attempts:
            status = "unknown"
        elif last_bad is not None and (last_ok is None or last_bad > last_ok):
            status = "failing"
        elif rate is not None and rate < 0.95:
            status = "degraded"
        else:
            status = "healthy"
        health[cid] = ChannelHealth(
            status=status,
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


# --- channels from PRODSENTINEL_CHANNELS_FILE ------------------------------------------------------


class ChannelFileItem(ChannelCreate, forbid_unknown_fields=True):
    """One item of the channels YAML list: a channel plus the name of its project (required)."""

    project: str = ""


def parse_channels_file(path: Path) -> list[ChannelFileItem]:
    """Read and validate the whole file; any problem is one SettingsError line naming the variable."""

    def fail(reason: str) -> SettingsError:
        return config_file_error("PRODSENTINEL_CHANNELS_FILE", path, reason)

    raw = read_yaml_list("PRODSENTINEL_CHANNELS_FILE", path, key="channels", what="channel")
    items: list[ChannelFileItem] = []
    seen: set[tuple[str, str]] = set()
    for index, entry in enumerate(raw):
        try:
            item = msgspec.convert(entry, ChannelFileItem)
            fields = _validated(item)
            project = item.project.strip()
            if not project or len(project) > 100:
                raise ValidationError("project must be 1 to 100 characters.")
        except (msgspec.ValidationError, ValidationError) as exc:
            raise fail(f"item {index}: {exc}") from None
        if (project, fields.name) in seen:
            raise fail(f"item {index}: duplicate channel {fields.name!r} in project {project!r}")
        seen.add((project, fields.name))
        items.append(ChannelFileItem(project=project, **_as_dict(fields)))
    return items


async def load_channels_file(session: AsyncSession, items: list[ChannelFileItem]) -> int:
    """Upsert channels by (project, name), creating projects as needed. Idempotent, so every instance
    may run it at start. Channels missing from the file are left alone (the API may own them)."""
    async with ProjectService.new(session=session) as projects:
        for item in items:
            project = await projects.get_or_create(item.project)
            values = {
                "name": item.name,
                "url": item.url,
                "secret": item.secret,
                "secret_env": item.secret_env,
                "min_severity": item.min_severity,
                "event_types": item.event_types,
                "enabled": item.enabled,
            }
            await repo.upsert_channel(session, project_id=project.id, values=values)
    return len(items)


# --- the dispatcher ------------------------------------------------------------------------------


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
        claim = await repo.claim_due(
            session,
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
    facts = await delivery.send_batch(
        claim.items, timeout_seconds=settings.notify_timeout_seconds, concurrency=settings.notify_concurrency
    )
    results: list[repo.ItemResult] = []
    records: list[repo.AttemptRecord] = []
    for fact in facts:
        decision = retry.decide(
            attempt=fact.item.attempt,
            max_attempts=settings.notify_max_attempts,
            http_status=fact.http_status,
            error_code=fact.error_code,
            retry_after_seconds=fact.retry_after_seconds,
            base_seconds=settings.notify_backoff_seconds,
        )
        status = _FINAL_STATUS[decision.outcome]
        results.append(
            repo.ItemResult(
                id=fact.item.id,
                attempt=fact.item.attempt,
                status=status,
                delay_seconds=decision.delay_seconds or 0.0,
                http_status=fact.http_status,
                error_code=fact.error_code,
            )
        )
        records.append(
            repo.AttemptRecord(
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
        present = await repo.lock_present_items(session, [record.item.id for record in records])
        await repo.insert_attempts(session, [record for record in records if record.item.id in present])
        updated = await repo.record_results(session, results)
    if len(present) < len(records):  # their channel was deleted while they were being sent
        logger.info("outbox_items_deleted_during_delivery", count=len(records) - len(present))
    counts.stale = len(results) - updated
    if counts.stale:
        logger.warning("outbox_stale_results", stale=counts.stale)
    return counts


async def dispatch_due(
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


# --- replays -------------------------------------------------------------------------------------


async def replay(session: AsyncSession, *, project_id: UUID, item_id: UUID) -> OutboxItemOut:
    """A new delivery of a delivered or dead item: new delivery_id, same event_id, replayed_from_id."""
    new_id = await repo.replay_item(session, item_id=item_id, project_id=project_id)
    if new_id is None:
        existing = await session.get(OutboxItem, item_id)
        if existing is None or existing.project_id != project_id:
            raise NotFoundError("Outbox item not found.")
        raise ConflictError(f"only delivered or dead items can be replayed; this one is {existing.status}.")
    return await get_outbox_item(session, project_id=project_id, item_id=new_id)


async def replay_dead(
    session: AsyncSession, *, project_id: UUID, limit: int, channel_id: UUID | None = None
) -> ReplayDeadOut:
    check_limit(limit)
    pairs = await repo.replay_dead(session, project_id=project_id, limit=limit, channel_id=channel_id)
    return ReplayDeadOut(
        count=len(pairs), ids=[new for new, _ in pairs], replayed_from_ids=[old for _, old in pairs]
    )


# --- reads ---------------------------------------------------------------------------------------


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


async def get_outbox_item(session: AsyncSession, *, project_id: UUID, item_id: UUID) -> OutboxItemOut:
    row = await repo.outbox_item(session, project_id=project_id, item_id=item_id)
    if row is None:
        raise NotFoundError("Outbox item not found.")
    return _item_out(row[0], row[1])


_STATUSES = (*repo.ACTIVE_STATUSES, OutboxStatus.DELIVERED, OutboxStatus.DEAD)


async def list_outbox(
    session: AsyncSession,
    *,
    project_id: UUID,
    limit: int,
    cursor: str | None,
    status: str | None = None,
    event_type: str | None = None,
    channel_id: UUID | None = None,
) -> OutboxPage:
    """Outbox items, newest first (keyset on ``created_at, id``)."""
    check_limit(limit)
    if status is not None and status not in _STATUSES:
        raise BadRequestError(f"status must be one of {', '.join(_STATUSES)}.")
    if event_type is not None and event_type not in EVENT_TYPES:
        raise BadRequestError(f"event_type must be one of {', '.join(EVENT_TYPES)}.")
    rows = await repo.outbox_page(
        session,
        project_id=project_id,
        limit=limit,
        cursor=_decode(cursor),
        statuses=[status] if status else None,
        event_type=event_type,
        channel_id=channel_id,
    )
    return OutboxPage(
        items=[_item_out(item, name) for item, name in rows],
        next_cursor=_next(rows[-1][0].created_at, rows[-1][0].id) if len(rows) == limit else None,
    )


async def history(
    session: AsyncSession,
    *,
    project_id: UUID,
    limit: int,
    cursor: str | None,
    status: str | None = None,
    channel_id: UUID | None = None,
) -> OutboxPage:
    """Finished items (delivered and dead), most recently finished first (keyset on ``updated_at``)."""
    check_limit(limit)
    finished = (OutboxStatus.DELIVERED, OutboxStatus.DEAD)
    if status is not None and status not in finished:
        raise BadRequestError("status must be delivered or dead.")
    rows = await repo.outbox_page(
        session,
        project_id=project_id,
        limit=limit,
        cursor=_decode(cursor),
        statuses=[status] if status else list(finished),
        channel_id=channel_id,
        order_by_updated=True,
    )
    return OutboxPage(
        items=[_item_out(item, name) for item, name in rows],
        next_cursor=_next(rows[-1][0].updated_at, rows[-1][0].id) if len(rows) == limit else None,
    )


def _decode(cursor: str | None) -> tuple[datetime, UUID] | None:
    if cursor is None:
        return None
    when, ident = decode_cursor(cursor, (datetime, UUID))  # in UTC, in range, or a 400
    return when, ident


def _next(when: datetime, ident: UUID) -> str:
    return encode_cursor([when.isoformat(), str(ident)])


def _attempt_out(row: Any) -> AttemptOut:
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


async def list_attempts(
    session: AsyncSession,
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
    check_limit(limit)
    if outcome is not None and outcome not in ("delivered", "retry", "dead"):
        raise BadRequestError("outcome must be delivered, retry or dead.")
    rows = await repo.attempts_page(
        session,
        project_id=project_id,
        limit=limit,
        cursor=_decode(cursor),
        outbox_id=outbox_id,
        channel_id=channel_id,
        event_id=event_id,
        outcome=outcome,
        error_code=error_code,
        since=as_utc(since, "since") if since else None,
        until=as_utc(until, "until") if until else None,
    )
    return AttemptPage(
        items=[_attempt_out(row) for row in rows],
        next_cursor=_next(rows[-1].started_at, rows[-1].id) if len(rows) == limit else None,
    )


async def get_attempt(session: AsyncSession, *, project_id: UUID, attempt_id: UUID) -> AttemptOut:
    row = await session.get(DeliveryAttempt, attempt_id)
    if row is None or row.project_id != project_id:
        raise NotFoundError("Delivery attempt not found.")
    return _attempt_out(row)


async def stats(session: AsyncSession, *, project_id: UUID, window_seconds: int = _HEALTH_WINDOW) -> StatsOut:
    _check_window(window_seconds)
    totals = dict.fromkeys(_STATUSES, 0)
    totals.update(await repo.status_totals(session, project_id))
    pending, dead, oldest = await repo.outbox_gauges(session, project_id)
    ledger = await repo.ledger_stats(
        session, project_id=project_id, since=utcnow() - timedelta(seconds=window_seconds)
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


_MAX_BUCKETS = 2000


async def trends(
    session: AsyncSession,
    *,
    project_id: UUID,
    bucket: str,
    since: datetime | None,
    until: datetime | None,
) -> TrendsOut:
    """Sent/retry/dead/replay counts per UTC hour or day; defaults: the last 24 hours / 30 days."""
    if bucket not in ("hour", "day"):
        raise BadRequestError("bucket must be hour or day.")
    step = timedelta(hours=1) if bucket == "hour" else timedelta(days=1)
    until = as_utc(until, "until") if until else utcnow()
    since = (  # until >= MIN_TIME (as_utc): the default cannot underflow
        as_utc(since, "since")
        if since
        else until - (timedelta(hours=24) if bucket == "hour" else timedelta(days=30))
    )
    if since >= until:
        raise BadRequestError("since must be before until.")
    if (until - since) / step > _MAX_BUCKETS:
        raise BadRequestError(f"the range holds more than {_MAX_BUCKETS} {bucket} buckets; narrow it.")
    rows = await repo.trends(session, project_id=project_id, unit=bucket, since=since, until=until)
    return TrendsOut(
        bucket=bucket,
        since=since,
        until=until,
        items=[TrendBucket(ts=ts, sent=s, retry=r, dead=d, replay=p) for ts, s, r, d, p in rows],
    )
