from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from saq import Queue
from saq.job import Status
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.incidents.models import Incident
from prodsentinel.lib import jobs
from prodsentinel.lib.vocabulary import EVENT_TYPES
from prodsentinel.notifications.models import Channel
from prodsentinel.settings import Settings
from tests.workers import postgres_queue, running_worker


@pytest.fixture
def clock() -> datetime:
    """A fixed "now" a little in the past, so tests own the timeline."""
    return datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)


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
    """A real SAQ queue on the test PostgreSQL with no worker yet, bound as the process queue for
    ``lib.jobs.enqueue``: tests enqueue first, then run a worker with :func:`drain`."""
    q = postgres_queue(database_url, "incidents")
    await q.connect()
    previous = jobs.current_queue()
    jobs.bind_queue(q)
    try:
        yield q
    finally:
        jobs.bind_queue(previous)
        await q.disconnect()


async def drain(
    queue: Queue,
    database_url: str,
    key: str,
    *,
    functions: Sequence[Callable[..., Awaitable[Any]]],
    session_maker: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    """Run a real worker on ``queue`` until the job enqueued under ``key`` (``jobs.enqueue``'s key,
    without the queue prefix) has completed. PostgreSQL jobs enqueued before a worker starts are safe
    from SAQ's start-up sweep (it only takes stuck active jobs), so tests may enqueue first."""
    handle = postgres_queue(database_url, name=queue.name)  # running_worker disconnects its queue
    async with running_worker(handle, functions=functions, session_maker=session_maker, settings=settings):
        job = await handle.job(f"{queue.name}:{key}")
        assert job is not None, key
        await job.refresh(until_complete=30)
        assert job.status == Status.COMPLETE, job.error
