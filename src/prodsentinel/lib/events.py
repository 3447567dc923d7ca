"""Live events for the frontend's SSE stream (incident_opened/escalated/resolved, alert_firing/resolved).

Published after the transaction that caused them commits, from API processes and SAQ workers alike,
over a cross-process backend (Redis pub/sub when ``REDIS_URL`` is set, PostgreSQL LISTEN/NOTIFY
otherwise) so every API instance's ``/api/v1/events/stream`` sees every event of the key's project.

There is one channel per project (``events:<project_id>``): a stream subscribes to its key's project
channel only, so isolation between projects is a property of the subscription, not of a filter.

Each process binds one *publisher*:

- API processes: Litestar's ``ChannelsPlugin`` (its backend also feeds the SSE subscribers), bound by
  ``system.plugin.SystemPlugin`` at startup;
- SAQ worker processes have no Litestar app: the worker startup hook calls :func:`start_publisher`,
  which starts the same backend class on its own and binds it.

Live events are best effort: a lost one is not a lost notification (the outbox is the durable path)
and clients re-read state through the API after reconnecting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
import structlog
from litestar.channels import ChannelsBackend
from litestar.channels.backends.asyncpg import AsyncPgChannelsBackend
from litestar.channels.backends.redis import RedisChannelsPubSubBackend
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from prodsentinel.lib.after_commit import after_commit
from prodsentinel.lib.vocabulary import STREAM_EVENT_TYPES
from prodsentinel.settings import Settings

__all__ = (
    "EVENT_TYPES",
    "EventPublisher",
    "PooledAsyncPgChannelsBackend",
    "bind_publisher",
    "channel_for",
    "channels_backend",
    "decode_event",
    "encode_event",
    "publish_after_commit",
    "publish_event",
    "start_publisher",
    "stop_publisher",
    "unbind_publisher",
)

logger = structlog.get_logger("prodsentinel.events")

#: The event types of SPEC §6 (others may be added; the stream forwards any type).
EVENT_TYPES = STREAM_EVENT_TYPES
#: PostgreSQL's NOTIFY payload limit is 8000 bytes; stay under it with room for the channel name.
MAX_NOTIFY_BYTES = 7900

Publish = Callable[[bytes, list[str]], Awaitable[None]]

_publisher: Publish | None = None
#: The event loop the publisher's connections belong to: asyncpg/redis connections are loop-bound.
_publisher_loop: asyncio.AbstractEventLoop | None = None
_envelope_encoder = msgspec.json.Encoder()


class _Envelope(msgspec.Struct):
    type: str
    data: msgspec.Raw


_envelope_decoder = msgspec.json.Decoder(_Envelope)


def channel_for(project_id: UUID | str) -> str:
    """The channel of one project's events (a valid PostgreSQL identifier, 43 characters)."""
    return f"events:{project_id}"


def encode_event(event_type: str, data: Any) -> bytes:
    return _envelope_encoder.encode({"type": event_type, "data": data})


def decode_event(payload: bytes) -> tuple[str, bytes]:
    """``(event_type, JSON of the data)`` of an encoded event."""
    envelope = _envelope_decoder.decode(payload)
    return envelope.type, bytes(envelope.data)


def bind_publisher(publish: Publish) -> None:
    """Make ``publish`` this process's way out (done at app start and at worker start, in its loop)."""
    global _publisher, _publisher_loop
    _publisher = publish
    _publisher_loop = asyncio.get_running_loop()


def unbind_publisher(publish: Publish) -> None:
    """Forget ``publish`` if it is still the bound one (another owner may have re-bound since)."""
    global _publisher
    if _publisher == publish:
        _publisher = None


async def publish_event(event_type: str, project_id: UUID, data: dict[str, Any]) -> bool:
    """Publish one event to the project's stream; True when handed to the backend.

    Call it after the transaction that caused the event committed. Never raises: a failure is logged.
    """
    if _publisher is None or _publisher_loop is not asyncio.get_running_loop():
        # No publisher, or one bound in another event loop (e.g. a service called from a test's loop
        # while an app runs in its own): its connections cannot be used from here.
        logger.debug("event_not_published", reason="no_publisher_in_this_loop", event_type=event_type)
        return False
    try:
        payload = encode_event(event_type, data)
        await _publisher(payload, [channel_for(project_id)])
    except Exception:
        logger.warning(
            "event_publish_failed", event_type=event_type, project_id=str(project_id), exc_info=True
        )
        return False
    return True


def publish_after_commit(
    session: AsyncSession, event_type: str, project_id: UUID, data: dict[str, Any]
) -> None:
    """Publish the event once ``session``'s transaction has committed (``lib.after_commit``)."""
    after_commit(session, publish_event, event_type, project_id, data)


class PooledAsyncPgChannelsBackend(AsyncPgChannelsBackend):
    """Litestar's LISTEN/NOTIFY backend, publishing over one kept-open connection, listening durably.

    - The stock backend opens and closes a connection for every publish (a TCP + auth round trip each,
      a burst of incident events would churn connections); this keeps one publish connection per
      process, serialised by a lock (an asyncpg connection runs one query at a time) and re-opened once
      on failure.
    - The stock backend's LISTEN connection is never re-opened: after a database restart or a dropped
      connection the instance's streams would go silent for good. Here a termination listener reconnects
      (with backoff) and re-issues LISTEN for every subscribed channel. Events sent while it was down
      are lost (live events are best effort).
    - ``pg_notify`` payloads over 8000 bytes are refused by PostgreSQL: those are dropped with a log line.
    """

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn=dsn)
        self._publish_conn: asyncpg.Connection | None = None
        self._publish_lock: asyncio.Lock | None = None

    async def on_startup(self) -> None:
        self._publish_lock = asyncio.Lock()
        self._closing = False
        self._reconnect_task: asyncio.Task[None] | None = None
        await super().on_startup()
        self._listener_conn.add_termination_listener(self._listener_lost)

    async def on_shutdown(self) -> None:
        self._closing = True
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
        if self._publish_conn is not None:
            await self._publish_conn.close()
            self._publish_conn = None
        await super().on_shutdown()

    def _listener_lost(self, connection: asyncpg.Connection) -> None:
        if not self._closing and (self._reconnect_task is None or self._reconnect_task.done()):
            self._reconnect_task = asyncio.get_running_loop().create_task(self._relisten())

    async def _relisten(self) -> None:
        delay = 0.1
        while not self._closing:
            try:
                async with self._listener_lock:
                    connection = await self._connect()
                    for channel in self._subscribed_channels:
                        await connection.add_listener(channel, self._listener)  # type: ignore[arg-type]
                    connection.add_termination_listener(self._listener_lost)
                    self._listener_conn = connection
                logger.info("event_listener_reconnected", channels=len(self._subscribed_channels))
                return
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                logger.warning("event_listener_reconnect_failed", retry_in=delay, exc_info=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def publish(self, data: bytes, channels: Iterable[str]) -> None:
        if self._publish_lock is None:
            raise RuntimeError("Backend not yet initialized. Did you forget to call on_startup?")
        if len(data) > MAX_NOTIFY_BYTES:
            logger.warning("event_too_large_for_notify", size=len(data))
            return
        text = data.decode("utf-8")
        async with self._publish_lock:
            for attempt in (1, 2):
                try:
                    if self._publish_conn is None or self._publish_conn.is_closed():
                        self._publish_conn = await self._connect()
                    for channel in channels:
                        await self._publish_conn.execute("SELECT pg_notify($1, $2)", channel, text)
                    return
                except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError):
                    if self._publish_conn is not None:
                        self._publish_conn.terminate()
                    self._publish_conn = None
                    if attempt == 2:
                        raise


def channels_backend(settings: Settings, libpq_dsn: str, redis: Redis | None) -> ChannelsBackend:
    """Redis pub/sub when ``REDIS_URL`` is set, PostgreSQL LISTEN/NOTIFY otherwise."""
    if settings.redis_url:
        return RedisChannelsPubSubBackend(redis=redis or Redis.from_url(settings.redis_url))
    return PooledAsyncPgChannelsBackend(dsn=libpq_dsn)


@dataclass
class EventPublisher:
    """What :func:`start_publisher` started in a process without a Litestar app (a SAQ worker)."""

    backend: ChannelsBackend
    redis: Redis | None

    async def publish(self, data: bytes, channels: list[str]) -> None:
        await self.backend.publish(data, channels)


async def start_publisher(settings: Settings, libpq_dsn: str) -> EventPublisher:
    """Start a publishing backend for this process and bind it (SAQ worker startup)."""
    redis = Redis.from_url(settings.redis_url) if settings.redis_url else None
    backend = channels_backend(settings, libpq_dsn, redis)
    await backend.on_startup()
    publisher = EventPublisher(backend=backend, redis=redis)
    bind_publisher(publisher.publish)
    return publisher


async def stop_publisher(publisher: EventPublisher) -> None:
    unbind_publisher(publisher.publish)
    try:
        await publisher.backend.on_shutdown()
    finally:
        if publisher.redis is not None:
            await publisher.redis.aclose()
