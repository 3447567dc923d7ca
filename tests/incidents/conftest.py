from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest
from saq import Queue
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.incidents.models import Incident
from prodsentinel.lib import jobs
from prodsentinel.lib.database import libpq_url
from prodsentinel.lib.vocabulary import EVENT_TYPES
from prodsentinel.notifications.models import Channel
from tests.conftest import KeyFactory, project_id_of


@pytest.fixture
def clock() -> datetime:
    """A fixed "now" a little in the past, so tests own the timeline."""
    return datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)


@pytest.fixture
async def project(
    make_key: KeyFactory, session_maker: async_sessionmaker[AsyncSession], project_name: str
) -> UUID:
    """This test's project (created through an admin key)."""
    await make_key("admin")
    return await project_id_of(session_maker, project_name)


async def incidents_of(session_maker: async_sessionmaker[AsyncSession], project_id: UUID) -> list[Incident]:
    async with session_maker() as session:
        return list(
            await session.scalars(
                select(Incident).where(Incident.project_id == project_id).order_by(Incident.created_at)
            )
        )


#: The incident suites count incident events: their channel does not subscribe to problem events.
INCIDENT_EVENTS = [t for t in EVENT_TYPES if not t.startswith("PROBLEM_")]


async def add_channel(
    session_maker: async_sessionmaker[AsyncSession],
    project_id: UUID,
    event_types: list[str] | None = None,
    name: str = "ops",
) -> UUID:
    """A webhook channel of the project, subscribed to ``event_types`` (default: the incident events)."""
    async with session_maker() as session:
        channel = Channel(
            project_id=project_id,
            name=name,
            url="http://127.0.0.1:9/hook",
            event_types=INCIDENT_EVENTS if event_types is None else event_types,
        )
        session.add(channel)
        await session.commit()
        return channel.id


@pytest.fixture
async def queue(database_url: str) -> AsyncIterator[Queue]:
    """A real SAQ queue on the test PostgreSQL, bound as the process queue for ``lib.jobs.enqueue``."""
    dsn = libpq_url(database_url).replace("postgresql://", "postgres://", 1)
    q = Queue.from_url(dsn, name=f"incidents-{uuid4().hex[:8]}")
    await q.connect()
    previous = jobs.current_queue()
    jobs.bind_queue(q)
    try:
        yield q
    finally:
        jobs.bind_queue(previous)
        await q.disconnect()
