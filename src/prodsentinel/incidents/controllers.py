"""/api/v1/incidents, /api/v1/problems and /api/v1/anomalies: thin handlers over ``IncidentService``,
``ProblemService`` and ``AnomalyService``.

A resolve's SSE event, outbox wake-up and the like are registered on the request's session by the
service and run by the request boundary once the transaction commits (``lib.after_commit``).
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from litestar import Controller, get, post
from litestar.di import Provide
from litestar.params import QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from prodsentinel.auth.guards import requires_scope
from prodsentinel.auth.scopes import Principal, Scope
from prodsentinel.incidents.models import INCIDENT_STATUSES
from prodsentinel.incidents.problem_services import ProblemService
from prodsentinel.incidents.schemas import (
    AnomalyPage,
    IncidentDetail,
    IncidentOut,
    IncidentPage,
    MergeIn,
    ProblemOut,
    ProblemPage,
)
from prodsentinel.incidents.services import AnomalyService, IncidentService
from prodsentinel.lib.pagination import DEFAULT_LIMIT, Cursor, Limit, Since, Until
from prodsentinel.lib.vocabulary import SEVERITIES

__all__ = (
    "AnomalyController",
    "IncidentController",
    "ProblemController",
    "provide_anomaly_service",
    "provide_incident_service",
    "provide_problem_service",
)

_STATUS_CHOICES = "|".join(INCIDENT_STATUSES)
_SEVERITY_CHOICES = "|".join(s.value for s in SEVERITIES)


async def provide_incident_service(db_session: AsyncSession) -> IncidentService:
    return IncidentService(session=db_session)


async def provide_anomaly_service(db_session: AsyncSession) -> AnomalyService:
    return AnomalyService(session=db_session)


async def provide_problem_service(db_session: AsyncSession) -> ProblemService:
    return ProblemService(session=db_session)


class IncidentController(Controller):
    """Incidents grouped from errors and sustained anomalies."""

    path = "/api/v1/incidents"
    tags = ["incidents"]
    dependencies = {
        "incidents": Provide(provide_incident_service),
        "problems": Provide(provide_problem_service),
    }

    @get(
        "/",
        guards=[requires_scope(Scope.READ)],
        summary="List incidents, newest first",
        description=(
            "Ordered by id (creation order) descending. since/until keep the incidents active in the "
            "range: last seen at or after since, first seen before until."
        ),
    )
    async def list_incidents(
        self,
        incidents: IncidentService,
        principal: Principal,
        status: Annotated[
            str | None, QueryParameter(description=f"{_STATUS_CHOICES}, comma-separated.")
        ] = None,
        severity: Annotated[
            str | None, QueryParameter(description=f"{_SEVERITY_CHOICES}, comma-separated.")
        ] = None,
        service: Annotated[str | None, QueryParameter(description="Exact service name.")] = None,
        since: Since = None,
        until: Until = None,
        limit: Limit = DEFAULT_LIMIT,
        cursor: Cursor = None,
    ) -> IncidentPage:
        return await incidents.list_incidents(
            principal.project_id,
            status=status,
            severity=severity,
            service=service,
            since=since,
            until=until,
            limit=limit,
            cursor=cursor,
        )

    @get(
        "/{incident_id:uuid}",
        guards=[requires_scope(Scope.READ)],
        summary="One incident with its analysis and a few sample logs and spans",
    )
    async def get_incident(
        self, incidents: IncidentService, principal: Principal, incident_id: UUID
    ) -> IncidentDetail:
        return await incidents.get_incident(principal.project_id, incident_id)

    @post(
        "/{incident_id:uuid}/ack",
        guards=[requires_scope(Scope.OPERATE)],
        status_code=200,
        summary="Acknowledge an open incident (audited)",
    )
    async def acknowledge(
        self, incidents: IncidentService, principal: Principal, incident_id: UUID
    ) -> IncidentOut:
        return await incidents.acknowledge(
            project_id=principal.project_id, incident_id=incident_id, actor=principal.actor
        )

    @post(
        "/{incident_id:uuid}/resolve",
        guards=[requires_scope(Scope.OPERATE)],
        status_code=200,
        summary="Resolve an incident (audited; the next occurrence reopens it)",
    )
    async def resolve(
        self, incidents: IncidentService, principal: Principal, incident_id: UUID
    ) -> IncidentOut:
        return await incidents.resolve(
            project_id=principal.project_id, incident_id=incident_id, actor=principal.actor
        )

    @post(
        "/{incident_id:uuid}/detach",
        guards=[requires_scope(Scope.OPERATE)],
        status_code=200,
        summary="Take an incident out of its problem for good (audited; it never rejoins that problem)",
    )
    async def detach(self, problems: ProblemService, principal: Principal, incident_id: UUID) -> IncidentOut:
        return await problems.detach(
            project_id=principal.project_id, incident_id=incident_id, actor=principal.actor
        )


class ProblemController(Controller):
    """Problems: incidents of one cascade, correlated by trace, dependency or by hand (SPEC §14)."""

    path = "/api/v1/problems"
    tags = ["incidents"]
    dependencies = {"problems": Provide(provide_problem_service)}

    @get(
        "/",
        guards=[requires_scope(Scope.READ)],
        summary="List problems, newest first",
        description="Ordered by id (creation order) descending.",
    )
    async def list_problems(
        self,
        problems: ProblemService,
        principal: Principal,
        status: Annotated[
            str | None, QueryParameter(description=f"{_STATUS_CHOICES}, comma-separated.")
        ] = None,
        service: Annotated[
            str | None, QueryParameter(description="Problems with an incident in this service.")
        ] = None,
        limit: Limit = DEFAULT_LIMIT,
        cursor: Cursor = None,
    ) -> ProblemPage:
        return await problems.list_problems(
            principal.project_id, status=status, service=service, limit=limit, cursor=cursor
        )

    @get(
        "/{problem_id:uuid}",
        guards=[requires_scope(Scope.READ)],
        summary="One problem with its root, incidents and evidence",
    )
    async def get_problem(
        self, problems: ProblemService, principal: Principal, problem_id: UUID
    ) -> ProblemOut:
        return await problems.get_problem(principal.project_id, problem_id)

    @post(
        "/{problem_id:uuid}/merge",
        guards=[requires_scope(Scope.OPERATE)],
        status_code=200,
        summary="Merge another problem into this one (audited; the fingerprints stay merged)",
    )
    async def merge(
        self, problems: ProblemService, principal: Principal, problem_id: UUID, data: MergeIn
    ) -> ProblemOut:
        return await problems.merge(
            project_id=principal.project_id,
            problem_id=problem_id,
            other_id=data.problem_id,
            actor=principal.actor,
        )


class AnomalyController(Controller):
    """Metric anomalies recorded by the ``detect_anomalies`` job."""

    path = "/api/v1/anomalies"
    tags = ["metrics"]
    guards = [requires_scope(Scope.READ)]
    dependencies = {"anomalies": Provide(provide_anomaly_service)}

    @get("/", summary="List metric anomalies, newest first by (ts, id)")
    async def list_anomalies(
        self,
        anomalies: AnomalyService,
        principal: Principal,
        metric: Annotated[str | None, QueryParameter(description="Metric name.")] = None,
        service: Annotated[str | None, QueryParameter(description="Service name.")] = None,
        since: Since = None,
        until: Until = None,
        limit: Limit = DEFAULT_LIMIT,
        cursor: Cursor = None,
    ) -> AnomalyPage:
        return await anomalies.list_anomalies(
            principal.project_id,
            metric=metric,
            service=service,
            since=since,
            until=until,
            limit=limit,
            cursor=cursor,
        )
