"""A job announcement lost while the queue was away (Redis down) is re-found by a cron: no work is lost.

Grouping re-finds new errors by its high-water mark (``test_redis_outage``); evaluation and dispatch are
crons over their tables. An incident's root-cause analysis is only announced by the transition that
needs it, so ``analyse_pending_incidents`` re-announces serious unresolved incidents never analysed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID, uuid4

from saq.job import Status
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.incidents import tasks
from prodsentinel.incidents.models import Incident
from prodsentinel.incidents.repositories import IncidentRepository
from prodsentinel.settings import Settings
from tests.conftest import Tenant
from tests.workers import postgres_queue, running_worker


async def _incident(session_maker: async_sessionmaker[AsyncSession], project_id: UUID, severity: str) -> UUID:
    now = datetime.now(UTC)
    async with session_maker() as session:
        incident = Incident(
            project_id=project_id,
            fingerprint=uuid4().hex,
            title=f"api: {severity} failure",
            service_name="api",
            severity=severity,
            first_seen=now,
            last_seen=now,
            count=1,
        )
        session.add(incident)
        await session.commit()
        return incident.id


async def test_an_analysis_whose_enqueue_was_lost_is_announced_again_and_runs(
    database_url: str, session_maker: async_sessionmaker[AsyncSession], settings: Settings, tenant: Tenant
) -> None:
    serious = await _incident(session_maker, tenant.project_id, "critical")  # its enqueue was "lost"
    minor = await _incident(session_maker, tenant.project_id, "low")  # never analysed, by design

    queue = postgres_queue(database_url, "lost")
    functions = [tasks.analyse_incident]
    async with running_worker(queue, functions=functions, session_maker=session_maker, settings=settings):
        result = await tasks.analyse_pending_incidents({"session_maker": session_maker})
        assert result["enqueued"] >= 1
        job = await queue.job(f"{queue.name}:analyse:{serious}")
        assert job is not None, "the cron did not announce the serious incident"
        await job.refresh(until_complete=30)
        assert job.status == Status.COMPLETE, job.error
        # the cron's pass is over and the minor one was never announced (no job to wait for)
        assert await queue.job(f"{queue.name}:analyse:{minor}") is None
    async with session_maker() as session:
        stored = await session.get(Incident, (tenant.project_id, serious))
        unanalysed = await session.get(Incident, (tenant.project_id, minor))
    assert stored is not None
    assert stored.analysed_at is not None
    assert unanalysed is not None
    assert unanalysed.analysed_at is None
    async with session_maker() as session:  # analysed now: no later run announces it again
        pending = await IncidentRepository(session=session).unanalysed_keys(["critical"], limit=100_000)
    assert (tenant.project_id, serious) not in pending
