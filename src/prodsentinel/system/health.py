"""Dependency checks behind /health and /health/ready."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from functools import lru_cache
from typing import Any, Literal

from alembic.config import Config
from alembic.script import ScriptDirectory
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.lib.database import MIGRATIONS_DIR, VERSION_TABLE
from prodsentinel.lib.jobs import current_queue
from prodsentinel.lib.structs import Struct

__all__ = (
    "ComponentHealth",
    "HealthReport",
    "check_database",
    "check_queue",
    "check_redis",
    "migrations_applied",
)

Status = Literal["ok", "error", "not_configured"]


class ComponentHealth(Struct):
    status: Status
    latency_ms: float | None = None
    detail: str | None = None


class HealthReport(Struct):
    status: Literal["ok", "degraded"]
    database: ComponentHealth
    queue: ComponentHealth
    redis: ComponentHealth


#: A dependency that has not answered within this many seconds is reported as ``error``. Without a
#: bound, a stopped database left /health waiting on SAQ's connection pool for its 30 s timeout.
CHECK_TIMEOUT_SECONDS = 2.0


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


async def _probe(call: Awaitable[Any]) -> ComponentHealth:
    """Run one dependency call, bounded; ``ok`` with its latency, or ``error`` naming the failure."""
    started = time.perf_counter()
    try:
        await asyncio.wait_for(call, CHECK_TIMEOUT_SECONDS)
    except Exception as exc:
        return ComponentHealth(status="error", latency_ms=_elapsed_ms(started), detail=type(exc).__name__)
    return ComponentHealth(status="ok", latency_ms=_elapsed_ms(started))


async def check_database(session_maker: async_sessionmaker[AsyncSession]) -> ComponentHealth:
    async def select_one() -> None:
        async with session_maker() as session:
            await session.execute(text("SELECT 1"))

    return await _probe(select_one())


async def check_queue() -> ComponentHealth:
    queue = current_queue()
    if queue is None:
        return ComponentHealth(status="not_configured")
    result = await _probe(queue.info())
    if result.status == "ok":
        result.detail = type(queue).__name__
    return result


async def check_redis(redis: Redis | None) -> ComponentHealth:
    if redis is None:
        return ComponentHealth(status="not_configured")
    return await _probe(redis.ping())  # type: ignore[arg-type]


@lru_cache(maxsize=1)
def head_revisions() -> frozenset[str]:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return frozenset(ScriptDirectory.from_config(config).get_heads())


async def migrations_applied(session_maker: async_sessionmaker[AsyncSession]) -> bool:
    """True when the database is at the migration head(s) this code ships."""
    try:
        async with session_maker() as session:
            rows = await session.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))
            applied: set[Any] = {row[0] for row in rows}
    except Exception:
        return False
    return applied == set(head_revisions())
