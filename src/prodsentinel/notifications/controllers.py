"""``/api/v1/notifications``: channels, the outbox, history, stats, trends, the attempt ledger, dispatch
and replays. Reads need scope ``read``; changes, dispatch and replays need ``admin``. Every query is
limited to the caller's project (another project's ids are 404).

Controllers translate only: the services (``channels.ChannelService``, ``outbox.OutboxService``,
``reports.ReportService``) are injected per request on the request's session; replays register the
dispatcher's wake-up on that session themselves (``lib.after_commit``), so it runs once the request's
transaction has committed."""

from __future__ import annotations

from uuid import UUID

from litestar import Controller, Router, delete, get, patch, post
from litestar.datastructures import State
from litestar.di import Provide
from litestar.params import Body
from litestar.status_codes import HTTP_201_CREATED, HTTP_202_ACCEPTED
from sqlalchemy.ext.asyncio import AsyncSession

from prodsentinel.auth.guards import requires_scope
from prodsentinel.auth.scopes import Principal, Scope
from prodsentinel.lib.database import SESSION_MAKER_STATE_KEY
from prodsentinel.lib.pagination import DEFAULT_LIMIT, Cursor, Limit, Since, Until, time_range
from prodsentinel.notifications.channels import ChannelService
from prodsentinel.notifications.dispatcher import run_dispatch
from prodsentinel.notifications.escalations import EscalationService
from prodsentinel.notifications.outbox import OutboxService
from prodsentinel.notifications.reports import HEALTH_WINDOW, ReportService
from prodsentinel.notifications.schemas import (
    AttemptOut,
    AttemptPage,
    ChannelCreate,
    ChannelList,
    ChannelOut,
    ChannelTestOut,
    ChannelUpdate,
    DispatchOut,
    EscalationCreate,
    EscalationList,
    EscalationOut,
    EscalationUpdate,
    OutboxItemOut,
    OutboxPage,
    ReplayDeadOut,
    StatsOut,
    TrendsOut,
)

__all__ = ("ChannelController", "EscalationController", "NotificationController", "notifications_router")

_ADMIN = [requires_scope(Scope.ADMIN)]
#: POST /dispatch works for at most this long (then answers with what it did).
_DISPATCH_BUDGET_SECONDS = 5.0


async def provide_channel_service(db_session: AsyncSession) -> ChannelService:
    return ChannelService(session=db_session)


async def provide_outbox_service(db_session: AsyncSession) -> OutboxService:
    return OutboxService(session=db_session)


async def provide_report_service(db_session: AsyncSession) -> ReportService:
    return ReportService(session=db_session)


class ChannelController(Controller):
    """Channels of the caller's project (every kind); credentials are write-only."""

    path = "/channels"
    tags = ["notifications"]
    guards = [requires_scope(Scope.READ)]
    dependencies = {"channels": Provide(provide_channel_service)}

    @get("/", summary="List channels with delivery health (success rate, last success/failure, errors)")
    async def list_channels(
        self, channels: ChannelService, principal: Principal, window: int = HEALTH_WINDOW
    ) -> ChannelList:
        return ChannelList(
            items=await channels.list_channels(project_id=principal.project_id, window_seconds=window)
        )

    @post("/", guards=_ADMIN, summary="Create a channel of any kind (admin)")
    async def create_channel(
        self, channels: ChannelService, principal: Principal, state: State, data: ChannelCreate = Body()
    ) -> ChannelOut:
        return await channels.create_channel(
            project_id=principal.project_id, data=data, settings=state["settings"]
        )

    @get("/{channel_id:uuid}", summary="One channel with its delivery health")
    async def get_channel(
        self, channels: ChannelService, principal: Principal, channel_id: UUID
    ) -> ChannelOut:
        return await channels.get_channel(project_id=principal.project_id, channel_id=channel_id)

    @patch("/{channel_id:uuid}", guards=_ADMIN, summary="Change or re-enable a channel (admin)")
    async def update_channel(
        self,
        channels: ChannelService,
        principal: Principal,
        state: State,
        channel_id: UUID,
        data: ChannelUpdate = Body(),
    ) -> ChannelOut:
        return await channels.update_channel(
            project_id=principal.project_id, channel_id=channel_id, data=data, settings=state["settings"]
        )

    @post(
        "/{channel_id:uuid}/test",
        guards=_ADMIN,
        status_code=HTTP_202_ACCEPTED,
        summary="Send a TEST event through the outbox to this channel only (admin)",
    )
    async def test_channel(
        self, channels: ChannelService, principal: Principal, channel_id: UUID
    ) -> ChannelTestOut:
        return await channels.send_test(project_id=principal.project_id, channel_id=channel_id)

    @delete("/{channel_id:uuid}", guards=_ADMIN, summary="Delete a channel and its outbox items (admin)")
    async def delete_channel(self, channels: ChannelService, principal: Principal, channel_id: UUID) -> None:
        await channels.delete_channel(project_id=principal.project_id, channel_id=channel_id)


class NotificationController(Controller):
    """The outbox, its history and ledger, statistics, dispatch and replays."""

    path = "/"
    tags = ["notifications"]
    guards = [requires_scope(Scope.READ)]
    dependencies = {
        "outbox": Provide(provide_outbox_service),
        "reports": Provide(provide_report_service),
    }

    @get(
        "/outbox",
        summary="Outbox items, newest first (filters: status, event_type, channel_id, since, until)",
    )
    async def list_outbox(
        self,
        reports: ReportService,
        principal: Principal,
        status: str | None = None,
        event_type: str | None = None,
        channel_id: UUID | None = None,
        since: Since = None,
        until: Until = None,
        limit: Limit = DEFAULT_LIMIT,
        cursor: Cursor = None,
    ) -> OutboxPage:
        start, end = time_range(since, until)
        return await reports.list_outbox(
            project_id=principal.project_id,
            limit=limit,
            cursor=cursor,
            status=status,
            event_type=event_type,
            channel_id=channel_id,
            since=start,
            until=end,
        )

    @get("/outbox/{item_id:uuid}", summary="One outbox item")
    async def get_outbox_item(
        self, reports: ReportService, principal: Principal, item_id: UUID
    ) -> OutboxItemOut:
        return await reports.get_outbox_item(project_id=principal.project_id, item_id=item_id)

    @post(
        "/outbox/{item_id:uuid}/replay",
        guards=_ADMIN,
        status_code=HTTP_201_CREATED,
        summary="Replay a delivered or dead item: new delivery_id, same event_id (admin)",
    )
    async def replay(self, outbox: OutboxService, principal: Principal, item_id: UUID) -> OutboxItemOut:
        return await outbox.replay(project_id=principal.project_id, item_id=item_id)

    @post(
        "/outbox/replay-dead",
        guards=_ADMIN,
        status_code=200,
        summary="Replay dead items not replayed before, oldest first (admin)",
    )
    async def replay_dead(
        self,
        outbox: OutboxService,
        principal: Principal,
        limit: Limit = DEFAULT_LIMIT,
        channel_id: UUID | None = None,
    ) -> ReplayDeadOut:
        return await outbox.replay_dead(project_id=principal.project_id, limit=limit, channel_id=channel_id)

    @get("/history", summary="Finished deliveries (delivered and dead), most recently finished first")
    async def history(
        self,
        reports: ReportService,
        principal: Principal,
        status: str | None = None,
        channel_id: UUID | None = None,
        since: Since = None,
        until: Until = None,
        limit: Limit = DEFAULT_LIMIT,
        cursor: Cursor = None,
    ) -> OutboxPage:
        start, end = time_range(since, until)
        return await reports.history(
            project_id=principal.project_id,
            limit=limit,
            cursor=cursor,
            status=status,
            channel_id=channel_id,
            since=start,
            until=end,
        )

    @get("/stats", summary="Totals by status, success rate, latency p50/p95, pending count and age")
    async def stats(
        self, reports: ReportService, principal: Principal, window: int = HEALTH_WINDOW
    ) -> StatsOut:
        return await reports.stats(project_id=principal.project_id, window_seconds=window)

    @get("/trends", summary="Sent/retry/dead/replay counts per hour or day bucket (UTC)")
    async def trends(
        self,
        reports: ReportService,
        principal: Principal,
        bucket: str = "hour",
        since: Since = None,
        until: Until = None,
    ) -> TrendsOut:
        start, end = time_range(since, until)
        return await reports.trends(project_id=principal.project_id, bucket=bucket, since=start, until=end)

    @get("/attempts", summary="The delivery-attempt ledger, newest first")
    async def list_attempts(
        self,
        reports: ReportService,
        principal: Principal,
        outbox_id: UUID | None = None,
        channel_id: UUID | None = None,
        event_id: UUID | None = None,
        outcome: str | None = None,
        error_code: str | None = None,
        since: Since = None,
        until: Until = None,
        limit: Limit = DEFAULT_LIMIT,
        cursor: Cursor = None,
    ) -> AttemptPage:
        start, end = time_range(since, until)
        return await reports.list_attempts(
            project_id=principal.project_id,
            limit=limit,
            cursor=cursor,
            outbox_id=outbox_id,
            channel_id=channel_id,
            event_id=event_id,
            outcome=outcome,
            error_code=error_code,
            since=start,
            until=end,
        )

    @get("/attempts/{attempt_id:uuid}", summary="One delivery attempt")
    async def get_attempt(self, reports: ReportService, principal: Principal, attempt_id: UUID) -> AttemptOut:
        return await reports.get_attempt(project_id=principal.project_id, attempt_id=attempt_id)

    @post("/dispatch", guards=_ADMIN, status_code=200, summary="Deliver the project's due items now (admin)")
    async def dispatch(self, state: State, principal: Principal) -> DispatchOut:
        # A background pass with its own short transactions (claim committed before sending), not the
        # request session.
        return await run_dispatch(
            state[SESSION_MAKER_STATE_KEY],
            state["settings"],
            project_id=principal.project_id,
            max_seconds=_DISPATCH_BUDGET_SECONDS,
        )


async def provide_escalation_service(db_session: AsyncSession) -> EscalationService:
    return EscalationService(db_session)


class EscalationController(Controller):
    """Escalation policies of the caller's project (SPEC §13); changes are admin and audited."""

    path = "/escalations"
    tags = ["notifications"]
    guards = [requires_scope(Scope.READ)]
    dependencies = {"escalations": Provide(provide_escalation_service)}

    @get("/", summary="List escalation policies")
    async def list_escalations(self, escalations: EscalationService, principal: Principal) -> EscalationList:
        return EscalationList(items=await escalations.list_all(principal.project_id))

    @post("/", guards=_ADMIN, summary="Create an escalation policy (admin)")
    async def create_escalation(
        self, escalations: EscalationService, principal: Principal, data: EscalationCreate = Body()
    ) -> EscalationOut:
        return await escalations.create(principal.project_id, data, actor=principal.actor)

    @get("/{escalation_id:uuid}", summary="One escalation policy")
    async def get_escalation(
        self, escalations: EscalationService, principal: Principal, escalation_id: UUID
    ) -> EscalationOut:
        return await escalations.get(principal.project_id, escalation_id)

    @patch("/{escalation_id:uuid}", guards=_ADMIN, summary="Change an escalation policy (admin)")
    async def update_escalation(
        self,
        escalations: EscalationService,
        principal: Principal,
        escalation_id: UUID,
        data: EscalationUpdate = Body(),
    ) -> EscalationOut:
        return await escalations.update(principal.project_id, escalation_id, data, actor=principal.actor)

    @delete(
        "/{escalation_id:uuid}",
        guards=_ADMIN,
        summary="Delete an escalation policy and its pending steps (admin)",
    )
    async def delete_escalation(
        self, escalations: EscalationService, principal: Principal, escalation_id: UUID
    ) -> None:
        await escalations.delete(principal.project_id, escalation_id, actor=principal.actor)


notifications_router = Router(
    path="/api/v1/notifications",
    route_handlers=[ChannelController, EscalationController, NotificationController],
)
