"""The anomaly detection pass: score every active metric series, record anomalies, fold them into incidents.

Only points that end a sustained run are recorded (``signals.anomalies`` semantics, computed in SQL by
``AnomalyQueries.detect``), so every recorded anomaly is sustained and feeds its series' incident
(source ``anomaly``, base medium, the rate rule counting the series' anomalies in the window) through
the grouping pass's :func:`~prodsentinel.incidents.grouping.fold_incidents`. One detector at a time
across all instances (a transaction-scoped lease). :func:`run_anomaly_detection` owns its unit of work;
the transitions' SSE events and analysis jobs run once it commits (``incidents.transitions``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.incidents.anomaly_queries import AnomalyQueries
from prodsentinel.incidents.fingerprint import fingerprint, incident_title
from prodsentinel.incidents.grouping import IncidentFold, fold_incidents
from prodsentinel.incidents.models import Anomaly
from prodsentinel.incidents.severity import ANOMALY_BASE, DEFAULT_RULES, SeverityRules
from prodsentinel.incidents.transitions import SYSTEM_ACTOR, Transition, record_transitions
from prodsentinel.lib import jobs
from prodsentinel.lib.database import session_scope
from prodsentinel.lib.time import utcnow
from prodsentinel.signals.anomalies import DEFAULT_PARAMS, AnomalyParams

__all__ = ("DETECTION_LEASE", "DetectionResult", "detect_anomalies", "run_anomaly_detection")

DETECTION_LEASE = "incidents:detect_anomalies"


@dataclass(slots=True)
class DetectionResult:
    anomalies: list[Anomaly] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)


async def run_anomaly_detection(
    session_maker: async_sessionmaker[AsyncSession],
    *,
    now: datetime | None = None,
    params: AnomalyParams = DEFAULT_PARAMS,
    rules: SeverityRules = DEFAULT_RULES,
) -> DetectionResult:
    """The ``detect_anomalies`` job: one detection in one unit of work."""
    async with session_scope(session_maker) as session:
        return await detect_anomalies(session, now=now, params=params, rules=rules)


async def detect_anomalies(
    session: AsyncSession,
    *,
    now: datetime | None = None,
    params: AnomalyParams = DEFAULT_PARAMS,
    rules: SeverityRules = DEFAULT_RULES,
) -> DetectionResult:
    """Score, record and fold in the caller's transaction; nothing when another detector holds the lease."""
    now = now or utcnow()
    if not await jobs.try_lease(session, DETECTION_LEASE):
        return DetectionResult()
    queries = AnomalyQueries(session)
    rows = await queries.detect(now=now, params=params)
    series: dict[tuple[UUID, str, str, str], list[Any]] = {}
    for row in rows:
        series.setdefault((row.project_id, row.metric_name, row.service_name, row.labels_key), []).append(row)
    counts = await queries.recent_counts(
        [(*key, max(r.ts for r in points)) for key, points in series.items()], rules.window_seconds
    )
    folds = [_fold(key, points, counts.get(key, len(points))) for key, points in series.items()]
    transitions = await fold_incidents(session, folds, now=now, rules=rules)
    await record_transitions(session, transitions, actor=SYSTEM_ACTOR, now=now)
    anomalies = [
        Anomaly(
            id=r.id,
            project_id=r.project_id,
            metric_name=r.metric_name,
            service_name=r.service_name,
            labels=r.labels,
            labels_key=r.labels_key,
            ts=r.ts,
            value=r.value,
            expected=r.expected,
            score=r.score,
        )
        for r in rows
    ]
    return DetectionResult(anomalies=anomalies, transitions=transitions)


def _fold(key: tuple[UUID, str, str, str], points: list[Any], rate: int) -> IncidentFold:
    """One anomalous series' new anomalies as an incident fold (one incident per series)."""
    project_id, metric, service, labels_key = key
    description = f"anomalous {metric}" + (f" {labels_key}" if labels_key != "{}" else "")
    return IncidentFold(
        project_id=project_id,
        fingerprint=fingerprint(service, f"anomaly\x1f{metric}\x1f{labels_key}"),
        title=incident_title(service, description),
        service_name=service,
        source="anomaly",
        base=ANOMALY_BASE,
        count=len(points),
        first_seen=min(r.ts for r in points),
        last_seen=max(r.ts for r in points),
        rate=rate,
    )
