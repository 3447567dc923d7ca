"""Incident lifecycle and reads (``IncidentService``), anomaly reads (``AnomalyService``).

Services flush but never commit: the request or task boundary commits. A state change writes its
transition (outbox, audit) in the same transaction and registers its announcements (SSE event, analysis
job) to run once that commits (``incidents.transitions``). The passes live in their own modules:
grouping (``grouping.py``), anomaly detection (``anomaly_detection.py``), root-cause analysis
(``analysis.py``); the quiet-period resolve is :func:`run_auto_resolve` here, beside the lifecycle
rule it applies.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from uuid import UUID

import msgspec
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.audit import services as audit_services
from prodsentinel.audit.services import AuditEntry
from prodsentinel.incidents.grouping_queries import GroupingQueries
from prodsentinel.incidents.models import INCIDENT_STATUSES, Anomaly, Incident, IncidentStatus
from prodsentinel.incidents.problems import record_problem_transitions, refresh
from prodsentinel.incidents.repositories import AnomalyRepository, IncidentRepository
from prodsentinel.incidents.schemas import AnomalyOut, AnomalyPage, IncidentDetail, IncidentOut, IncidentPage
from prodsentinel.incidents.transitions import SYSTEM_ACTOR, Transition, incident_out, record_transitions
from prodsentinel.lib.database import session_scope
from prodsentinel.lib.errors import BadRequestError, ConflictError, NotFoundError
from prodsentinel.lib.pagination import DEFAULT_LIMIT, Keyset, time_range
from prodsentinel.lib.time import utcnow
from prodsentinel.lib.vocabulary import SEVERITIES
from prodsentinel.notifications.outbox import add_event
from prodsentinel.signals.services import log_item, span_item

__all__ = (
    "ANOMALY_KEYSET",
    "INCIDENT_KEYSET",
    "OCCURRENCE_RETENTION",
    "AnomalyService",
    "IncidentService",
    "anomaly_out",
    "parse_choices",
    "run_auto_resolve",
)

#: Occurrences are kept this long (for samples and the rate window) once the high-water mark passed them.
OCCURRENCE_RETENTION = timedelta(days=1)
AUTO_RESOLVE_BATCH = 1000
PRUNE_BATCH = 10_000
SAMPLE_SIGNALS = 5

#: Incidents page newest first by id (UUIDv7: creation order).
INCIDENT_KEYSET: Keyset[Incident] = Keyset("incidents", (UUID,), lambda row: (row.id,))
#: Anomalies page newest first by (ts, id).
ANOMALY_KEYSET: Keyset[Anomaly] = Keyset("anomalies", (datetime, UUID), lambda row: (row.ts, row.id))


def parse_choices(raw: str | None, allowed: Sequence[str], name: str) -> list[str]:
    """A comma-separated filter of known values (case-insensitive); an unknown value is a 400."""
    if not raw:
        return []
    values = [value.strip().lower() for value in raw.split(",") if value.strip()]
    for value in values:
        if value not in allowed:
            raise BadRequestError(
                f"{name} must be one of {', '.join(allowed)} (comma-separated), got {value!r}."
            )
    return values


class IncidentService(SQLAlchemyAsyncRepositoryService[Incident]):
    """Acknowledge, resolve, auto-resolve; list and read one project's incidents."""

    repository_type = IncidentRepository
    repository: IncidentRepository

    @property
    def session(self) -> AsyncSession:
        """The unit of work the transitions and audit rows are written in (the repository's session)."""
        session = self.repository.session
        assert isinstance(session, AsyncSession), (
            "built with a plain AsyncSession (IncidentService(session=))"
        )
        return session

    # -- lifecycle ------------------------------------------------------------------------------------

    async def acknowledge(
        self, *, project_id: UUID, incident_id: UUID, actor: str, now: datetime | None = None
    ) -> IncidentOut:
        """open -> acknowledged (idempotent when already acknowledged; a resolved incident is a 409).

        Audited, and announced to the channels as ``INCIDENT_ACKNOWLEDGED`` (SPEC §12: Slack updates the
        incident's message, PagerDuty acknowledges its dedup key); not a transition, so no live event.
        """
        now = now or utcnow()
        incident = await self._get_locked(project_id, incident_id)
        if incident.status == IncidentStatus.RESOLVED:
            raise ConflictError("A resolved incident cannot be acknowledged.")
        if incident.status == IncidentStatus.OPEN:
            incident.status = IncidentStatus.ACKNOWLEDGED
            incident.acked_by = actor
            incident.acked_at = now
            incident.updated_at = now
            await self.session.flush()
            await audit_services.record(
                self.session,
                AuditEntry(
                    project_id=project_id,
                    actor=actor,
                    action="incident_acknowledged",
                    subject_type="incident",
                    subject_id=incident.id,
                    details={"severity": incident.severity},
                    at=now,
                ),
            )
            out = incident_out(incident)
            await add_event(
                self.session,
                project_id=project_id,
                event_type="INCIDENT_ACKNOWLEDGED",
                severity=incident.severity,
                payload={"project_id": str(project_id), "incident": msgspec.to_builtins(out)},
            )
            await self._refresh_problems([incident], actor=actor, now=now)
            return out
        return incident_out(incident)

    async def resolve(
        self, *, project_id: UUID, incident_id: UUID, actor: str, now: datetime | None = None
    ) -> IncidentOut:
        """open|acknowledged -> resolved (idempotent when already resolved); the next occurrence
        reopens it."""
        now = now or utcnow()
        incident = await self._get_locked(project_id, incident_id)
        if incident.status == IncidentStatus.RESOLVED:
            return incident_out(incident)
        incident.status = IncidentStatus.RESOLVED
        incident.resolved_by = actor
        incident.resolved_at = now
        incident.updated_at = now
        await self.session.flush()
        out = incident_out(incident)
        await record_transitions(
            self.session, [Transition("resolved", project_id, out)], actor=actor, now=now
        )
        await self._refresh_problems([incident], actor=actor, now=now)
        return out

    async def auto_resolve(self, *, quiet_minutes: int, now: datetime | None = None) -> list[Transition]:
        """Resolve incidents quiet for ``quiet_minutes`` (all projects, a batch); prune old occurrences."""
        now = now or utcnow()
        resolved = await self.repository.resolve_quiet(
            cutoff=now - timedelta(minutes=quiet_minutes),
            now=now,
            limit=AUTO_RESOLVE_BATCH,
            actor=SYSTEM_ACTOR,
        )
        transitions = [
            Transition("resolved", incident.project_id, incident_out(incident)) for incident in resolved
        ]
        await record_transitions(self.session, transitions, actor=SYSTEM_ACTOR, now=now)
        await self._refresh_problems(resolved, actor=SYSTEM_ACTOR, now=now)
        await GroupingQueries(self.session).prune_occurrences(
            cutoff=now - OCCURRENCE_RETENTION, limit=PRUNE_BATCH
        )
        return transitions

    async def _refresh_problems(self, incidents: Sequence[Incident], *, actor: str, now: datetime) -> None:
        """Roll up the problems of changed incidents (status, severity; PROBLEM_RESOLVED once all are)."""
        keys = [(i.project_id, i.problem_id) for i in incidents if i.problem_id is not None]
        transitions = await refresh(self.session, keys, now=now, roots=())
        await record_problem_transitions(self.session, transitions, actor=actor, now=now)

    async def _get_locked(self, project_id: UUID, incident_id: UUID) -> Incident:
        incident = await self.repository.get_for_project(incident_id, project_id, for_update=True)
        if incident is None:
            raise NotFoundError(f"Incident {incident_id} not found.")
        return incident

    # -- reads ----------------------------------------------------------------------------------------

    async def list_incidents(
        self,
        project_id: UUID,
        *,
        status: str | None = None,
        severity: str | None = None,
        service: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
    ) -> IncidentPage:
        start, end = time_range(since, until)
        rows = await self.repository.list_page(
            project_id,
            statuses=parse_choices(status, INCIDENT_STATUSES, "status"),
            severities=parse_choices(severity, [s.value for s in SEVERITIES], "severity"),
            service=service or None,
            since=start,
            until=end,
            after=INCIDENT_KEYSET.after(cursor),
            limit=INCIDENT_KEYSET.fetch_size(limit),
        )
        items, next_cursor = INCIDENT_KEYSET.page(rows, limit)
        return IncidentPage(items=[incident_out(row) for row in items], next_cursor=next_cursor)

    async def get_incident(self, project_id: UUID, incident_id: UUID) -> IncidentDetail:
        incident = await self.repository.get_for_project(incident_id, project_id)
        if incident is None:
            raise NotFoundError(f"Incident {incident_id} not found.")
        base = msgspec.structs.asdict(incident_out(incident))
        return IncidentDetail(
            **base,
            sample_logs=[
                log_item(row) for row in await self.repository.sample_logs(incident, SAMPLE_SIGNALS)
            ],
            sample_spans=[
                span_item(row) for row in await self.repository.sample_spans(incident, SAMPLE_SIGNALS)
            ],
        )


class AnomalyService(SQLAlchemyAsyncRepositoryService[Anomaly]):
    """One project's recorded anomalies (written by the detection pass, ``anomaly_detection.py``)."""

    repository_type = AnomalyRepository
    repository: AnomalyRepository

    async def list_anomalies(
        self,
        project_id: UUID,
        *,
        metric: str | None = None,
        service: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
    ) -> AnomalyPage:
        start, end = time_range(since, until)
        rows = await self.repository.list_page(
            project_id,
            metric=metric or None,
            service=service or None,
            since=start,
            until=end,
            after=ANOMALY_KEYSET.after(cursor),
            limit=ANOMALY_KEYSET.fetch_size(limit),
        )
        items, next_cursor = ANOMALY_KEYSET.page(rows, limit)
        return AnomalyPage(items=[anomaly_out(row) for row in items], next_cursor=next_cursor)


def anomaly_out(row: Anomaly) -> AnomalyOut:
    return AnomalyOut(
        id=row.id,
        metric=row.metric_name,
        service_name=row.service_name,
        labels=row.labels or {},
        ts=row.ts,
        value=row.value,
        expected=row.expected,
        score=row.score,
        method=row.method or "mad",
        detected_at=row.detected_at,
    )


async def run_auto_resolve(
    session_maker: async_sessionmaker[AsyncSession], *, quiet_minutes: int, now: datetime | None = None
) -> list[Transition]:
    """The ``auto_resolve_incidents`` job: one batch of quiet incidents resolved in one unit of work."""
    async with session_scope(session_maker) as session:
        return await IncidentService(session=session).auto_resolve(quiet_minutes=quiet_minutes, now=now)
