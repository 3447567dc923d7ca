"""One way for tests to run a real SAQ worker: :func:`running_worker`.

SAQ's worker sweeps, as it starts, jobs that were dequeued before its upkeep ran (saq #277), so a job
enqueued in the first moments can be lost to the test. Instead of sleeping "long enough", the worker is
ready when a probe job it was given has completed: a real signal from the worker itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from psycopg.sql import SQL
from saq import Queue, Worker
from saq.job import Status
from saq.queue.postgres import PostgresQueue
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.lib import jobs
from prodsentinel.lib.database import libpq_url
from prodsentinel.settings import Settings

__all__ = (
    "forget_crons",
    "postgres_queue",
    "running_worker",
    "wait_until_done",
    "wait_until_ready",
    "wait_until_serving",
)

PROBE = "worker_probe"


async def worker_probe(ctx: dict[str, Any]) -> str:
    return "ready"


def postgres_queue(database_url: str, prefix: str = "test", *, name: str | None = None) -> Queue:
    """A SAQ queue of its own on the test database (SAQ's PostgreSQL backend).

    ``name`` opens another handle on an existing queue: :func:`running_worker` disconnects the queue it
    ran, and a closed handle cannot connect again, so a test that runs a worker twice on one queue (jobs
    enqueued while no worker runs, then drained) gives each run a handle of its own.
    """
    dsn = libpq_url(database_url).replace("postgresql://", "postgres://", 1)
    return Queue.from_url(dsn, name=name or f"{prefix}-{uuid.uuid4().hex[:8]}")


async def wait_until_serving(queue: Queue, function: str = PROBE, timeout: float = 20.0) -> None:
    """Return once some worker consuming ``queue`` has completed a ``function`` job (re-enqueued when
    its start-up sweep took one). ``function`` must be harmless to run: for a worker of another process
    (a server under test) that is one of its real tasks, since it knows no probe."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        job = await queue.enqueue(function, key=f"probe-{uuid.uuid4().hex}", timeout=5)
        assert job is not None
        with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
            await job.refresh(until_complete=2.0)
        if job.status == Status.COMPLETE:
            return
    raise AssertionError(f"no SAQ worker on {queue.name} ever ran a {function} job")


async def wait_until_ready(worker: Worker, timeout: float = 20.0) -> None:
    """Return once ``worker`` has run a probe job (see :func:`wait_until_serving`)."""
    worker.functions.setdefault(PROBE, worker_probe)
    await wait_until_serving(worker.queue, PROBE, timeout)


async def forget_crons(queue: Queue) -> None:
    """Delete the cron jobs a stopped worker left scheduled on a PostgreSQL queue.

    SAQ's PostgreSQL job keys are global across queues and a cron's key is ``cron:<qualname>`` (STACK_FACTS
    §3): a cron job left queued by one test's worker would silently stop every later queue of the
    database (another test's server, say) from ever scheduling that cron.
    """
    if isinstance(queue, PostgresQueue):
        async with queue.pool.connection() as connection:
            await connection.execute(
                SQL("DELETE FROM {jobs} WHERE queue = %s AND key LIKE 'cron:%%'").format(
                    jobs=queue.jobs_table
                ),
                (queue.name,),
            )


async def wait_until_done(queue: Queue, key: str, timeout: float = 20.0) -> None:
    """Return once the job with ``key`` (as enqueued, queue prefix included) is no longer queued or active."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        job = await queue.job(key)
        if job is None or job.status not in (Status.QUEUED, Status.ACTIVE):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {key} still running after {timeout} s")


@contextlib.asynccontextmanager
async def running_worker(
    queue: Queue,
    *,
    functions: Sequence[Callable[..., Awaitable[Any]]] = (),
    session_maker: async_sessionmaker[AsyncSession] | None = None,
    settings: Settings | None = None,
    worker: Worker | None = None,
    concurrency: int = 2,
) -> AsyncIterator[Worker]:
    """A real SAQ worker consuming ``queue``, ready (see :func:`wait_until_ready`), bound as the process's
    enqueue target (``lib.jobs``) while it runs, and stopped afterwards.

    Pass ``functions`` (and the ``session_maker``/``settings`` the tasks read from their context), or an
    already built ``worker`` (e.g. the one the app's SAQ config makes, crons included).
    """
    if worker is None:

        async def startup(ctx: Any) -> None:
            ctx["session_maker"] = session_maker
            ctx["settings"] = settings

        worker = Worker(queue, functions=[*functions, worker_probe], startup=startup, concurrency=concurrency)
    previous = jobs.current_queue()
    await worker.queue.connect()
    run = asyncio.create_task(worker.start())
    try:
        await wait_until_ready(worker)
        jobs.bind_queue(worker.queue)
        yield worker
    finally:
        jobs.bind_queue(previous)
        await worker.stop()
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await run
        await forget_crons(worker.queue)
        with contextlib.suppress(Exception):
            await worker.queue.disconnect()
