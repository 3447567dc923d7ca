"""Operator and frontend endpoints of the system domain: health probes and the live event stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import anyio
from litestar import Controller, Request, Response, WebSocket, get, websocket
from litestar.channels import ChannelsPlugin
from litestar.exceptions import WebSocketDisconnect
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE

from prodsentinel.auth.guards import requires_scope
from prodsentinel.auth.scopes import Principal, Scope
from prodsentinel.lib import events
from prodsentinel.lib.database import SESSION_MAKER_STATE_KEY
from prodsentinel.lib.structs import Struct
from prodsentinel.system import health

__all__ = ("EventStreamController", "HealthController")


class Liveness(Struct):
    status: str


class Readiness(Struct):
    status: str
    database: str
    migrations: str


class HealthController(Controller):
    """Public health endpoints (no API key)."""

    path = "/health"
    tags = ["health"]
    opt = {"exclude_from_auth": True, "no_rate_limit": True}
    security = [{}]  # public: overrides the schema-wide API key requirement in the OpenAPI document

    @get("/", summary="Dependency health: database, queue and redis, each with latency")
    async def health(self, request: Request[Any, Any, Any]) -> health.HealthReport:
        session_maker = request.app.state[SESSION_MAKER_STATE_KEY]
        report = health.HealthReport(
            status="ok",
            database=await health.check_database(session_maker),
            queue=await health.check_queue(),
            redis=await health.check_redis(request.app.state.get("redis")),
        )
        if "error" in {report.database.status, report.queue.status, report.redis.status}:
            report.status = "degraded"
        return report

    @get("/live", summary="Liveness: the process answers")
    async def live(self) -> Liveness:
        return Liveness(status="ok")

    @get("/ready", summary="Readiness: 503 until migrations are applied and the database answers")
    async def ready(self, request: Request[Any, Any, Any]) -> Response[Readiness]:
        session_maker = request.app.state[SESSION_MAKER_STATE_KEY]
        database = await health.check_database(session_maker)
        migrated = database.status == "ok" and await health.migrations_applied(session_maker)
        ready = database.status == "ok" and migrated
        body = Readiness(
            status="ready" if ready else "not_ready",
            database=database.status,
            migrations="applied" if migrated else "pending",
        )
        return Response(body, status_code=HTTP_200_OK if ready else HTTP_503_SERVICE_UNAVAILABLE)


class EventStreamController(Controller):
    """``/api/v1/events/stream`` (Server-Sent Events) and ``/ws`` (WebSocket): the project's events.

    Scope read; an API key, a session token or the session cookie (``auth.sessions``).
    """

    path = "/api/v1/events"
    tags = ["events"]
    guards = [requires_scope(Scope.READ)]

    @get(
        "/stream",
        summary="Live events of the key's project (Server-Sent Events)",
        description=(
            "`event:` is the event type (incident_opened, incident_escalated, incident_resolved, "
            "incident_reopened, alert_firing, alert_resolved), `data:` its JSON. A comment line "
            "(`: connected`) is sent once subscribed, and `: keepalive` every "
            "PRODSENTINEL_SSE_KEEPALIVE_SECONDS while idle. No replay: after reconnecting, re-read state "
            "through the API."
        ),
        media_type="text/event-stream",
    )
    async def stream(
        self, request: Request[Any, Any, Any], principal: Principal, channels: ChannelsPlugin
    ) -> ServerSentEvent:
        keepalive = float(request.app.state["settings"].sse_keepalive_seconds)
        return ServerSentEvent(
            _event_stream(channels, events.channel_for(principal.project_id), keepalive),
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @websocket("/ws")
    async def event_socket(self, socket: WebSocket[Any, Any, Any], channels: ChannelsPlugin) -> None:
        """The SSE events over a WebSocket: one JSON text message ``{"type", "data"}`` per event.

        The first message, ``{"type": "connected", "data": {"project": …}}``, says the subscription is in
        place (so a client knows from when on it misses nothing). Messages from the client are ignored;
        its close ends the subscription.
        """
        principal: Principal = socket.user
        channel = events.channel_for(principal.project_id)
        await socket.accept()
        subscriber = await channels.subscribe([channel])
        try:
            await socket.send_json({"type": "connected", "data": {"project": principal.project_name}})
            async with anyio.create_task_group() as group:
                group.start_soon(_forward, subscriber.iter_events(), socket)
                try:
                    while True:
                        await socket.receive_data(mode="text")
                except WebSocketDisconnect:
                    pass
                group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await channels.unsubscribe(subscriber, [channel])


async def _forward(payloads: AsyncGenerator[bytes, None], socket: WebSocket[Any, Any, Any]) -> None:
    """Send each of our events as it was published (already ``{"type", "data"}`` JSON)."""
    async for payload in payloads:
        try:
            events.decode_event(payload)
        except Exception:
            continue  # not one of ours; never break the socket for it
        await socket.send_data(payload.decode(), mode="text")


async def _event_stream(
    channels: ChannelsPlugin, channel: str, keepalive_seconds: float
) -> AsyncGenerator[ServerSentEventMessage, None]:
    """Subscribe, confirm with a comment, then forward events and send a comment on every idle interval.

    The next event is awaited in a task that survives keep-alive timeouts (cancelling the subscriber's
    generator would end it). When the client goes away Litestar cancels this generator; the unsubscribe
    is shielded so the channel's LISTEN/SUBSCRIBE is released even then.
    """
    subscriber = await channels.subscribe([channel])
    pending: asyncio.Future[bytes] | None = None
    try:
        yield ServerSentEventMessage(comment="connected", data=None)
        iterator = subscriber.iter_events().__aiter__()
        while True:
            if pending is None:
                pending = asyncio.ensure_future(iterator.__anext__())
            done, _ = await asyncio.wait({pending}, timeout=keepalive_seconds)
            if not done:
                yield ServerSentEventMessage(comment="keepalive", data=None)
                continue
            try:
                payload = pending.result()
            except StopAsyncIteration:
                return
            finally:
                pending = None
            try:
                event_type, data = events.decode_event(payload)
            except Exception:
                continue  # not one of ours; never break the stream for it
            yield ServerSentEventMessage(event=event_type, data=data.decode())
    finally:
        if pending is not None:
            pending.cancel()
        with anyio.CancelScope(shield=True):
            await channels.unsubscribe(subscriber, [channel])
