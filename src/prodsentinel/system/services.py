"""System services the other domains call: scheduler heartbeats."""

from __future__ import annotations

from typing import Any

from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService

from prodsentinel.lib.jobs import task_session
from prodsentinel.system.models import SchedulerTick
from prodsentinel.system.repositories import SchedulerTickRepository

__all__ = ("SCHEDULER_LOOPS", "SchedulerTickService", "record_loop_tick")

#: The loops whose ticks are exported (and alerted on by deploy/prometheus/rules).
SCHEDULER_LOOPS = ("alerts", "dispatch", "anomalies", "incidents", "retention")


class SchedulerTickService(SQLAlchemyAsyncRepositoryService[SchedulerTick]):
    """When each scheduler loop last ran (``prodsentinel_scheduler_last_tick_timestamp_seconds``)."""

    repository_type = SchedulerTickRepository
    repository: SchedulerTickRepository

    async def record(self, loop: str) -> None:
        """Note that scheduler loop ``loop`` ran now (an upsert in the caller's transaction).

        Record it in the same unit of work as the loop's work (or after it succeeded, see
        :func:`record_loop_tick`), so a loop whose transaction keeps failing stops ticking and
        ``ProdSentinelSchedulerLoopStalled`` fires.
        """
        await self.repository.upsert_tick(loop)


async def record_loop_tick(ctx: Any, loop: str) -> None:
    """For a cron task whose work succeeded: record the tick in a unit of work of its own.

    For loops whose pass owns its units of work (evaluation, dispatch, grouping, anomaly detection,
    retention); a run that raised records nothing, so a loop that keeps failing looks stalled.
    """
    async with task_session(ctx) as session:
        await SchedulerTickService(session=session).record(loop)
