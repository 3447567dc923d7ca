"""Retention and partition upkeep: drop whole expired partitions, create the coming ones ahead.

Signal tables are partitioned by time (``signals.partitions``), so retention never deletes row by row:
a partition whose upper bound is at or before ``now - PRODSENTINEL_RETENTION_DAYS_*`` is detached and
dropped, which costs the same for ten rows or ten million and writes no WAL per row. A partition that
straddles the cutoff is kept until all of it has expired: rows live up to one partition interval past
their retention (README "Configuration").

``run_retention`` is the ``purge_expired_signals`` job's pass; ``create_partitions_ahead`` the
``create_signal_partitions`` job's. Both are idempotent: a killed run leaves its work to the next.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.lib.database import session_scope
from prodsentinel.lib.jobs import try_lease
from prodsentinel.lib.time import utcnow
from prodsentinel.settings import Settings
from prodsentinel.signals.partition_queries import PartitionQueries, drop_partition
from prodsentinel.signals.partitions import PARTITIONED, range_start, ranges_between
from prodsentinel.signals.rollup_queries import RollupQueries

__all__ = (
    "PARTITIONS_AHEAD",
    "PURGE_TIME_BUDGET_SECONDS",
    "PurgeReport",
    "create_partitions_ahead",
    "retention_cutoffs",
    "run_retention",
)

logger = structlog.get_logger("prodsentinel.signals.retention")

#: One retention run stops after this long; the next run carries on.
PURGE_TIME_BUDGET_SECONDS = 600.0
#: Partitions exist this many intervals ahead of now (and ingest creates any other on demand).
PARTITIONS_AHEAD = 3
PARTITION_LEASE = "signals:partitions"


@dataclass(slots=True)
class PurgeReport:
    """Partitions dropped per table; ``complete`` is False when the time budget ran out first or a
    partition could not be dropped this time (lock timeout)."""

    dropped: dict[str, list[str]] = field(default_factory=lambda: {table: [] for table in PARTITIONED})
    complete: bool = True
    #: rollup rows (``service_rollups``, ``metric_rollups``) deleted with their signals
    rollups_deleted: int = 0


def retention_cutoffs(settings: Settings, now: datetime) -> dict[str, datetime]:
    return {
        "logs": now - timedelta(days=settings.retention_days_logs),
        "spans": now - timedelta(days=settings.retention_days_spans),
        "metric_points": now - timedelta(days=settings.retention_days_metrics),
    }


async def run_retention(
    session_maker: async_sessionmaker[AsyncSession],
    settings: Settings,
    *,
    now: datetime | None = None,
    time_budget_seconds: float = PURGE_TIME_BUDGET_SECONDS,
) -> PurgeReport:
    """Drop every partition wholly older than its table's retention (the only removal of signals).

    Each drop is its own autocommit unit (``partition_queries.drop_partition``); a partition that cannot
    get its lock within the lock timeout is left for the next run.
    """
    cutoffs = retention_cutoffs(settings, now or utcnow())
    report = PurgeReport()
    deadline = time.monotonic() + time_budget_seconds
    for table_name, cutoff in cutoffs.items():
        table = PARTITIONED[table_name]
        async with session_scope(session_maker) as session:
            queries = PartitionQueries(session)
            pending = await queries.pending_detach(table)
            expired = [p.name for p in await queries.attached(table) if p.upper <= cutoff]
        for name, is_pending in [*((n, True) for n in pending), *((n, False) for n in expired)]:
            if time.monotonic() > deadline:
                report.complete = False
                logger.info("retention_budget_exhausted", dropped=report.dropped)  # the next run carries on
                return report
            try:
                async with session_maker() as session:
                    connection = await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
                    await drop_partition(connection, table, name, pending=is_pending)
            except Exception:
                report.complete = False
                logger.warning("retention_drop_failed", table=table_name, partition=name, exc_info=True)
                continue
            report.dropped[table_name].append(name)
    # Rollup buckets go with the rows they count: those before the start of the partition holding each
    # cutoff (every older partition is dropped above, or will be by the next run).
    interval = settings.partition_interval_seconds
    kept_from = {name: range_start(cutoff, interval) for name, cutoff in cutoffs.items()}
    async with session_scope(session_maker) as session:
        report.rollups_deleted = await RollupQueries(session).delete_expired(kept_from)
    logger.info("retention_dropped", dropped=report.dropped, rollups_deleted=report.rollups_deleted)
    return report


async def create_partitions_ahead(
    session_maker: async_sessionmaker[AsyncSession], settings: Settings, *, now: datetime | None = None
) -> bool:
    """Create the partitions of the current and the next ``PARTITIONS_AHEAD`` intervals of every table.

    Under a lease (one creator across every worker process); returns False when another holds it.
    """
    now = now or utcnow()
    interval = settings.partition_interval_seconds
    starts = ranges_between(now, now + timedelta(seconds=interval * PARTITIONS_AHEAD), interval)
    async with session_scope(session_maker) as session:
        if not await try_lease(session, PARTITION_LEASE):
            return False
        queries = PartitionQueries(session)
        for table in PARTITIONED.values():
            await queries.ensure(table, starts, interval)
    return True
