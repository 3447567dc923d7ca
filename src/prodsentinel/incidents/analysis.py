"""The built-in root-cause analyser and the optional external analyser webhook.

It reads the stored telemetry around one incident (SQL in ``analysis_queries``) and stores a structured,
versioned result in ``incident.analysis``:

- ``origin_service`` / ``origin_span``: the deepest ERROR span of the incident's sample traces (the
  failure furthest down the call tree is the likely origin; callers above it fail because it failed);
  without spans, the service of the earliest error;
- ``first_error``: the earliest error (log or span) of those traces, across services;
- ``related_bursts``: other services with >= 3 errors in the incident's window;
- ``anomalies``: metric anomalies recorded in the window;
- ``evidence``: the signal ids (and anomaly ids) each claim rests on;
- ``summary``: one paragraph for humans.

The window is the incident's recent activity: from ``max(first_seen, last_seen - 1 h) - 5 min`` to
``last_seen + 5 min``.

A problem (SPEC §14) is analysed the same way over its own failing traces (the root key's earliest
first), stored in ``problems.analysis`` with its ``root``; the summary opens with the root dependency.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import httpx
import msgspec
import structlog
from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.incidents.analysis_queries import AnalysisQueries
from prodsentinel.incidents.models import Anomaly, Incident, Problem
from prodsentinel.incidents.repositories import AnomalyRepository, IncidentRepository, ProblemRepository
from prodsentinel.incidents.transitions import incident_out
from prodsentinel.lib.after_commit import after_commit
from prodsentinel.lib.database import session_scope
from prodsentinel.lib.time import utcnow
from prodsentinel.notifications.signing import delivery_headers
from prodsentinel.settings import Settings

__all__ = (
    "ANALYSIS_VERSION",
    "analyse",
    "analyse_problem",
    "build_analysis",
    "post_webhook",
    "run_analysis",
    "run_problem_analysis",
)

logger = structlog.get_logger("prodsentinel.incidents.analysis")

ANALYSIS_VERSION = 1
WINDOW_BEFORE = timedelta(minutes=5)
WINDOW_AFTER = timedelta(minutes=5)
MAX_LOOKBACK = timedelta(hours=1)
BURST_MIN_ERRORS = 3
_WEBHOOK_NAMESPACE = uuid.UUID("6f2a4f0e-8a59-4c57-9a8e-4b8f9f3a7c11")


def analysis_window(incident: Incident) -> tuple[datetime, datetime]:
    start = max(incident.first_seen, incident.last_seen - MAX_LOOKBACK) - WINDOW_BEFORE
    return start, incident.last_seen + WINDOW_AFTER


async def analyse(
    session: AsyncSession, project_id: UUID, incident_id: UUID, *, now: datetime | None = None
) -> dict[str, Any] | None:
    """Analyse one incident and store the result (the caller commits); ``None`` if it no longer exists."""
    now = now or utcnow()
    repo = IncidentRepository(session=session)
    queries = AnalysisQueries(session)
    incident = await repo.get_for_project(incident_id, project_id)
    if incident is None:
        return None
    traces = list(incident.sample_trace_ids or [])
    since, until = analysis_window(incident)
    result = build_analysis(
        incident,
        deepest=await queries.deepest_error_spans(incident.project_id, traces),
        errors=await queries.earliest_errors(incident.project_id, traces),
        bursts=await queries.error_bursts(
            incident.project_id,
            exclude_service=incident.service_name,
            since=since,
            until=until,
            min_count=BURST_MIN_ERRORS,
        ),
        anomalies=await AnomalyRepository(session=session).in_window(
            incident.project_id, since=since, until=until
        ),
        window=(since, until),
    )
    await repo.save_analysis(incident.project_id, incident.id, result, now)
    return result


async def analyse_problem(
    session: AsyncSession, project_id: UUID, problem_id: UUID, *, now: datetime | None = None
) -> dict[str, Any] | None:
    """Analyse one problem over its failing traces and store the result (the caller commits)."""
    now = now or utcnow()
    repository = ProblemRepository(session=session)
    problem = await repository.get_for_project(problem_id, project_id)
    if problem is None:
        return None
    queries = AnalysisQueries(session)
    traces = await queries.problem_traces(
        project_id, problem_id, problem.root_dependency, problem.root_service
    )
    members = await repository.members([(project_id, problem_id)])
    since = max(problem.first_seen, problem.last_seen - MAX_LOOKBACK) - WINDOW_BEFORE
    until = problem.last_seen + WINDOW_AFTER
    # The problem seen as one incident of its root service: the same evidence rules apply.
    as_incident = Incident(
        project_id=project_id,
        title=problem.title,
        severity=problem.severity,
        count=len(members),
        first_seen=problem.first_seen,
        last_seen=problem.last_seen,
        sample_trace_ids=traces,
        service_name=problem.root_service or "",
    )
    result = build_analysis(
        as_incident,
        deepest=await queries.deepest_error_spans(project_id, traces),
        errors=await queries.earliest_errors(project_id, traces),
        bursts=await queries.error_bursts(
            project_id,
            exclude_service="",
            since=since,
            until=until,
            min_count=BURST_MIN_ERRORS,
        ),
        anomalies=await AnomalyRepository(session=session).in_window(project_id, since=since, until=until),
        window=(since, until),
    )
    result["root"] = {
        "service": problem.root_service,
        "dependency": problem.root_dependency,
        "incident_id": str(problem.root_incident_id) if problem.root_incident_id else None,
        "span_id": problem.root_span_id,
    }
    result["summary"] = f"{_problem_summary(problem, len(members), len(traces))} {result['summary']}"
    await repository.save_analysis(project_id, problem_id, result, now)
    return result


def _problem_summary(problem: Problem, incidents: int, traces: int) -> str:
    services = ", ".join(problem.services or [])
    if problem.root_dependency:
        root = f"The root dependency is {problem.root_dependency}"
        root += f", called by {problem.root_service}" if problem.root_service else ""
    else:
        root = f"The root is the service {problem.root_service or 'unknown'}"
    return (
        f"Problem '{problem.title}' ({problem.severity}): {incidents} incident(s) in {services}. "
        f"{root}: present in the most failing traces ({traces} examined)."
    )


async def run_problem_analysis(
    session_maker: async_sessionmaker[AsyncSession],
    project_id: UUID,
    problem_id: UUID,
    *,
    now: datetime | None = None,
) -> dict[str, Any] | None:
    """The ``analyse_problem`` job: one problem analysed in one unit of work."""
    async with session_scope(session_maker) as session:
        return await analyse_problem(session, project_id, problem_id, now=now)


def build_analysis(
    incident: Incident,
    *,
    deepest: Sequence[Row[Any]],
    errors: Sequence[Row[Any]],
    bursts: Sequence[Row[Any]],
    anomalies: Sequence[Anomaly],
    window: tuple[datetime, datetime],
) -> dict[str, Any]:
    """Turn the query results into the versioned, JSON-ready analysis document (no I/O)."""
    origin_span = (
        {
            "signal_id": str(deepest[0].signal_id),
            "trace_id": deepest[0].trace_id,
            "span_id": deepest[0].span_id,
            "service_name": deepest[0].service_name,
            "name": deepest[0].name,
            "depth": int(deepest[0].depth),
            "start_time": deepest[0].start_time.isoformat(),
        }
        if deepest
        else None
    )
    first_error = (
        {
            "kind": errors[0].kind,
            "signal_id": str(errors[0].signal_id),
            "trace_id": errors[0].trace_id,
            "service_name": errors[0].service_name,
            "timestamp": errors[0].ts.isoformat(),
            "text": errors[0].text[:500],
        }
        if errors
        else None
    )
    if origin_span is not None:
        origin_service = origin_span["service_name"]
    elif first_error is not None:
        origin_service = first_error["service_name"]
    else:
        origin_service = incident.service_name
    related_bursts = [
        {
            "service_name": b.service_name,
            "errors": int(b.errors),
            "first_error": b.first_error.isoformat(),
            "last_error": b.last_error.isoformat(),
            "signal_ids": [str(s) for s in b.signal_ids],
        }
        for b in bursts
    ]
    anomaly_items = [
        {
            "id": str(a.id),
            "metric": a.metric_name,
            "service_name": a.service_name,
            "labels": a.labels or {},
            "ts": a.ts.isoformat(),
            "value": a.value,
            "expected": a.expected,
            "score": round(a.score, 3),
        }
        for a in anomalies
    ]
    evidence = {
        "spans": _unique(
            [str(r.signal_id) for r in deepest] + [str(r.signal_id) for r in errors if r.kind == "span"]
        ),
        "logs": _unique([str(r.signal_id) for r in errors if r.kind == "log"]),
        "bursts": _unique([s for b in related_bursts for s in b["signal_ids"]]),
        "anomalies": [a["id"] for a in anomaly_items],
    }
    return {
        "version": ANALYSIS_VERSION,
        "origin_service": origin_service,
        "origin_span": origin_span,
        "first_error": first_error,
        "related_bursts": related_bursts,
        "anomalies": anomaly_items,
        "evidence": evidence,
        "window": {"since": window[0].isoformat(), "until": window[1].isoformat()},
        "traces_examined": len(incident.sample_trace_ids or []),
        "summary": _summary(
            incident, origin_service, origin_span, first_error, related_bursts, anomaly_items
        ),
    }


def _unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _summary(
    incident: Incident,
    origin_service: str,
    origin_span: dict[str, Any] | None,
    first_error: dict[str, Any] | None,
    bursts: list[dict[str, Any]],
    anomalies: list[dict[str, Any]],
) -> str:
    parts = [
        f"Incident '{incident.title}' ({incident.severity}, {incident.count} occurrences since "
        f"{incident.first_seen.isoformat()})."
    ]
    if origin_span is not None:
        parts.append(
            f"The deepest failing span across {len(incident.sample_trace_ids or [])} sample trace(s) is "
            f"'{origin_span['name']}' in {origin_span['service_name']} (depth {origin_span['depth']}), "
            f"so {origin_service} is the likely origin."
        )
    elif first_error is not None:
        parts.append(f"No failing spans were found; the earliest error came from {origin_service}.")
    else:
        parts.append(
            f"The incident carries no trace data, so {origin_service} is the only service implicated."
        )
    if first_error is not None:
        parts.append(
            f"The first error in time was a {first_error['kind']} in {first_error['service_name']} at "
            f"{first_error['timestamp']}."
        )
    if bursts:
        described = ", ".join(f"{b['service_name']} ({b['errors']} errors)" for b in bursts[:5])
        parts.append(f"Other services erred in the same window: {described}.")
    else:
        parts.append("No other service had an error burst in the same window.")
    if anomalies:
        described = ", ".join(
            f"{a['metric']} on {a['service_name']} (score {a['score']})" for a in anomalies[:5]
        )
        parts.append(f"Metric anomalies in the window: {described}.")
    else:
        parts.append("No metric anomalies were recorded in the window.")
    return " ".join(parts)


async def run_analysis(
    session_maker: async_sessionmaker[AsyncSession],
    project_id: UUID | None,
    incident_id: UUID,
    *,
    settings: Settings,
    now: datetime | None = None,
) -> dict[str, Any] | None:
    """The ``analyse_incident`` job: analyse in one unit of work; the external analyser webhook is
    registered to run once the stored result has committed (``lib.after_commit``), outside the
    transaction, so a slow receiver never holds the incident's row. ``project_id`` None: a job enqueued
    before jobs carried it (rolling upgrade); the incident's project is looked up by id first."""
    async with session_scope(session_maker) as session:
        if project_id is None:
            project_id = await IncidentRepository(session=session).project_of(incident_id)
            if project_id is None:
                return None
        result = await analyse(session, project_id, incident_id, now=now)
        incident = (
            await IncidentRepository(session=session).get_for_project(incident_id, project_id)
            if result is not None
            else None
        )
        if result is not None and incident is not None and settings.analysis_webhook_url:
            after_commit(session, post_webhook, settings, msgspec.to_builtins(incident_out(incident)), result)
    return result


async def post_webhook(settings: Settings, incident: dict[str, Any], analysis: dict[str, Any]) -> int | None:
    """Send the analysis request to the external analyser, signed like §8 deliveries (best effort).

    The event id is stable per incident episode and severity, so a receiver can deduplicate re-runs.
    """
    assert settings.analysis_webhook_url
    event_id = uuid.uuid5(
        _WEBHOOK_NAMESPACE, f"{incident['id']}:{incident['reopened_count']}:{incident['severity']}"
    )
    body = msgspec.json.encode(
        {
            "event_type": "INCIDENT_ANALYSIS_REQUESTED",
            "event_id": str(event_id),
            "incident": incident,
            "analysis": analysis,
        }
    )
    headers = delivery_headers(
        delivery_id=uuid.uuid4(),
        event_id=event_id,
        timestamp=int(time.time()),
        body=body,
        secret=settings.analysis_webhook_secret,
    )
    try:
        async with httpx.AsyncClient(timeout=settings.notify_timeout_seconds) as client:
            response = await client.post(settings.analysis_webhook_url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        logger.warning("analysis_webhook_failed", incident_id=incident["id"], error=type(exc).__name__)
        return None
    if response.status_code >= 300:
        logger.warning("analysis_webhook_rejected", incident_id=incident["id"], status=response.status_code)
    return response.status_code
