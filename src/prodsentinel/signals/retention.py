"""Retention: delete signals older than ``PRODSENTINEL_RETENTION_DAYS_*``, in bounded chunks.

The ``purge_expired_signals`` job calls :func:`run_retention`, which owns its units of work (one short
transaction per chunk, see its docstring); the DELETE itself is ``RetentionQueries.delete_expired``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.lib.database import session_scope
from prodsentinel.lib.time import utcnow
from prodsentinel.settings import Settings
from prodsentinel.signals.retention_queries import RETENTION_TABLES, RetentionQueries

__all__ = (
    "PURGE_CHUNK_SIZE",
    "PURGE_TIME_BUDGET_SECONDS",
    "PurgeReport",
    "retention_cutoffs",
    "run_retention",
)

logger = structlog.get_logger("prodsentinel.signals.retention")

#: Retention deletes at most this many rows per statement (and transaction).
PURGE_CHUNK_SIZE = 5_000
#: One retention run stops after this long; the next run carries on.
PURGE_TIME_BUDGET_SECONDS = 600.0


@dataclass(slots=True)
class PurgeReport:
    """Rows deleted per table; ``complete`` is False when the time budget ran out first."""

    deleted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RETENTION_TABLES, 0))
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
    chunk_size: int = PURGE_CHUNK_SIZE,
    time_budget_seconds: float = PURGE_TIME_BUDGET_SECONDS,
) -> PurgeReport:
    """Delete signals older than their retention (the only DELETE path of the signal tables).

    Like every background pass it owns its units of work: each chunk of at most ``chunk_size`` rows
    is its own short transaction, so a purge of millions of rows never holds locks or builds one
    huge WAL record set, and concurrent ingest and queries are never blocked for long. It is
    idempotent: a killed run leaves the remaining expired rows to the next one.
    """
    cutoffs = retention_cutoffs(settings, now or utcnow())
    report = PurgeReport()
    deadline = time.monotonic() + time_budget_seconds
    for table, cutoff in cutoffs.items():
        while True:
            async with session_scope(session_maker) as session:
                deleted = await RetentionQueries(session).delete_expired(table, cutoff, chunk_size)
            report.deleted[table] += deleted
            if deleted < chunk_size:
                break
            if time.monotonic() > deadline:
                report.complete = False
                logger.info("retention_budget_exhausted", deleted=report.deleted)  # the next run carries on
                return report
    async with session_scope(session_maker) as session:
        report.rollups_deleted = await RetentionQueries(session).delete_expired_rollups(cutoffs)
    logger.info("retention_purged", deleted=report.deleted, rollups_deleted=report.rollups_deleted)
    return report
