"""``/api/v1/notifications``: channels, the outbox, history, stats, trends, the attempt ledger, dispatch
and replays. Reads need scope ``read``; changes, dispatch and replays need ``admin``. Every query is
limited to the caller's project (another project's ids are 404)."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from litestar import Controller, Response, Router, delete, get, patch, post
from litestar.background_tasks import BackgroundTask
from litestar.datastructures import State
from litestar.params import Body
from litestar.status_codes import HTTP_201_CREATED
from sqlalchemy.ext.asyncio import AsyncSession

from prodsentinel.auth.guards import requires_scope
from prodsentinel.auth.scopes import Principal, Scope
from prodsentinel.lib.database import SESSION_MAKER_STATE_KEY
from prodsentinel.lib.pagination import DEFAULT_LIMIT
from prodsentinel.notifications import services
from prodsentinel.notifications.schemas import (
    AttemptOut,
    AttemptPage,
    ChannelCreate,
    ChannelList,
    ChannelOut,
    ChannelUpdate,
    DispatchOut,
    OutboxItemOut,
    OutboxPage,
    ReplayDeadOut,
    StatsOut,
    TrendsOut,
)

__all__ = ("ChannelController", "NotificationController", "notifications_router")

_ADMIN = [requires_scope(Scope.ADMIN)]
#: POST /dispatch works for at most this long (then answers with what it did).
_DISPATCH_BUDGET_SECONDS = 5.0


class ChannelController(Controller):
    """Webhook channels of the caller's project; secrets are write-only."""

    path = "/channels"
    tags = ["notifications"]
    guards = [requires_scope(Scope.READ)]

    @get("/", summary="List channels with delivery health (success rate, last success/failure, errors)")
    async def list_channels(
        self, db_session: AsyncSession, principal: Principal, window: int = 86_400
    ) -> ChannelList:
        return ChannelList(
            items=await services.list_channels(
                db_session, project_id=principal.project_id, window_seconds=window
            )
        )

    @post("/", guards=_ADMIN, summary="Create a channel (admin)")
    async def create_channel(
        self, db_session: AsyncSession, principal: Principal, data: ChannelCreate = Body()
    ) -> ChannelOut:
        return await services.create_channel(db_session, project_id=principal.project_id, data=data)

    @get("/{channel_id:uuid}", summary="One channel with its delivery health")
    async def get_channel(
        self, db_session: AsyncSession, principal: Principal, channel_id: UUID
    ) -> ChannelOut:
        return await services.get_channel(db_session, project_id=principal.project_id, channel_id=channel_id)

    @patch("/{channel_id:uuid}", guards=_ADMIN, summary="Change a channel (admin)")
    async def update_channel(
        self, db_session: AsyncSession, principal: Principal, channel_id: UUID, data: ChannelUpdate = Body()
    ) -> ChannelOut:
        return await services.update_channel(
            db_session, project_id=principal.project_id, channel_id=channel_id, data=data
        )

    @delete("/{channel_id:uuid}", guards=_ADMIN, summary="Delete a channel and its outbox items (admin)")
    async def delete_channel(self, db_session: AsyncSession, principal: Principal, channel_id: UUID) -> None:
        await services.delete_channel(db_session, project_id=principal.project_id, channel_id=channel_id)


class NotificationController(Controller):
    """The outbox, its history and ledger, statistics, dispatch and replays."""

    path = "/"
    tags = ["notifications"]
    guards = [requires_scope(Scope.READ)]

    @get("/outbox", summary="Outbox items, newest first (filters: status, event_type, channel_id)")
    async def list_outbox(
        self,
        db_session: AsyncSession,
        principal: Principal,
        status: str | None = None,
        event_type: str | None = None,
        channel_id: UUID | None = None,
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
    ) -> OutboxPage:
        return await services.list_outbox(
            db_session,
            project_id=principal.project_id,
            limit=limit,
            cursor=cursor,
            status=status,
            event_type=event_type,
            channel_id=channel_id,
        )

    @get("/outbox/{item_id:uuid}", summary="One outbox item")
    async def get_outbox_item(
        self, db_session: AsyncSession, principal: Principal, item_id: UUID
    ) -> OutboxItemOut:
        return await services.get_outbox_item(db_session, project_id=principal.project_id, item_id=item_id)

    @post(
        "/outbox/{item_id:uuid}/replay",
        guards=_ADMIN,
        status_code=HTTP_201_CREATED,
        summary="Replay a delivered or dead item: new delivery_id, same event_id (admin)",
    )
    async def replay(
        self, db_session: AsyncSession, principal: Principal, item_id: UUID
    ) -> Response[OutboxItemOut]:
        item = await services.replay(db_session, project_id=principal.project_id, item_id=item_id)
        # The background task runs after the response, i.e. after the autocommit of the request session.
        return Response(
            item, status_code=HTTP_201_CREATED, background=BackgroundTask(services.enqueue_dispatch)
        )

    @post(
        "/outbox/replay-dead",
        guards=_ADMIN,
        status_code=200,
        summary="Replay dead items not replayed before, oldest first (admin)",
    )
    async def replay_dead(
        self,
        db_session: AsyncSession,
        principal: Principal,
        limit: int = DEFAULT_LIMIT,
        channel_id: UUID | None = None,
    ) -> Response[ReplayDeadOut]:
        result = await services.replay_dead(
            db_session, project_id=principal.project_id, limit=limit, channel_id=channel_id
        )
        return Response(result, status_code=200, background=BackgroundTask(services.enqueue_dispatch))

    @get("/history", summary="Finished deliveries (delivered and dead), most recent first")
    async def history(
        self,
        db_session: AsyncSession,
        principal: Principal,
        status: str | None = None,
        channel_id: UUID | None = None,
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
    ) -> OutboxPage:
        return await services.history(
            db_session,
            project_id=principal.project_id,
            limit=limit,
            cursor=cursor,
            status=status,
            channel_id=channel_id,
        )

    @get("/stats", summary="Totals by status, success rate, latency p50/p95, pending count and age")
    async def stats(self, db_session: AsyncSession, principal: Principal, window: int = 86_400) -> StatsOut:
        return await services.stats(db_session, project_id=principal.project_id, window_seconds=window)

    @get("/trends", summary="Sent/retry/dead/replay counts per hour or day bucket (UTC)")
    async def trends(
        self,
        db_session: AsyncSession,
        principal: Principal,
        bucket: str = "hour",
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> TrendsOut:
        return await services.trends(
            db_session, project_id=principal.project_id, bucket=bucket, since=since, until=until
        )

    @get("/attempts", summary="The delivery-attempt ledger, newest first")
    async def list_attempts(
        self,
        db_session: AsyncSession,
        principal: Principal,
        outbox_id: UUID | None = None,
        channel_id: UUID | None = None,
        event_id: UUID | None = None,
        outcome: str | None = None,
        error_code: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
    ) -> AttemptPage:
        return await services.list_attempts(
            db_session,
            project_id=principal.project_id,
            limit=limit,
            cursor=cursor,
            outbox_id=outbox_id,
            channel_id=channel_id,
            event_id=event_id,
            outcome=outcome,
            error_code=error_code,
            since=since,
            until=until,
        )

    @get("/attempts/{attempt_id:uuid}", summary="One delivery attempt")
    async def get_attempt(
        self, db_session: AsyncSession, principal: Principal, attempt_id: UUID
    ) -> AttemptOut:
        return await services.get_attempt(db_session, project_id=principal.project_id, attempt_id=attempt_id)

    @post("/dispatch", guards=_ADMIN, status_code=200, summary="Deliver the project's due items now (admin)")
    async def dispatch(self, state: State, principal: Principal) -> DispatchOut:
        # Its own short transactions (claim committed before sending), not the request session.
        return await services.dispatch_due(
            state[SESSION_MAKER_STATE_KEY],
            state["settings"],
            project_id=principal.project_id,
            max_seconds=_DISPATCH_BUDGET_SECONDS,
        )


notifications_router = Router(
    path="/api/v1/notifications", route_handlers=[ChannelController, NotificationController]
)
