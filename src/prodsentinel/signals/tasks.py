"""SAQ jobs of this domain. A task opens nothing itself: it calls one pass, which owns its units of work."""

from __future__ import annotations

from typing import Any

from litestar_saq import CronJob

from prodsentinel.lib.jobs import settings_of
from prodsentinel.settings import Settings
from prodsentinel.signals.retention import create_partitions_ahead, run_retention
from prodsentinel.system.services import record_loop_tick

__all__ = ("TASKS", "create_signal_partitions", "cron_jobs", "purge_expired_signals")

#: A run is bounded by the pass's time budget (600 s); the job timeout leaves room above it.
PURGE_TIMEOUT_SECONDS = 900
PARTITIONS_TIMEOUT_SECONDS = 120


async def purge_expired_signals(ctx: Any) -> dict[str, Any]:
    """Retention: drop the signal partitions older than PRODSENTINEL_RETENTION_DAYS_*.

    The pass owns its units of work (one autocommit detach + drop per partition, see
    ``signals.retention.run_retention``), so this task hands it the session maker.
    """
    report = await run_retention(ctx["session_maker"], settings_of(ctx))
    await record_loop_tick(ctx, "retention")
    return {"dropped": report.dropped, "complete": report.complete}


async def create_signal_partitions(ctx: Any) -> dict[str, Any]:
    """Create the signal partitions of the next intervals ahead of ingest (under a lease)."""
    created = await create_partitions_ahead(ctx["session_maker"], settings_of(ctx))
    return {"ran": created}


TASKS: list[Any] = [purge_expired_signals, create_signal_partitions]


def cron_jobs(settings: Settings) -> list[CronJob]:
    """Retention hourly at minute 17 and partitions ahead hourly at minute 7 (away from the top of the
    hour); unique, so runs never overlap."""
    return [
        CronJob(
            function=purge_expired_signals, cron="17 * * * *", timeout=PURGE_TIMEOUT_SECONDS, unique=True
        ),
        CronJob(
            function=create_signal_partitions,
            cron="7 * * * *",
            timeout=PARTITIONS_TIMEOUT_SECONDS,
            unique=True,
        ),
    ]
