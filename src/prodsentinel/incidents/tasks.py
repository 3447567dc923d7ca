"""SAQ jobs of this domain. Each task opens a session scope and calls one service function.

- ``group_new_errors``: enqueued by ingest after each commit holding errors (``key="group_new_errors"``,
  so at most one is queued); the cron ``group_new_errors_cron`` (every 10 s) is the fallback that
  finds whatever an enqueue failed to announce.
- ``auto_resolve_incidents`` (cron, every minute): resolve quiet incidents.
- ``detect_anomalies`` (cron, every minute): score active metric series.
- ``analyse_incident``: root-cause analysis, job key ``analyse:<incident_id>``.
- ``analyse_pending_incidents`` (cron, every minute): re-announces analyses whose enqueue was lost.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from litestar_saq import CronJob

from prodsentinel.incidents import analysis
from prodsentinel.incidents import services as incident_services
from prodsentinel.lib.jobs import settings_of, task_session
from prodsentinel.settings import Settings
from prodsentinel.system.services import record_loop_tick, record_tick

__all__ = (
    "TASKS",
    "analyse_incident",
    "analyse_pending_incidents",
    "auto_resolve_incidents",
    "cron_jobs",
    "detect_anomalies",
    "group_new_errors",
    "group_new_errors_cron",
)


async def group_new_errors(ctx: Any) -> dict[str, int]:
    result = await incident_services.run_grouping(ctx["session_maker"])
    return {"signals": result.signals, "batches": result.batches, "transitions": len(result.transitions)}


async def group_new_errors_cron(ctx: Any) -> dict[str, int]:
    """Cron twin of ``group_new_errors`` (cron job keys are ``cron:<function name>``, so it needs its own)."""
    result = await group_new_errors(ctx)
    await record_loop_tick(ctx, "incidents")
    return result


async def auto_resolve_incidents(ctx: Any) -> dict[str, int]:
    async with task_session(ctx) as session:
        transitions = await incident_services.auto_resolve(
            session, quiet_minutes=settings_of(ctx).incident_quiet_minutes
        )
    await incident_services.announce(transitions)
    return {"resolved": len(transitions)}


async def detect_anomalies(ctx: Any) -> dict[str, int]:
    async with task_session(ctx) as session:
        anomalies, transitions = await incident_services.detect_anomalies(session)
        await record_tick(session, "anomalies")
    await incident_services.announce(transitions)
    return {"anomalies": len(anomalies), "transitions": len(transitions)}


async def analyse_pending_incidents(ctx: Any) -> dict[str, int]:
    return {"enqueued": await incident_services.enqueue_pending_analyses(ctx["session_maker"])}


async def analyse_incident(ctx: Any, *, incident_id: str) -> dict[str, Any]:
    result = await analysis.run_analysis(ctx["session_maker"], UUID(incident_id), settings=settings_of(ctx))
    return {"incident_id": incident_id, "origin_service": result["origin_service"] if result else None}


TASKS: list[Any] = [group_new_errors, analyse_incident]


def cron_jobs(settings: Settings) -> list[CronJob]:
    """This domain's crons (gathered by ``worker.py``; none depends on settings)."""
    return [
        CronJob(function=group_new_errors_cron, cron="* * * * * */10", timeout=120),
        CronJob(function=auto_resolve_incidents, cron="* * * * *", timeout=60),
        CronJob(function=detect_anomalies, cron="* * * * *", timeout=120),
        CronJob(function=analyse_pending_incidents, cron="* * * * *", timeout=60),
    ]
