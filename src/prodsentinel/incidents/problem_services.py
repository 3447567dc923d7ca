"""Problems by hand and their reads (``ProblemService``, SPEC §14).

``merge`` and ``detach`` change a problem and keep the decision for later joins (``problem_merge_rules``:
the fingerprints of a merge always land in one open problem; ``problem_detach_rules``: a detached
fingerprint never rejoins that problem), with an audit row each. Like every service here they flush but
never commit; their problem transitions are recorded in the same transaction (``problems.py``).
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from sqlalchemy.ext.asyncio import AsyncSession
from uuid_utils.compat import uuid7

from prodsentinel.audit import services as audit_services
from prodsentinel.audit.services import AuditEntry
from prodsentinel.incidents.models import INCIDENT_STATUSES, Incident, IncidentStatus, Problem
from prodsentinel.incidents.problem_queries import ProblemQueries
from prodsentinel.incidents.problem_rule_queries import ProblemRuleQueries
from prodsentinel.incidents.problems import problem_outs, record_problem_transitions, refresh
from prodsentinel.incidents.repositories import IncidentRepository, ProblemRepository
from prodsentinel.incidents.schemas import IncidentOut, ProblemOut, ProblemPage
from prodsentinel.incidents.services import parse_choices
from prodsentinel.incidents.transitions import incident_out
from prodsentinel.lib.errors import BadRequestError, ConflictError, NotFoundError
from prodsentinel.lib.pagination import DEFAULT_LIMIT, Keyset
from prodsentinel.lib.time import utcnow

__all__ = ("PROBLEM_KEYSET", "ProblemService")

#: Problems page newest first by id (UUIDv7: creation order).
PROBLEM_KEYSET: Keyset[Problem] = Keyset("problems", (UUID,), lambda row: (row.id,))


class ProblemService(SQLAlchemyAsyncRepositoryService[Problem]):
    """List and read one project's problems; merge problems and detach incidents by hand."""

    repository_type = ProblemRepository
    repository: ProblemRepository

    @property
    def session(self) -> AsyncSession:
        session = self.repository.session
        assert isinstance(session, AsyncSession), "built with a plain AsyncSession (ProblemService(session=))"
        return session

    # -- reads ----------------------------------------------------------------------------------------

    async def list_problems(
        self,
        project_id: UUID,
        *,
        status: str | None = None,
        service: str | None = None,
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
    ) -> ProblemPage:
        rows = await self.repository.list_page(
            project_id,
            statuses=parse_choices(status, INCIDENT_STATUSES, "status"),
            service=service or None,
            after=PROBLEM_KEYSET.after(cursor),
            limit=PROBLEM_KEYSET.fetch_size(limit),
        )
        items, next_cursor = PROBLEM_KEYSET.page(rows, limit)
        outs = await problem_outs(self.session, [(row.project_id, row.id) for row in items])
        return ProblemPage(items=[outs[row.id] for row in items], next_cursor=next_cursor)

    async def get_problem(self, project_id: UUID, problem_id: UUID) -> ProblemOut:
        outs = await problem_outs(self.session, [(project_id, problem_id)])
        if problem_id not in outs:
            raise NotFoundError(f"Problem {problem_id} not found.")
        return outs[problem_id]

    # -- by hand --------------------------------------------------------------------------------------

    async def merge(
        self, *, project_id: UUID, problem_id: UUID, other_id: UUID, actor: str, now: datetime | None = None
    ) -> ProblemOut:
        """Fold problem ``other_id`` into ``problem_id``: its incidents move (evidence: merge), it is
        resolved with ``merged_into``, and their fingerprints stay together for later joins."""
        now = now or utcnow()
        if other_id == problem_id:
            raise BadRequestError("problem_id must name another problem than the one merged into.")
        # Serialise with the correlation pass before any row lock: it locks incidents, then problems;
        # a merge locks problems, then moves incidents (the reverse order could deadlock).
        await ProblemQueries(self.session).lock_correlation()
        first, second = sorted((problem_id, other_id), key=str)  # lock in a fixed order
        locked = {
            p.id: p
            for p in [
                await self.repository.get_for_project(first, project_id, for_update=True),
                await self.repository.get_for_project(second, project_id, for_update=True),
            ]
            if p is not None
        }
        for wanted in (problem_id, other_id):
            if wanted not in locked:
                raise NotFoundError(f"Problem {wanted} not found.")
            if locked[wanted].status == IncidentStatus.RESOLVED:
                raise ConflictError(f"Problem {wanted} is resolved and cannot be merged.")
        queries = ProblemRuleQueries(self.session)
        fingerprints = await queries.fingerprints_of(project_id, [problem_id, other_id])
        await queries.move_incidents(project_id, other_id, problem_id)
        await queries.keep_merge(project_id, fingerprints, uuid7())
        await queries.lift_detach(project_id, fingerprints, problem_id)
        await queries.close_merged(project_id, other_id, problem_id, now)
        transitions = await refresh(self.session, [(project_id, problem_id)], now=now)
        await record_problem_transitions(self.session, transitions, actor=actor, now=now)
        await audit_services.record(
            self.session,
            *[
                AuditEntry(
                    project_id=project_id,
                    actor=actor,
                    action=action,
                    subject_type="problem",
                    subject_id=subject,
                    details={
                        "merged_into": str(problem_id),
                        "merged": str(other_id),
                        "fingerprints": fingerprints,
                    },
                    at=now,
                )
                for action, subject in (("problem_merged", problem_id), ("problem_merged_away", other_id))
            ],
        )
        return await self.get_problem(project_id, problem_id)

    async def detach(
        self, *, project_id: UUID, incident_id: UUID, actor: str, now: datetime | None = None
    ) -> IncidentOut:
        """Take an incident out of its problem for good: it never rejoins that problem, and its next
        occurrence places it anew (another open problem, or one of its own)."""
        now = now or utcnow()
        await ProblemQueries(self.session).lock_correlation()  # as in merge: before any row lock
        incident: Incident | None = await IncidentRepository(session=self.session).get_for_project(
            incident_id, project_id, for_update=True
        )
        if incident is None:
            raise NotFoundError(f"Incident {incident_id} not found.")
        problem_id = incident.problem_id
        if problem_id is None:
            raise ConflictError("The incident is in no problem.")
        await ProblemRuleQueries(self.session).detach(
            project_id, incident_id, incident.fingerprint, problem_id
        )
        transitions = await refresh(self.session, [(project_id, problem_id)], now=now)
        await record_problem_transitions(self.session, transitions, actor=actor, now=now)
        await audit_services.record(
            self.session,
            AuditEntry(
                project_id=project_id,
                actor=actor,
                action="incident_detached",
                subject_type="incident",
                subject_id=incident_id,
                details={"problem_id": str(problem_id), "fingerprint": incident.fingerprint},
                at=now,
            ),
        )
        await self.session.refresh(incident)
        return incident_out(incident)
