"""System services the other domains call: scheduler heartbeats."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from prodsentinel.lib.jobs import task_session
from prodsentinel.system import repositories as repo

__all__ = ("SCHEDULER_LOOPS", "record_loop_tick", "record_tick")

#: The loops whose ticks are exported (and alerted on by deploy/prometheus/rules).
SCHEDULER_LOOPS = ("alerts", "dispatch", "anomalies", "incidents", "retention")


async def record_tick(session: AsyncSession, loop: str) -> None:
    """Note that scheduler loop ``loop`` ran now (an upsert in the caller's transaction).

    Call it from the cron function of each loop, in the same unit of work as the loop's work, so a loop
    whose transaction keeps failing stops ticking and ``ProdSentinelSchedulerLoopStalled`` fires.
    """
    await repo.upsert_tick(session, loop)


async def record_loop_tick(ctx: Any, loop: str) -> None:
    """For a cron task whose work succeeded: record the tick in a unit of work of its own.

    For loops whose service owns its transactions (evaluation, grouping, retention); a run that raised
    records nothing, so a loop that keeps failing looks stalled.
    """
    async with task_session(ctx) as session:
        await record_tick(session, loop)
