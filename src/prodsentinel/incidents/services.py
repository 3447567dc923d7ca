"""Incident rules: grouping, severity/escalation, lifecycle, anomaly incidents and the read side.

Services flush but never commit: the task or request boundary commits. Everything that must happen with a
state change (outbox items, audit rows, the grouping high-water mark) is written in the same transaction;
what must only happen once it is durable (SSE events, ``dispatch_due`` and ``analyse_incident`` jobs) is
returned as :class:`Transition` objects and run by :func:`announce` after the commit.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import msgspec
import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from uuid_utils.compat import uuid7

from prodsentinel.audit import services as audit_services
from prodsentinel.audit.services import AuditEntry
from prodsentinel.incidents.fingerprint import fingerprint, incident_title, message_template
from prodsentinel.incidents.models import Anomaly, Incident, IncidentStatus
from prodsentinel.incidents.repositories import (
    SOURCES,
    AnomalyRepository,
    FoldRow,
    IncidentRepository,
    SignalSource,
)
from prodsentinel.incidents.schemas import (
    AnomalyOut,
    AnomalyPage,
    IncidentDetail,
    IncidentOut,
    IncidentPage,
)
from prodsentinel.incidents.severity import (
    ANOMALY_BASE,
    DEFAULT_RULES,
    SPAN_ERROR_BASE,
    Severity,
    SeverityRules,
    base_for_log_level,
    escalate,
    is_escalation,
    severity_for,
)
from prodsentinel.lib import jobs
from prodsentinel.lib.database import session_scope
from prodsentinel.lib.errors import BadRequestError, ConflictError, NotFoundError
from prodsentinel.lib.events import publish_event
from prodsentinel.lib.pagination import check_limit, decode_cursor, encode_cursor
from prodsentinel.lib.time import as_utc, utcnow
from prodsentinel.lib.vocabulary import LEVEL_NAMES
from prodsentinel.notifications.outbox import add_event, enqueue_dispatch
from prodsentinel.signals import services as signal_services
from prodsentinel.signals.anomalies import DEFAULT_PARAMS, AnomalyParams

__all__ = (
    "SYSTEM_ACTOR",
    "GroupingResult",
    "IncidentFold",
    "Transition",
    "acknowledge",
    "announce",
    "auto_resolve",
    "detect_anomalies",
    "enqueue_analysis",
    "fold_incidents",
    "get_incident",
    "group_batch",
    "list_anomalies",
    "list_incidents",
    "resolve",
    "run_grouping",
)

logger = structlog.get_logger("prodsentinel.incidents")

SYSTEM_ACTOR = "system:scheduler"
GROUP_BATCH_SIZE = 5000
#: Batches per source in one job run; the cron (every 10 s) picks up whatever is left.
GROUP_MAX_BATCHES = 40
GROUP_TIME_BUDGET_SECONDS = 60.0
#: Occurrences are kept this long (for samples and the rate window) once the high-water mark passed them.
OCCURRENCE_RETENTION = timedelta(days=1)
AUTO_RESOLVE_BATCH = 1000
SAMPLE_SIGNALS = 5
ANALYSED_SEVERITIES = frozenset({Severity.HIGH, Severity.CRITICAL})
#: At most this many lost analyses are re-announced per run of ``analyse_pending_incidents``.
PENDING_ANALYSES_LIMIT = 100
ANALYSIS_TIMEOUT_SECONDS = 120

# Templates repeat heavily (one message shape, many ids): cache the regex work per distinct text.
_template = functools.lru_cache(maxsize=65536)(message_template)


@dataclass(slots=True)
class Transition:
    """One incident state change, written to the outbox/audit in-transaction and announced after commit."""

    kind: str  # opened | escalated | resolved | reopened
    project_id: UUID
    incident: IncidentOut
    previous_severity: str | None = None

    @property
    def event_type(self) -> str:
        """Outbox event name (SPEC §7)."""
        return f"INCIDENT_{self.kind.upper()}"

    @property
    def stream_type(self) -> str:
        """SSE event name."""
        return f"incident_{self.kind}"

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "project_id": str(self.project_id),
            "incident": msgspec.to_builtins(self.incident),
        }
        if self.previous_severity is not None:
            body["previous_severity"] = self.previous_severity
        return body


@dataclass(slots=True)
class IncidentFold:
    """New occurrences of one incident key, from error signals or sustained anomalies."""

    project_id: UUID
    fingerprint: str
    title: str
    service_name: str
    source: str
    base: Severity
    count: int
    first_seen: datetime
    last_seen: datetime
    rate: int
    spread: int = 0
    sample_trace_ids: list[str] = field(default_factory=list)


@dataclass(slots=True)
class BatchOutcome:
    signals: int
    full: bool
    high_water_id: int
    transitions: list[Transition]


@dataclass(slots=True)
class GroupingResult:
    signals: int = 0
    batches: int = 0
    transitions: list[Transition] = field(default_factory=list)


def incident_out(row: Incident | dict[str, Any]) -> IncidentOut:
    if isinstance(row, dict):
        return msgspec.convert(row, IncidentOut)
    return msgspec.convert(row, IncidentOut, from_attributes=True)


# ---------------------------------------------------------------------------------------------- grouping


async def run_grouping(
    session_maker: async_sessionmaker[AsyncSession],
    *,
    now: datetime | None = None,
    batch_size: int = GROUP_BATCH_SIZE,
    max_batches: int = GROUP_MAX_BATCHES,
    rules: SeverityRules = DEFAULT_RULES,
) -> GroupingResult:
    """Fold every new error signal into incidents: one transaction per batch, announced after each commit.

    A crash loses at most the batch in flight, whose occurrences, upserts and high-water mark roll back
    together, so the next run redoes it exactly once.
    """
    result = GroupingResult()
    started = time.monotonic()
    for source in SOURCES.values():
        for _ in range(max_batches):
            async with session_scope(session_maker) as session:
                outcome = await group_batch(session, source, batch_size=batch_size, now=now, rules=rules)
            await announce(outcome.transitions)
            result.signals += outcome.signals
            result.batches += 1
            result.transitions.extend(outcome.transitions)
            if not outcome.full or time.monotonic() - started > GROUP_TIME_BUDGET_SECONDS:
                break
    return result


async def group_batch(
    session: AsyncSession,
    source: SignalSource,
    *,
    batch_size: int = GROUP_BATCH_SIZE,
    now: datetime | None = None,
    rules: SeverityRules = DEFAULT_RULES,
) -> BatchOutcome:
    """Group the next batch of ``source``'s new error rows (the caller commits).

    High-water mark (see ``GroupingCursor``): rows are scanned from ``high_water_id`` and deduplicated
    by ``incident_occurrences``; the mark itself only moves to a checkpoint whose possibly in-flight
    transactions have all ended, so a row committed late with a smaller id is never skipped.
    """
    now = now or utcnow()
    repo = IncidentRepository(session=session)
    await repo.lock_grouping(source.name)
    # Read before this transaction writes anything (a write assigns it an xid of its own).
    xmin = await repo.snapshot_xmin()
    cursor = await repo.get_cursor(source.table)
    visible_max_id = await repo.max_signal_id(source)
    settled = (
        cursor.checkpoint_id is not None
        and cursor.checkpoint_xmax is not None
        and xmin >= cursor.checkpoint_xmax
    )
    bound = max(cursor.high_water_id, cursor.checkpoint_id or 0) if settled else cursor.high_water_id

    groups = await repo.new_error_groups(source, after_id=cursor.high_water_id, limit=batch_size)
    ids: list[int] = []
    fingerprints: list[str] = []
    meta: dict[str, tuple[str, str]] = {}
    for group in groups:
        template = _template(group.text)
        key = fingerprint(group.service_name, template)
        meta.setdefault(key, (group.service_name, template))
        ids.extend(group.ids)
        fingerprints.extend([key] * len(group.ids))
    full = len(ids) >= batch_size

    folds: list[FoldRow] = []
    if ids:
        folds = await repo.record_occurrences(
            source, ids=ids, fingerprints=fingerprints, window_seconds=rules.window_seconds
        )
    transitions = await fold_incidents(
        session,
        [_fold_from_signals(row, meta[row.fingerprint], source.name) for row in folds],
        now=now,
        rules=rules,
    )

    high_water = max(cursor.high_water_id, min(bound, max(ids)) if full else bound)
    if cursor.checkpoint_id is None or (settled and high_water >= cursor.checkpoint_id):
        # Every id <= visible_max_id was allocated before now; transactions that may still hold one
        # have an xid below this snapshot's xmax, so once xmin passes it they have all ended.
        checkpoint_id: int | None = visible_max_id
        checkpoint_xmax: int | None = await repo.snapshot_xmax()
    else:
        checkpoint_id, checkpoint_xmax = cursor.checkpoint_id, cursor.checkpoint_xmax
    await repo.save_cursor(
        source.table, high_water_id=high_water, checkpoint_id=checkpoint_id, checkpoint_xmax=checkpoint_xmax
    )
    await record_transitions(session, transitions, actor=SYSTEM_ACTOR, now=now)
    return BatchOutcome(signals=len(ids), full=full, high_water_id=high_water, transitions=transitions)


def _fold_from_signals(row: FoldRow, meta: tuple[str, str], source: str) -> IncidentFold:
    service_name, template = meta
    if source == "span":
        base = SPAN_ERROR_BASE
    else:
        base = base_for_log_level(LEVEL_NAMES.get(row.max_level, "ERROR")) or Severity.MEDIUM
        if row.max_level >= 50:
            base = Severity.CRITICAL
    return IncidentFold(
        project_id=row.project_id,
        fingerprint=row.fingerprint,
        title=incident_title(service_name, template),
        service_name=service_name,
        source=source,
        base=base,
        count=row.count,
        first_seen=row.first_seen,
        last_seen=row.last_seen,
        rate=row.rate,
        spread=row.spread,
        sample_trace_ids=row.sample_trace_ids,
    )


async def fold_incidents(
    session: AsyncSession,
    folds: Sequence[IncidentFold],
    *,
    now: datetime,
    rules: SeverityRules = DEFAULT_RULES,
) -> list[Transition]:
    """Upsert incidents from aggregated occurrences and derive their transitions.

    Severity (docs/incidents.md): ``severity_for`` of the base, the 5-minute rate and the trace spread;
    while open or acknowledged the stored severity only moves up (``escalate``); a resolved incident
    that gets an occurrence is reopened with the severity of its new episode.
    """
    if not folds:
        return []
    repo = IncidentRepository(session=session)
    existing = await repo.lock_existing([(f.project_id, f.fingerprint) for f in folds])
    rows: list[dict[str, Any]] = []
    for fold in folds:
        computed = severity_for(
            base=fold.base, occurrences_in_window=fold.rate, services_in_same_trace=fold.spread, rules=rules
        )
        previous = existing.get((fold.project_id, fold.fingerprint))
        if previous is None or previous.status == IncidentStatus.RESOLVED:
            severity = computed
        else:
            severity = escalate(Severity(previous.severity), computed)
        rows.append(
            {
                "id": str(uuid7()),
                "project_id": str(fold.project_id),
                "fingerprint": fold.fingerprint,
                "title": fold.title,
                "service_name": fold.service_name,
                "source": fold.source,
                "severity": severity.value,
                "count": fold.count,
                "first_seen": fold.first_seen.isoformat(),
                "last_seen": fold.last_seen.isoformat(),
                "sample_trace_ids": fold.sample_trace_ids[:10],
            }
        )
    transitions: list[Transition] = []
    for row in await repo.upsert_incidents(rows, now=now):
        previous = existing.get((row["project_id"], row["fingerprint"]))
        out = incident_out(row)
        if previous is None:
            transitions.append(Transition("opened", row["project_id"], out))
        elif previous.status == IncidentStatus.RESOLVED:
            transitions.append(Transition("reopened", row["project_id"], out, previous.severity))
        elif is_escalation(Severity(previous.severity), Severity(out.severity)):
            transitions.append(Transition("escalated", row["project_id"], out, previous.severity))
    return transitions


async def record_transitions(
    session: AsyncSession, transitions: Sequence[Transition], *, actor: str, now: datetime
) -> None:
    """Outbox events and audit rows of the transitions, in the caller's transaction."""
    if not transitions:
        return
    audit: list[AuditEntry] = []
    for transition in transitions:
        event_id = await add_event(
            session,
            project_id=transition.project_id,
            event_type=transition.event_type,
            severity=transition.incident.severity,
            payload=transition.payload(),
        )
        details: dict[str, Any] = {"severity": transition.incident.severity, "event_id": str(event_id)}
        if transition.previous_severity is not None:
            details["previous_severity"] = transition.previous_severity
        audit.append(
            AuditEntry(
                project_id=transition.project_id,
                actor=actor,
                action=f"incident_{transition.kind}",
                subject_type="incident",
                subject_id=transition.incident.id,
                details=details,
                at=now,
            )
        )
    await audit_services.record(session, *audit)


async def announce(transitions: Sequence[Transition]) -> None:
    """After commit: SSE events, wake the outbox dispatcher, triage serious incidents."""
    if not transitions:
        return
    for transition in transitions:
        await publish_event(transition.stream_type, transition.project_id, transition.payload())
    await enqueue_dispatch()
    for transition in transitions:
        if transition.kind != "resolved" and Severity(transition.incident.severity) in ANALYSED_SEVERITIES:
            await enqueue_analysis(transition.incident.id)


async def enqueue_pending_analyses(session_maker: async_sessionmaker[AsyncSession]) -> int:
    """Re-announce analyses whose enqueue was lost (Redis down, a crash between commit and enqueue).

    Grouping, evaluation and dispatch re-find their work by themselves; an analysis is only announced
    by the transition that needs it, so this cron twin finds serious unresolved incidents never
    analysed. The job key dedups against an analysis already queued or running.
    """
    async with session_scope(session_maker) as session:
        ids = await IncidentRepository(session=session).unanalysed_ids(
            sorted(ANALYSED_SEVERITIES), limit=PENDING_ANALYSES_LIMIT
        )
    return sum([await enqueue_analysis(incident_id) for incident_id in ids])


async def enqueue_analysis(incident_id: UUID) -> bool:
    """At most one queued or running analysis per incident: SAQ dedups on the job key."""
    return await jobs.enqueue(
        "analyse_incident",
        key=f"analyse:{incident_id}",
        timeout=ANALYSIS_TIMEOUT_SECONDS,
        incident_id=str(incident_id),
    )


# ---------------------------------------------------------------------------------------------- lifecycle


async def acknowledge(
    session: AsyncSession, *, project_id: UUID, incident_id: UUID, actor: str, now: datetime | None = None
) -> IncidentOut:
    """open -> acknowledged (idempotent when already acknowledged; a resolved incident is a 409)."""
    now = now or utcnow()
    repo = IncidentRepository(session=session)
    incident = await _get_locked(repo, project_id, incident_id)
    if incident.status == IncidentStatus.RESOLVED:
        raise ConflictError("A resolved incident cannot be acknowledged.")
    if incident.status == IncidentStatus.OPEN:
        incident.status = IncidentStatus.ACKNOWLEDGED
        incident.acked_by = actor
        incident.acked_at = now
        incident.updated_at = now
        await session.flush()
        await audit_services.record(
            session,
            AuditEntry(
                project_id=project_id,
                actor=actor,
                action="incident_acknowledged",
                subject_type="incident",
                subject_id=incident.id,
                details={"severity": incident.severity},
                at=now,
            ),
        )
        await add_event(
            session,
            project_id=project_id,
            event_type="INCIDENT_ACKNOWLEDGED",
            severity=incident.severity,
            payload={"project_id": str(project_id), "incident": msgspec.to_builtins(incident_out(incident))},
        )
    return incident_out(incident)


async def resolve(
    session: AsyncSession, *, project_id: UUID, incident_id: UUID, actor: str, now: datetime | None = None
) -> tuple[IncidentOut, list[Transition]]:
    """open|acknowledged -> resolved (idempotent when already resolved); the next occurrence reopens it."""
    now = now or utcnow()
    repo = IncidentRepository(session=session)
    incident = await _get_locked(repo, project_id, incident_id)
    if incident.status == IncidentStatus.RESOLVED:
        return incident_out(incident), []
    incident.status = IncidentStatus.RESOLVED
    incident.resolved_by = actor
    incident.resolved_at = now
    incident.updated_at = now
    await session.flush()
    out = incident_out(incident)
    transitions = [Transition("resolved", project_id, out)]
    await record_transitions(session, transitions, actor=actor, now=now)
    return out, transitions


async def auto_resolve(
    session: AsyncSession, *, quiet_minutes: int, now: datetime | None = None
) -> list[Transition]:
    """Resolve incidents quiet for ``quiet_minutes`` (all projects); prune old occurrences."""
    now = now or utcnow()
    repo = IncidentRepository(session=session)
    resolved = await repo.resolve_quiet(
        cutoff=now - timedelta(minutes=quiet_minutes), now=now, limit=AUTO_RESOLVE_BATCH
    )
    transitions = [
        Transition("resolved", incident.project_id, incident_out(incident)) for incident in resolved
    ]
    await record_transitions(session, transitions, actor=SYSTEM_ACTOR, now=now)
    await repo.prune_occurrences(cutoff=now - OCCURRENCE_RETENTION, limit=10_000)
    return transitions


async def _get_locked(repo: IncidentRepository, project_id: UUID, incident_id: UUID) -> Incident:
    incident = await repo.get_for_project(incident_id, project_id, for_update=True)
    if incident is None:
        raise NotFoundError(f"Incident {incident_id} not found.")
    return incident


# ---------------------------------------------------------------------------------------------- anomalies


async def detect_anomalies(
    session: AsyncSession,
    *,
    now: datetime | None = None,
    params: AnomalyParams = DEFAULT_PARAMS,
    rules: SeverityRules = DEFAULT_RULES,
) -> tuple[list[Anomaly], list[Transition]]:
    """Score all active series, record new anomalies and open/update one incident per anomalous series.

    Only points that end a sustained run are recorded (``signals.anomalies`` semantics), so every
    recorded anomaly is sustained and feeds its series' incident (source ``anomaly``, base medium,
    the rate rule counting the series' anomalies in 5 minutes). One detector at a time (lease).
    """
    now = now or utcnow()
    if not await jobs.try_lease(session, "incidents:detect_anomalies"):
        return [], []
    repo = AnomalyRepository(session=session)
    rows = await repo.detect(now=now, params=params)
    series: dict[tuple[UUID, str, str, str], list[Any]] = {}
    for row in rows:
        series.setdefault((row.project_id, row.metric_name, row.service_name, row.labels_key), []).append(row)
    counts = await repo.recent_counts(
        [(*key, max(r.ts for r in points)) for key, points in series.items()], rules.window_seconds
    )
    folds: list[IncidentFold] = []
    for key, points in series.items():
        project_id, metric, service, labels_key = key
        description = f"anomalous {metric}" + (f" {labels_key}" if labels_key != "{}" else "")
        folds.append(
            IncidentFold(
                project_id=project_id,
                fingerprint=fingerprint(service, f"anomaly\x1f{metric}\x1f{labels_key}"),
                title=incident_title(service, description),
                service_name=service,
                source="anomaly",
                base=ANOMALY_BASE,
                count=len(points),
                first_seen=min(r.ts for r in points),
                last_seen=max(r.ts for r in points),
                rate=counts.get(key, len(points)),
            )
        )
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
    return anomalies, transitions


# ---------------------------------------------------------------------------------------------- reads


def _parse_choices(raw: str | None, allowed: Sequence[str], name: str) -> list[str]:
    if not raw:
        return []
    values = [value.strip().lower() for value in raw.split(",") if value.strip()]
    for value in values:
        if value not in allowed:
            raise BadRequestError(
                f"{name} must be one of {', '.join(allowed)} (comma-separated), got {value!r}."
            )
    return values


async def list_incidents(
    session: AsyncSession,
    project_id: UUID,
    *,
    status: str | None = None,
    severity: str | None = None,
    service: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> IncidentPage:
    check_limit(limit)
    statuses = _parse_choices(
        status, (IncidentStatus.OPEN, IncidentStatus.ACKNOWLEDGED, IncidentStatus.RESOLVED), "status"
    )
    severities = _parse_choices(severity, [s.value for s in Severity], "severity")
    before_id = decode_cursor(cursor, (UUID,))[0] if cursor else None
    rows = await IncidentRepository(session=session).list_page(
        project_id,
        statuses=statuses,
        severities=severities,
        service=service,
        before_id=before_id,
        limit=limit + 1,
    )
    items = [incident_out(row) for row in rows[:limit]]
    next_cursor = encode_cursor([str(items[-1].id)]) if len(rows) > limit else None
    return IncidentPage(items=items, next_cursor=next_cursor)


async def get_incident(session: AsyncSession, project_id: UUID, incident_id: UUID) -> IncidentDetail:
    repo = IncidentRepository(session=session)
    incident = await repo.get_for_project(incident_id, project_id)
    if incident is None:
        raise NotFoundError(f"Incident {incident_id} not found.")
    base = msgspec.structs.asdict(incident_out(incident))
    return IncidentDetail(
        **base,
        sample_logs=[
            signal_services.log_item(row) for row in await repo.sample_logs(incident, SAMPLE_SIGNALS)
        ],
        sample_spans=[
            signal_services.span_item(row) for row in await repo.sample_spans(incident, SAMPLE_SIGNALS)
        ],
    )


async def list_anomalies(
    session: AsyncSession,
    project_id: UUID,
    *,
    metric: str | None = None,
    service: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> AnomalyPage:
    check_limit(limit)
    since = as_utc(since, "since") if since is not None else None  # naive = UTC, as everywhere else
    until = as_utc(until, "until") if until is not None else None
    if since is not None and until is not None and since > until:
        raise BadRequestError("since must not be after until.")
    after: tuple[datetime, UUID] | None = None
    if cursor:
        ts, anomaly_id = decode_cursor(cursor, (datetime, str))
        try:
            after = (ts, UUID(anomaly_id))
        except ValueError:
            raise BadRequestError("cursor is not valid; use next_cursor from a previous page.") from None
    rows = await AnomalyRepository(session=session).list_page(
        project_id, metric=metric, service=service, since=since, until=until, after=after, limit=limit + 1
    )
    items = [anomaly_out(row) for row in rows[:limit]]
    next_cursor = encode_cursor([items[-1].ts.isoformat(), str(items[-1].id)]) if len(rows) > limit else None
    return AnomalyPage(items=items, next_cursor=next_cursor)


def anomaly_out(row: Anomaly) -> AnomalyOut:
    return AnomalyOut(
        id=row.id,
        metric=row.metric_name,
        service_name=row.service_name,
        labels=row.labels or {},
        ts=row.ts,
        value=row.value,
        expected=row.expected,
        score=row.score,
        method=row.method or "mad",
        detected_at=row.detected_at,
    )
