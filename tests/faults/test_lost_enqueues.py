"""A job announcement lost while the queue was away (Redis down) is re-found by a cron: no work is lost.

Grouping re-finds new errors by its high-water mark (``test_redis_outage``); evaluation and dispatch are
crons over their tables. An incident's root-cause analysis is only announced by the transition that
needs it, so ``analyse_pending_incidents`` re-announces serious unresolved incidents never analysed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import pytest
from saq import Queue, Worker
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.incidents import tasks
from prodsentinel.incidents.models import Incident
from prodsentinel.incidents.repositories import IncidentRepository
from prodsentinel.lib import jobs
from prodsentinel.lib.database import libpq_url
from prodsentinel.settings import Settings
from tests.conftest import KeyFactory, project_id_of


@pytest.fixture
async def queue(database_url: str) -> AsyncIterator[Queue]:
    dsn = libpq_url(database_url).replace("postgresql://", "postgres://", 1)
    q = Queue.from_url(dsn, name=f"lost-{uuid4().hex[:8]}")
    await q.connect()
    previous = jobs.current_queue()
    jobs.bind_queue(q)
    try:
        yield q
    finally:
        jobs.bind_queue(previous)
        await q.disconnect()


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
    queue: Queue,
    session_maker: async_sessionmaker[AsyncSession],
    settings: Settings,
    make_key: KeyFactory,
    project_name: str,
) -> None:
    await make_key()
    project_id = await project_id_of(session_maker, project_name)
    serious = await _incident(session_maker, project_id, "critical")  # its enqueue was "lost"
    minor = await _incident(session_maker, project_id, "low")  # never analysed, by design

    result = await tasks.analyse_pending_incidents({"session_maker": session_maker})
    assert result["enqueued"] >= 1
    analysed: set[str] = set()

    async def startup(ctx: Any) -> None:
        ctx["session_maker"] = session_maker
        ctx["settings"] = settings

    async def after_process(ctx: Any) -> None:
        job = ctx["job"]
        if job.status == "complete":
            analysed.add(job.kwargs["incident_id"])

    worker = Worker(
        queue,
        functions=[tasks.analyse_incident],
        startup=startup,
        after_process=after_process,
        burst=True,
        dequeue_timeout=0.5,
    )
    await asyncio.wait_for(worker.start(), timeout=60)
    assert str(serious) in analysed
    assert str(minor) not in analysed
    async with session_maker() as session:
        stored = await session.get(Incident, serious)
    assert stored is not None
    assert stored.analysed_at is not None
    async with session_maker() as session:  # analysed now: no later run announces it again
        pending = await IncidentRepository(session=session).unanalysed_ids(["critical"], limit=100_000)
    assert serious not in pending
