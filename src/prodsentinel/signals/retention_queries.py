"""SQL of retention: the one DELETE path of the append-only signal tables (``signals.retention``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import any_, delete, func, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from prodsentinel.auth.models import Project
from prodsentinel.signals.models import LogRecord, MetricPoint, MetricRollup, ServiceRollup, Span

__all__ = ("RETENTION_TABLES", "RetentionQueries")

RETENTION_TABLES = ("logs", "spans", "metric_points")
#: ``service_rollups.signal`` of each signal table.
_ROLLUP_SIGNAL = {"logs": 1, "spans": 2, "metric_points": 3}


class RetentionQueries:
    """Chunked deletes of expired signal rows on one session (the caller's unit of work commits)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def delete_expired(self, table: str, cutoff: datetime, chunk_size: int) -> int:
        """Delete at most ``chunk_size`` rows of ``table`` older than ``cutoff``; returns the count.

        The doomed ids are found per project through the existing ``(project_id, time)`` indexes (a
        LATERAL range scan per project), so retention needs no extra index that ingest would have
        to maintain. Rows of a project that no longer exists are not reached (projects are never
        deleted today).
        """
        model: Any = {"logs": LogRecord, "spans": Span, "metric_points": MetricPoint}[table]
        time_column = model.start_time if model is Span else model.timestamp
        per_project = (
            select(model.id)
            .where(model.project_id == Project.id, time_column < cutoff)
            .limit(chunk_size)
            .lateral()
        )
        doomed = select(per_project.c.id).select_from(Project).join(per_project, true()).limit(chunk_size)
        # ``id = ANY(ARRAY(subquery))`` makes the ids an InitPlan probed through the primary key; the
        # ``IN (subquery)`` form planned a sequential scan of the whole table and a hash semi-join.
        statement = delete(model).where(model.id == any_(func.array(doomed.scalar_subquery())))
        result = await self.session.execute(statement)
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def delete_expired_rollups(self, cutoffs: dict[str, datetime]) -> int:
        """Delete rollup buckets that start before their table's cutoff; returns the count.

        Rollups are small (a row per minute per service and level, or per metric series), so one
        DELETE per table over the ``bucket`` index is enough. A bucket is deleted by its start: the
        one bucket straddling the cutoff keeps counting its expired rows until the next run.
        """
        deleted = 0
        for table, cutoff in cutoffs.items():
            result = await self.session.execute(
                delete(ServiceRollup).where(
                    ServiceRollup.bucket < cutoff, ServiceRollup.signal == _ROLLUP_SIGNAL[table]
                )
            )
            deleted += int(result.rowcount or 0)  # type: ignore[attr-defined]
        if "metric_points" in cutoffs:
            result = await self.session.execute(
                delete(MetricRollup).where(MetricRollup.bucket < cutoffs["metric_points"])
            )
            deleted += int(result.rowcount or 0)  # type: ignore[attr-defined]
        return deleted
