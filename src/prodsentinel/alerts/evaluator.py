"""The evaluation pass (SPEC §7): load -> plan -> transitions -> notify, under one lease.

One pass over every enabled policy in scope, in one transaction:

1. load: the enabled policies, their values (one SQL statement per policy kind,
   ``alerts.value_queries``; set-based, no per-signal Python), the stored instances, the silences
   in force and the inhibit rules;
2. plan (pure, ``alerts.plan.plan_tick``): the state machine of ``alerts.evaluation`` over every
   instance, giving the rows, audit rows, outbox events and live events of the tick;
3. transitions (:func:`write_transitions`): new and changed instances and one audit row per
   transition, in bulk;
4. notify (:func:`notify`): one outbox event per notifying transition of an alert no silence or inhibit
   rule mutes
   (``notifications.outbox.add_event``, which wakes the dispatcher after the commit) and the live
   events, published after the commit (``lib.events.publish_after_commit``).

Nothing runs after the commit here: what must follow it is registered on the session
(``lib.after_commit``) and ``session_scope`` runs it. One evaluator at a time across all processes:
the pass runs under a transaction-scoped advisory lock (``lib.jobs.try_lease``); a second evaluator
that finds it taken returns ``skipped`` at once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

import structlog
from msgspec import to_builtins
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.alerts.evaluation import AlertState
from prodsentinel.alerts.inhibition import InhibitRules
from prodsentinel.alerts.models import Alert, AlertPolicy
from prodsentinel.alerts.plan import Outcome, plan_tick
from prodsentinel.alerts.repositories import AlertRepository, InhibitRuleRepository, PolicyRepository
from prodsentinel.alerts.schemas import EvaluationSummary
from prodsentinel.alerts.silences import ActiveSilences
from prodsentinel.alerts.value_queries import ValueQueries
from prodsentinel.audit import services as audit_services
from prodsentinel.audit.services import AuditEntry
from prodsentinel.lib import events, jobs
from prodsentinel.lib.database import session_scope
from prodsentinel.lib.time import as_utc, utcnow
from prodsentinel.notifications import outbox as notification_services

__all__ = ("EVALUATION_LEASE", "SCHEDULER_ACTOR", "evaluate", "notify", "run_evaluation", "write_transitions")

logger = structlog.get_logger("prodsentinel.alerts")

SCHEDULER_ACTOR = "system:scheduler"
EVALUATION_LEASE = "alerts:evaluate"


async def run_evaluation(
    session_maker: async_sessionmaker[AsyncSession],
    *,
    interval_seconds: int,
    now: datetime | None = None,
    actor: str = SCHEDULER_ACTOR,
    project_id: UUID | None = None,
    manual: bool = False,
) -> EvaluationSummary:
    """The evaluation unit of work, shared by the cron job and ``POST /alerts/evaluate``.

    It owns its transaction (unlike most services) because the lease is the transaction's advisory
    lock. ``manual`` records the evaluation itself in the project's audit trail.
    """
    started = time.perf_counter()
    now = as_utc(now) if now is not None else utcnow()
    async with session_scope(session_maker) as session:
        if not await jobs.try_lease(session, EVALUATION_LEASE):
            summary = EvaluationSummary(skipped=True, duration_ms=_elapsed_ms(started), evaluated_at=now)
            logger.info("alert_evaluation_skipped", reason="another evaluator holds the lease")
        else:
            outcome = await evaluate(
                session, now=now, actor=actor, interval_seconds=interval_seconds, project_id=project_id
            )
            summary = EvaluationSummary(
                skipped=False,
                evaluated=outcome.evaluated,
                transitions=outcome.transitions,
                fired=outcome.fired,
                resolved=outcome.resolved,
                notified=outcome.notified,
                duration_ms=_elapsed_ms(started),
                evaluated_at=now,
            )
        if manual and project_id is not None:
            await audit_services.record(session, _evaluation_audit(project_id, actor, summary))
    summary.duration_ms = _elapsed_ms(started)
    if summary.transitions:
        logger.info(
            "alert_evaluation",
            evaluated=summary.evaluated,
            transitions=summary.transitions,
            duration_ms=round(summary.duration_ms, 1),
        )
    return summary


async def evaluate(
    session: AsyncSession,
    *,
    now: datetime,
    actor: str,
    interval_seconds: int,
    project_id: UUID | None = None,
) -> Outcome:
    """One evaluation pass inside the caller's transaction (the caller holds the lease).

    ``project_id`` limits the pass to one project (manual evaluation by a project's key).
    """
    value_queries = ValueQueries(session)
    await value_queries.disable_jit()
    policy_repository = PolicyRepository(session=session)
    policies = await policy_repository.enabled(project_id)
    values = await value_queries.values(policies, now)
    existing = await AlertRepository(session=session).for_evaluation([p.id for p in policies], project_id)
    scope = None if project_id is None else [project_id]
    outcome = plan_tick(
        policies=policies,
        known=await _known_policies(policy_repository, policies, existing),
        values=values,
        existing=existing,
        silences=await ActiveSilences.load(session, scope, now),
        now=now,
        interval_seconds=interval_seconds,
        actor=actor,
        inhibit_rules=InhibitRules.of(await InhibitRuleRepository(session=session).of_projects(scope)),
    )
    await write_transitions(session, outcome)
    await notify(session, outcome)
    return outcome


async def _known_policies(
    repository: PolicyRepository, policies: Sequence[AlertPolicy], existing: Sequence[Alert]
) -> dict[UUID, AlertPolicy]:
    """The evaluated policies plus the (disabled) policies of active instances left over."""
    known = {policy.id: policy for policy in policies}
    missing = {
        (alert.project_id, alert.policy_id)
        for alert in existing
        if alert.state != AlertState.INACTIVE.value and alert.policy_id not in known
    }
    if missing:
        known.update((policy.id, policy) for policy in await repository.by_keys(missing))
    return known


async def write_transitions(session: AsyncSession, outcome: Outcome) -> None:
    """The instance rows (bulk insert and update) and the audit rows of the tick."""
    alerts = AlertRepository(session=session)
    await alerts.insert_rows(outcome.inserts)
    await alerts.update_rows(outcome.updates)
    await audit_services.record(session, *outcome.audit)


async def notify(session: AsyncSession, outcome: Outcome) -> None:
    """Write the outbox events and register the live events to publish after the commit.

    ``add_event`` registers the dispatcher's wake-up on the session itself (``lib.after_commit``).
    """
    # One batch: routing state (channels, escalations) is read once and rows are written set-based.
    await notification_services.add_events(
        session,
        [
            notification_services.OutboxEvent(
                project_id=n.project_id,
                event_type=n.event_type,
                severity=n.severity,
                payload=n.payload,
                event_id=n.event_id,
            )
            for n in outcome.notifications
        ],
    )
    for live in outcome.live_events:
        events.publish_after_commit(session, live.event_type, live.project_id, live.data)


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _evaluation_audit(project_id: UUID, actor: str, summary: EvaluationSummary) -> AuditEntry:
    return AuditEntry(
        project_id=project_id,
        actor=actor,
        action="alerts.evaluate",
        subject_type="evaluation",
        subject_id=None,
        details=to_builtins(summary),
    )
