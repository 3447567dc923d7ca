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

from saq import Queue, Worker
from saq.job import Status
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.lib import jobs
from prodsentinel.lib.database import libpq_url
from prodsentinel.settings import Settings

__all__ = ("postgres_queue", "running_worker", "wait_until_ready")

PROBE = "worker_probe"


async def worker_probe(ctx: dict[str, Any]) -> str:
    return "ready"


def postgres_queue(database_url: str, prefix: str = "test") -> Queue:
    """A SAQ queue of its own on the test database (SAQ's PostgreSQL backend)."""
    dsn = libpq_url(database_url).replace("postgresql://", "postgres://", 1)
    return Queue.from_url(dsn, name=f"{prefix}-{uuid.uuid4().hex[:8]}")


async def wait_until_ready(worker: Worker, timeout: float = 20.0) -> None:
    """Return once ``worker`` has run a probe job (re-enqueued when its start-up sweep took one)."""
    worker.functions.setdefault(PROBE, worker_probe)
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        job = await worker.queue.enqueue(PROBE, key=f"probe-{uuid.uuid4().hex}", timeout=5)
        assert job is not None
        with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
            await job.refresh(until_complete=2.0)
        if job.status == Status.COMPLETE:
            return
    raise AssertionError(f"the SAQ worker on {worker.queue.name} never ran a probe job")


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
        with contextlib.suppress(Exception):
            await worker.queue.disconnect()
