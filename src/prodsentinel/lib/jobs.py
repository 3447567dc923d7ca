"""Helpers for SAQ tasks and for enqueueing jobs from services.

Tasks are thin: open :func:`task_session`, call one service function. State lives in PostgreSQL, so a
killed worker loses nothing; crons re-find any work an enqueue failed to announce.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from saq import Queue
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.lib.database import session_scope
from prodsentinel.settings import Settings

__all__ = ("bind_queue", "current_queue", "enqueue", "settings_of", "task_session", "try_lease")

logger = structlog.get_logger("prodsentinel.jobs")

_queue: Queue | None = None


def bind_queue(queue: Queue | None) -> None:
    """Register the process's SAQ queue (done at app and worker start)."""
    global _queue
    _queue = queue


def current_queue() -> Queue | None:
    return _queue


async def enqueue(function: str, *, key: str | None = None, timeout: int = 60, **kwargs: Any) -> bool:
    """Enqueue a job after the caller's transaction committed.

    A failure is logged, not raised: the work it announces is also found by a cron job, so a lost
    enqueue only delays it. ``key`` dedups (SAQ keeps at most one queued or running job per key). It
    is prefixed with the queue name, because SAQ's PostgreSQL job keys are global across queues: a key
    left queued on one queue (say, by an API process whose queue has no worker) would otherwise
    block the same job on every other queue of the database.
    """
    if _queue is None:
        return False
    if key is not None:
        key = f"{_queue.name}:{key}"
    try:
        job = await _queue.enqueue(function, key=key, timeout=timeout, **kwargs)
    except Exception:
        logger.warning("enqueue_failed", function=function, key=key, exc_info=True)
        return False
    return job is not None


def settings_of(ctx: dict[str, Any]) -> Settings:
    settings: Settings = ctx["settings"]
    return settings


@asynccontextmanager
async def task_session(ctx: dict[str, Any]) -> AsyncIterator[AsyncSession]:
    """The unit of work of one task run: commits on success, rolls back on error."""
    session_maker: async_sessionmaker[AsyncSession] = ctx["session_maker"]
    async with session_scope(session_maker) as session:
        yield session


async def try_lease(session: AsyncSession, name: str) -> bool:
    """Take a transaction-scoped PostgreSQL advisory lock named ``name`` without waiting.

    Used for "one evaluator at a time across all instances": the lock is released when the session's
    transaction ends, including when the worker process dies (the server drops its connection).
    """
    acquired = await session.scalar(text("SELECT pg_try_advisory_xact_lock(hashtext(:name))"), {"name": name})
    return bool(acquired)
