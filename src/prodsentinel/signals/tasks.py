"""SAQ jobs of this domain. A task opens nothing itself: it calls one pass, which owns its units of work."""

from __future__ import annotations

from typing import Any

from litestar_saq import CronJob

from prodsentinel.lib.jobs import settings_of
from prodsentinel.settings import Settings
from prodsentinel.signals.retention import run_retention
from prodsentinel.system.services import record_loop_tick

__all__ = ("TASKS", "cron_jobs", "purge_expired_signals")

#: A run is bounded by the pass's time budget (600 s); the job timeout leaves room above it.
PURGE_TIMEOUT_SECONDS = 900


async def purge_expired_signals(ctx: Any) -> dict[str, Any]:
    """Retention: delete signals older than PRODSENTINEL_RETENTION_DAYS_* in bounded chunks.

    The pass owns its per-chunk transactions (see ``signals.retention.run_retention``), so this task
    hands it the session maker.
    """
    report = await run_retention(ctx["session_maker"], settings_of(ctx))
    await record_loop_tick(ctx, "retention")
    return {"deleted": report.deleted, "complete": report.complete}


TASKS: list[Any] = [purge_expired_signals]


def cron_jobs(settings: Settings) -> list[CronJob]:
    """Retention, hourly at minute 17 (away from the top of the hour); unique, so runs never overlap."""
    return [
        CronJob(function=purge_expired_signals, cron="17 * * * *", timeout=PURGE_TIMEOUT_SECONDS, unique=True)
    ]
