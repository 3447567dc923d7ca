"""The grouping pass: fold every new error signal into incidents (SPEC §6), batch by batch.

``run_grouping`` owns its units of work: one transaction per batch of up to ``GROUP_BATCH_SIZE`` error
rows per source (logs, spans), so a crash loses at most the batch in flight, whose occurrences, incident
upserts, transitions and high-water mark roll back together and are redone exactly once by the next run.
Within a batch (:func:`group_batch`):

1. read the new error rows above the mark, grouped by (service, text), and fingerprint each text once
   (``fingerprint.py``);
2. record the occurrences and aggregate the new ones per incident key (``GroupingQueries``);
3. :func:`fold_incidents`: compute each incident's severity (``severity.py``) under row locks, upsert,
   and derive the transitions (opened, escalated, reopened);
4. correlate the batch's incidents into problems (``problems.py``, SPEC §14) in the same transaction;
5. move the high-water mark, and record the transitions (``transitions.py``: outbox, audit, and the
   SSE events and analysis jobs that run once the batch commits) and the problems' transitions.

The anomaly pass (``anomaly_detection.py``) folds sustained anomalies through the same
:func:`fold_incidents`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from uuid_utils.compat import uuid7

from prodsentinel.incidents.fingerprint import fingerprint, incident_title, message_template
from prodsentinel.incidents.grouping_queries import SOURCES, FoldRow, GroupingQueries, SignalSource
from prodsentinel.incidents.models import IncidentStatus
from prodsentinel.incidents.problem_queries import ProblemQueries
from prodsentinel.incidents.problems import (
    DEFAULT_WINDOW_SECONDS,
    ProblemTransition,
    correlate_batch,
    record_problem_transitions,
)
from prodsentinel.incidents.severity import (
    DEFAULT_RULES,
    SPAN_ERROR_BASE,
    Severity,
    SeverityRules,
    base_for_log_level,
    escalate,
    is_escalation,
    severity_for,
)
from prodsentinel.incidents.transitions import SYSTEM_ACTOR, Transition, incident_out, record_transitions
from prodsentinel.lib.database import session_scope
from prodsentinel.lib.time import utcnow
from prodsentinel.lib.vocabulary import LEVEL_NAMES, LEVELS

__all__ = (
    "GROUP_BATCH_SIZE",
    "BatchOutcome",
    "GroupingResult",
    "IncidentFold",
    "fold_incidents",
    "group_batch",
    "run_grouping",
)

GROUP_BATCH_SIZE = 5000
#: Batches per source in one job run; the cron (every 10 s) picks up whatever is left.
GROUP_MAX_BATCHES = 40
GROUP_TIME_BUDGET_SECONDS = 60.0

# Templates repeat heavily (one message shape, many ids): cache the regex work per distinct text.
_template = functools.lru_cache(maxsize=65536)(message_template)


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
    problem_transitions: list[ProblemTransition] = field(default_factory=list)


@dataclass(slots=True)
class GroupingResult:
    signals: int = 0
    batches: int = 0
    transitions: list[Transition] = field(default_factory=list)
    problem_transitions: list[ProblemTransition] = field(default_factory=list)


async def run_grouping(
    session_maker: async_sessionmaker[AsyncSession],
    *,
    now: datetime | None = None,
    batch_size: int = GROUP_BATCH_SIZE,
    max_batches: int = GROUP_MAX_BATCHES,
    rules: SeverityRules = DEFAULT_RULES,
    problem_window_seconds: int = DEFAULT_WINDOW_SECONDS,
    correlate: bool = True,
) -> GroupingResult:
    """Fold every new error signal into incidents: one transaction per batch (see the module docstring).

    A crash loses at most the batch in flight, whose occurrences, upserts and high-water mark roll back
    together, so the next run redoes it exactly once.
    """
    result = GroupingResult()
    started = time.monotonic()
    # Spans first: failing client spans carry the dependencies (problems.py), so a cascade's problem
    # opens knowing its root dependency instead of learning it one batch later.
    for source in (SOURCES["span"], SOURCES["log"]):
        for _ in range(max_batches):
            async with session_scope(session_maker) as session:
                outcome = await group_batch(
                    session,
                    source,
                    batch_size=batch_size,
                    now=now,
                    rules=rules,
                    problem_window_seconds=problem_window_seconds,
                    correlate=correlate,
                )
            result.signals += outcome.signals
            result.batches += 1
            result.transitions.extend(outcome.transitions)
            result.problem_transitions.extend(outcome.problem_transitions)
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
    problem_window_seconds: int = DEFAULT_WINDOW_SECONDS,
    correlate: bool = True,
) -> BatchOutcome:
    """Group the next batch of ``source``'s new error rows (the caller commits).

    ``correlate=False`` skips the correlation into problems (only the benchmark's baseline does).

    High-water mark (see ``GroupingCursor``): rows are scanned from ``high_water_id`` and deduplicated
    by ``incident_occurrences``; the mark itself only moves to a checkpoint whose possibly in-flight
    transactions have all ended, so a row committed late with a smaller id is never skipped.
    """
    now = now or utcnow()
    queries = GroupingQueries(session)
    await queries.lock_grouping(source.name)
    # Before any row lock: both sources' batches correlate into the same problems (problems.py).
    await ProblemQueries(session).lock_correlation()
    # Read before this transaction writes anything (a write assigns it an xid of its own).
    xmin = await queries.snapshot_xmin()
    cursor = await queries.get_cursor(source.table)
    visible_max_id = await queries.max_signal_id(source)
    settled = (
        cursor.checkpoint_id is not None
        and cursor.checkpoint_xmax is not None
        and xmin >= cursor.checkpoint_xmax
    )
    bound = max(cursor.high_water_id, cursor.checkpoint_id or 0) if settled else cursor.high_water_id

    groups = await queries.new_error_groups(source, after_id=cursor.high_water_id, limit=batch_size)
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
        folds = await queries.record_occurrences(
            source, ids=ids, fingerprints=fingerprints, window_seconds=rules.window_seconds
        )
    transitions = await fold_incidents(
        session,
        [_fold_from_signals(row, meta[row.fingerprint], source.name) for row in folds],
        now=now,
        rules=rules,
    )
    problem_transitions = (
        await correlate_batch(
            session,
            source,
            ids,
            fingerprints,
            [(f.project_id, f.fingerprint, f.first_seen, f.last_seen) for f in folds],
            now=now,
            window_seconds=problem_window_seconds,
        )
        if correlate
        else []
    )

    high_water = max(cursor.high_water_id, min(bound, max(ids)) if full else bound)
    if cursor.checkpoint_id is None or (settled and high_water >= cursor.checkpoint_id):
        # Every id <= visible_max_id was allocated before now; transactions that may still hold one
        # have an xid below this snapshot's xmax, so once xmin passes it they have all ended.
        checkpoint_id: int | None = visible_max_id
        checkpoint_xmax: int | None = await queries.snapshot_xmax()
    else:
        checkpoint_id, checkpoint_xmax = cursor.checkpoint_id, cursor.checkpoint_xmax
    await queries.save_cursor(
        source.table, high_water_id=high_water, checkpoint_id=checkpoint_id, checkpoint_xmax=checkpoint_xmax
    )
    await record_transitions(session, transitions, actor=SYSTEM_ACTOR, now=now)
    await record_problem_transitions(session, problem_transitions, actor=SYSTEM_ACTOR, now=now)
    return BatchOutcome(
        signals=len(ids),
        full=full,
        high_water_id=high_water,
        transitions=transitions,
        problem_transitions=problem_transitions,
    )


def _fold_from_signals(row: FoldRow, meta: tuple[str, str], source: str) -> IncidentFold:
    service_name, template = meta
    if source == "span":
        base = SPAN_ERROR_BASE
    else:
        base = base_for_log_level(LEVEL_NAMES.get(row.max_level, "ERROR")) or Severity.MEDIUM
        if row.max_level >= LEVELS["CRITICAL"]:
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
    queries = GroupingQueries(session)
    existing = await queries.lock_existing([(f.project_id, f.fingerprint) for f in folds])
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
    for row in await queries.upsert_incidents(rows, now=now):
        previous = existing.get((row["project_id"], row["fingerprint"]))
        out = incident_out(row)
        if previous is None:
            transitions.append(Transition("opened", row["project_id"], out))
        elif previous.status == IncidentStatus.RESOLVED:
            transitions.append(Transition("reopened", row["project_id"], out, previous.severity))
        elif is_escalation(Severity(previous.severity), Severity(out.severity)):
            transitions.append(Transition("escalated", row["project_id"], out, previous.severity))
    return transitions
