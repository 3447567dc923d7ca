"""SAQ jobs of this domain. Each task opens nothing itself: it calls one pass, which owns its unit of work.

- ``group_new_errors``: enqueued by ingest after each commit holding errors (``key="group_new_errors"``,
  so at most one is queued); the cron ``group_new_errors_cron`` (every 10 s) is the fallback that
  finds whatever an enqueue failed to announce.
- ``auto_resolve_incidents`` (cron, every minute): resolve quiet incidents.
- ``detect_anomalies`` (cron, every minute): score active metric series.
- ``analyse_incident``: root-cause analysis, job key ``analyse:<incident_id>``.
- ``analyse_pending_incidents`` (cron, every minute): re-announces analyses whose enqueue was lost.
- ``analyse_problem``: root-cause analysis of a problem (SPEC §14), job key ``analyse-problem:<id>``.

Correlation into problems is no task of its own: it runs inside every grouping batch (``problems.py``).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from litestar_saq import CronJob

from prodsentinel.incidents.analysis import run_analysis, run_problem_analysis
from prodsentinel.incidents.anomaly_detection import run_anomaly_detection
from prodsentinel.incidents.grouping import run_grouping
from prodsentinel.incidents.services import run_auto_resolve
from prodsentinel.incidents.transitions import run_pending_analyses
from prodsentinel.lib.jobs import settings_of
from prodsentinel.settings import Settings
from prodsentinel.system.services import record_loop_tick

__all__ = (
    "TASKS",
    "analyse_incident",
    "analyse_pending_incidents",
    "analyse_problem",
    "auto_resolve_incidents",
    "cron_jobs",
    "detect_anomalies",
    "group_new_errors",
    "group_new_errors_cron",
)


async def group_new_errors(ctx: Any) -> dict[str, int]:
    result = await run_grouping(
        ctx["session_maker"], problem_window_seconds=settings_of(ctx).problem_window_seconds
    )
    return {
        "signals": result.signals,
        "batches": result.batches,
        "transitions": len(result.transitions),
        "problem_transitions": len(result.problem_transitions),
    }


async def group_new_errors_cron(ctx: Any) -> dict[str, int]:
    """Cron twin of ``group_new_errors`` (cron job keys are ``cron:<function name>``, so it needs its own)."""
    result = await group_new_errors(ctx)
    await record_loop_tick(ctx, "incidents")
    return result


async def auto_resolve_incidents(ctx: Any) -> dict[str, int]:
    transitions = await run_auto_resolve(
        ctx["session_maker"], quiet_minutes=settings_of(ctx).incident_quiet_minutes
    )
    return {"resolved": len(transitions)}


async def detect_anomalies(ctx: Any) -> dict[str, int]:
    result = await run_anomaly_detection(ctx["session_maker"])
    await record_loop_tick(ctx, "anomalies")
    return {"anomalies": len(result.anomalies), "transitions": len(result.transitions)}


async def analyse_pending_incidents(ctx: Any) -> dict[str, int]:
    return {"enqueued": await run_pending_analyses(ctx["session_maker"])}


async def analyse_incident(ctx: Any, *, incident_id: str, project_id: str | None = None) -> dict[str, Any]:
    # ``project_id`` is None only for a job enqueued by a process older than the project-scoped keys
    # (a rolling upgrade); ``run_analysis`` then finds the incident's project first.
    result = await run_analysis(
        ctx["session_maker"],
        UUID(project_id) if project_id else None,
        UUID(incident_id),
        settings=settings_of(ctx),
    )
    return {"incident_id": incident_id, "origin_service": result["origin_service"] if result else None}


async def analyse_problem(ctx: Any, *, project_id: str, problem_id: str) -> dict[str, Any]:
    result = await run_problem_analysis(ctx["session_maker"], UUID(project_id), UUID(problem_id))
    return {"problem_id": problem_id, "root": result["root"] if result else None}


TASKS: list[Any] = [group_new_errors, analyse_incident, analyse_problem]


def cron_jobs(settings: Settings) -> list[CronJob]:
    """This domain's crons (gathered by ``worker.py``; none depends on settings)."""
    return [
        CronJob(function=group_new_errors_cron, cron="* * * * * */10", timeout=120),
        CronJob(function=auto_resolve_incidents, cron="* * * * *", timeout=60),
        CronJob(function=detect_anomalies, cron="* * * * *", timeout=120),
        CronJob(function=analyse_pending_incidents, cron="* * * * *", timeout=60),
    ]
