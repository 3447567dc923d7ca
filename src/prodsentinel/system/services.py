"""System services the other domains call: scheduler heartbeats."""

from __future__ import annotations

from sqlalchemy import func
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from prodsentinel.system.models import SchedulerTick

__all__ = ("SCHEDULER_LOOPS", "record_tick")

#: The loops whose ticks are exported (and alerted on by deploy/prometheus/rules).
SCHEDULER_LOOPS = ("alerts", "dispatch", "anomalies", "incidents", "retention")


async def record_tick(session: AsyncSession, loop: str) -> None:
    """Note that scheduler loop ``loop`` ran now (an upsert in the caller's transaction).

    Call it from the cron function of each loop, in the same unit of work as the loop's work, so a loop
    whose transaction keeps failing stops ticking and ``ProdSentinelSchedulerLoopStalled`` fires.
    """
    statement = insert(SchedulerTick).values(loop=loop, last_tick_at=func.now())
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[SchedulerTick.loop], set_={"last_tick_at": statement.excluded.last_tick_at}
        )
    )
