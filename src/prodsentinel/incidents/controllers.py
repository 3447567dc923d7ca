"""/api/v1/incidents and /api/v1/anomalies: thin handlers over ``incidents.services``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

from litestar import Controller, Response, get, post
from litestar.background_tasks import BackgroundTask
from litestar.params import QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from prodsentinel.auth.guards import requires_scope
from prodsentinel.auth.scopes import Principal, Scope
from prodsentinel.incidents import services as incident_services
from prodsentinel.incidents.schemas import AnomalyPage, IncidentDetail, IncidentOut, IncidentPage
from prodsentinel.lib.pagination import DEFAULT_LIMIT

__all__ = ("AnomalyController", "IncidentController")

Limit = Annotated[int, QueryParameter(description="Page size, 1..1000.")]
Cursor = Annotated[str | None, QueryParameter(description="next_cursor of the previous page.")]


class IncidentController(Controller):
    """Incidents grouped from errors and sustained anomalies."""

    path = "/api/v1/incidents"
    tags = ["incidents"]

    @get("/", guards=[requires_scope(Scope.READ)], summary="List incidents, newest first")
    async def list_incidents(
        self,
        db_session: AsyncSession,
        principal: Principal,
        status: Annotated[
            str | None, QueryParameter(description="open|acknowledged|resolved, comma-separated.")
        ] = None,
        severity: Annotated[
            str | None, QueryParameter(description="low|medium|high|critical, comma-separated.")
        ] = None,
        service: Annotated[str | None, QueryParameter(description="Exact service name.")] = None,
        limit: Limit = DEFAULT_LIMIT,
        cursor: Cursor = None,
    ) -> IncidentPage:
        return await incident_services.list_incidents(
            db_session,
            principal.project_id,
            status=status,
            severity=severity,
            service=service,
            limit=limit,
            cursor=cursor,
        )

    @get(
        "/{incident_id:uuid}",
        guards=[requires_scope(Scope.READ)],
        summary="One incident with its analysis and a few sample logs and spans",
    )
    async def get_incident(
        self, db_session: AsyncSession, principal: Principal, incident_id: UUID
    ) -> IncidentDetail:
        return await incident_services.get_incident(db_session, principal.project_id, incident_id)

    @post(
        "/{incident_id:uuid}/ack",
        guards=[requires_scope(Scope.OPERATE)],
        status_code=200,
        summary="Acknowledge an open incident (audited)",
    )
    async def acknowledge(
        self, db_session: AsyncSession, principal: Principal, incident_id: UUID
    ) -> IncidentOut:
        return await incident_services.acknowledge(
            db_session, project_id=principal.project_id, incident_id=incident_id, actor=principal.actor
        )

    @post(
        "/{incident_id:uuid}/resolve",
        guards=[requires_scope(Scope.OPERATE)],
        status_code=200,
        summary="Resolve an incident (audited; the next occurrence reopens it)",
    )
    async def resolve(
        self, db_session: AsyncSession, principal: Principal, incident_id: UUID
    ) -> Response[IncidentOut]:
        incident, transitions = await incident_services.resolve(
            db_session, project_id=principal.project_id, incident_id=incident_id, actor=principal.actor
        )
        # Background tasks run after the response is sent, i.e. after the autocommit: events and jobs
        # announce only durable state.
        return Response(incident, background=BackgroundTask(incident_services.announce, transitions))


class AnomalyController(Controller):
    """Metric anomalies recorded by the ``detect_anomalies`` job."""

    path = "/api/v1/anomalies"
    tags = ["metrics"]
    guards = [requires_scope(Scope.READ)]

    @get("/", summary="List metric anomalies, newest first")
    async def list_anomalies(
        self,
        db_session: AsyncSession,
        principal: Principal,
        metric: Annotated[str | None, QueryParameter(description="Metric name.")] = None,
        service: Annotated[str | None, QueryParameter(description="Service name.")] = None,
        since: Annotated[datetime | None, QueryParameter(description="RFC 3339, inclusive.")] = None,
        until: Annotated[datetime | None, QueryParameter(description="RFC 3339, inclusive.")] = None,
        limit: Limit = DEFAULT_LIMIT,
        cursor: Cursor = None,
    ) -> AnomalyPage:
        return await incident_services.list_anomalies(
            db_session,
            principal.project_id,
            metric=metric,
            service=service,
            since=since,
            until=until,
            limit=limit,
            cursor=cursor,
        )
