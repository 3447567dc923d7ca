"""Incident and anomaly rows: CRUD, lifecycle updates and the list/detail reads.

The SQL of the passes lives beside it, one concern per file: ``grouping_queries`` (the fold),
``analysis_queries`` (root-cause analysis) and ``anomaly_queries`` (anomaly detection).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from sqlalchemy import func, select, tuple_, update

from prodsentinel.incidents.models import (
    Anomaly,
    Incident,
    IncidentOccurrence,
    IncidentStatus,
    Problem,
    ProblemMember,
)
from prodsentinel.signals.models import LogRecord, Span

__all__ = ("AnomalyRepository", "IncidentRepository", "ProblemRepository")


class IncidentRepository(SQLAlchemyAsyncRepository[Incident]):
    """Incident rows: lookups, the quiet-incident resolve, pages and sample signals."""

    model_type = Incident

    async def get_for_project(
        self, incident_id: UUID, project_id: UUID, *, for_update: bool = False
    ) -> Incident | None:
        """The project's incident or ``None``; another project's id is as unknown as a missing one."""
        statement = select(Incident).where(Incident.id == incident_id, Incident.project_id == project_id)
        if for_update:
            statement = statement.with_for_update()
        return await self.session.scalar(statement.execution_options(populate_existing=True))

    async def resolve_quiet(
        self, *, cutoff: datetime, now: datetime, limit: int, actor: str
    ) -> list[Incident]:
        """Resolve open/acknowledged incidents whose last occurrence is older than ``cutoff``.

        ``SKIP LOCKED``: an incident being folded right now is skipped (it just had an occurrence).
        """
        candidates = (
            select(Incident.project_id, Incident.id)
            .where(Incident.status != IncidentStatus.RESOLVED, Incident.last_seen < cutoff)
            .order_by(Incident.last_seen)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        result = await self.session.scalars(
            update(Incident)
            .where(tuple_(Incident.project_id, Incident.id).in_(candidates))
            .values(
                status=IncidentStatus.RESOLVED,
                resolved_at=now,
                resolved_by=actor,
                updated_at=now,
            )
            .returning(Incident)
            .execution_options(populate_existing=True)
        )
        return list(result)

    async def list_page(
        self,
        project_id: UUID,
        *,
        statuses: Sequence[str],
        severities: Sequence[str],
        service: str | None,
        since: datetime | None,
        until: datetime | None,
        after: tuple[Any, ...] | None,
        limit: int,
    ) -> list[Incident]:
        """Up to ``limit`` incidents newest first by id (UUIDv7: creation order), strictly below ``after``.

        ``since``/``until`` keep the incidents active in ``[since, until)``: last seen at or after
        ``since`` and first seen before ``until``. The keyset ``id < :after`` walks
        ``ix_incidents_project_id`` backwards, so pages never skip or repeat an incident.
        """
        statement = select(Incident).where(Incident.project_id == project_id)
        if statuses:
            statement = statement.where(Incident.status.in_(statuses))
        if severities:
            statement = statement.where(Incident.severity.in_(severities))
        if service:
            statement = statement.where(Incident.service_name == service)
        if since is not None:
            statement = statement.where(Incident.last_seen >= since)
        if until is not None:
            statement = statement.where(Incident.first_seen < until)
        if after is not None:
            statement = statement.where(tuple_(Incident.id) < tuple_(*after))
        return list(await self.session.scalars(statement.order_by(Incident.id.desc()).limit(limit)))

    async def sample_logs(self, incident: Incident, limit: int) -> list[LogRecord]:
        """The incident's most recent log occurrences still in the occurrences table."""
        keys = (
            select(IncidentOccurrence.ts, IncidentOccurrence.signal_pk)
            .where(
                IncidentOccurrence.project_id == incident.project_id,
                IncidentOccurrence.fingerprint == incident.fingerprint,
                IncidentOccurrence.source == "log",
            )
            .order_by(IncidentOccurrence.ts.desc())
            .limit(limit)
        )
        statement = (
            select(LogRecord)
            .where(
                LogRecord.project_id == incident.project_id,
                # (time, id): the primary key, pruned to the partitions of the occurrences
                tuple_(LogRecord.timestamp, LogRecord.id).in_(keys),
            )
            .order_by(LogRecord.timestamp.desc())
        )
        return list(await self.session.scalars(statement))

    async def sample_spans(self, incident: Incident, limit: int) -> list[Span]:
        keys = (
            select(IncidentOccurrence.ts, IncidentOccurrence.signal_pk)
            .where(
                IncidentOccurrence.project_id == incident.project_id,
                IncidentOccurrence.fingerprint == incident.fingerprint,
                IncidentOccurrence.source == "span",
            )
            .order_by(IncidentOccurrence.ts.desc())
            .limit(limit)
        )
        statement = (
            select(Span)
            .where(
                Span.project_id == incident.project_id,
                # (time, id): the primary key, pruned to the partitions of the occurrences
                tuple_(Span.start_time, Span.id).in_(keys),
            )
            .order_by(Span.start_time.desc())
        )
        return list(await self.session.scalars(statement))

    async def project_of(self, incident_id: UUID) -> UUID | None:
        """The project of an incident known by id alone (a job from before jobs carried the project:
        the one lookup by id without a project, a fan-out on a distributed database)."""
        return await self.session.scalar(select(Incident.project_id).where(Incident.id == incident_id))

    async def save_analysis(
        self, project_id: UUID, incident_id: UUID, analysis: dict[str, Any], now: datetime
    ) -> None:
        await self.session.execute(
            update(Incident)
            .where(Incident.project_id == project_id, Incident.id == incident_id)
            .values(analysis=analysis, analysed_at=now)
        )

    async def unanalysed_keys(self, severities: Sequence[str], *, limit: int) -> list[tuple[UUID, UUID]]:
        """``(project_id, id)`` of unresolved incidents of ``severities`` never analysed: their analysis
        job was lost. Across projects (a cron's pass)."""
        rows = await self.session.execute(
            select(Incident.project_id, Incident.id)
            .where(
                Incident.status != IncidentStatus.RESOLVED,
                Incident.severity.in_(severities),
                Incident.analysed_at.is_(None),
            )
            .order_by(Incident.id)
            .limit(limit)
        )
        return [(row.project_id, row.id) for row in rows]


class AnomalyRepository(SQLAlchemyAsyncRepository[Anomaly]):
    """Anomaly rows (written by ``AnomalyQueries.detect``): window reads and pages."""

    model_type = Anomaly

    async def in_window(
        self, project_id: UUID, *, since: datetime, until: datetime, limit: int = 20
    ) -> list[Anomaly]:
        statement = (
            select(Anomaly)
            .where(Anomaly.project_id == project_id, Anomaly.ts >= since, Anomaly.ts <= until)
            .order_by(func.abs(Anomaly.score).desc(), Anomaly.ts)
            .limit(limit)
        )
        return list(await self.session.scalars(statement))

    async def list_page(
        self,
        project_id: UUID,
        *,
        metric: str | None,
        service: str | None,
        since: datetime | None,
        until: datetime | None,
        after: tuple[Any, ...] | None,
        limit: int,
    ) -> list[Anomaly]:
        """Up to ``limit`` anomalies newest first by ``(ts, id)``, strictly below ``after``; ``ts`` in
        ``[since, until)`` like every other list endpoint."""
        statement = select(Anomaly).where(Anomaly.project_id == project_id)
        if metric:
            statement = statement.where(Anomaly.metric_name == metric)
        if service:
            statement = statement.where(Anomaly.service_name == service)
        if since is not None:
            statement = statement.where(Anomaly.ts >= since)
        if until is not None:
            statement = statement.where(Anomaly.ts < until)
        if after is not None:
            statement = statement.where(tuple_(Anomaly.ts, Anomaly.id) < tuple_(*after))
        return list(
            await self.session.scalars(statement.order_by(Anomaly.ts.desc(), Anomaly.id.desc()).limit(limit))
        )


class ProblemRepository(SQLAlchemyAsyncRepository[Problem]):
    """Problem rows (written by the correlation pass, ``problem_queries``): lookups, pages, evidence."""

    model_type = Problem

    async def get_for_project(
        self, problem_id: UUID, project_id: UUID, *, for_update: bool = False
    ) -> Problem | None:
        """The project's problem or ``None``; another project's id is as unknown as a missing one."""
        statement = select(Problem).where(Problem.project_id == project_id, Problem.id == problem_id)
        if for_update:
            statement = statement.with_for_update()
        return await self.session.scalar(statement.execution_options(populate_existing=True))

    async def get_by_keys(self, keys: Sequence[tuple[UUID, UUID]]) -> list[Problem]:
        if not keys:
            return []
        statement = select(Problem).where(tuple_(Problem.project_id, Problem.id).in_(list(keys)))
        return list(await self.session.scalars(statement.execution_options(populate_existing=True)))

    async def list_page(
        self,
        project_id: UUID,
        *,
        statuses: Sequence[str],
        service: str | None,
        after: tuple[Any, ...] | None,
        limit: int,
    ) -> list[Problem]:
        """Up to ``limit`` problems newest first by id (UUIDv7: creation order), strictly below ``after``
        (the primary key ``(project_id, id)`` walked backwards)."""
        statement = select(Problem).where(Problem.project_id == project_id)
        if statuses:
            statement = statement.where(Problem.status.in_(statuses))
        if service:
            statement = statement.where(Problem.services.contains([service]))
        if after is not None:
            statement = statement.where(tuple_(Problem.id) < tuple_(*after))
        return list(await self.session.scalars(statement.order_by(Problem.id.desc()).limit(limit)))

    async def members(self, keys: Sequence[tuple[UUID, UUID]]) -> list[ProblemMember]:
        """The evidence rows of the problems, in join order."""
        if not keys:
            return []
        statement = (
            select(ProblemMember)
            .where(tuple_(ProblemMember.project_id, ProblemMember.problem_id).in_(list(keys)))
            .order_by(ProblemMember.joined_at, ProblemMember.incident_id)
        )
        return list(await self.session.scalars(statement))

    async def save_analysis(
        self, project_id: UUID, problem_id: UUID, analysis: dict[str, Any], now: datetime
    ) -> None:
        await self.session.execute(
            update(Problem)
            .where(Problem.project_id == project_id, Problem.id == problem_id)
            .values(analysis=analysis, analysed_at=now)
        )
