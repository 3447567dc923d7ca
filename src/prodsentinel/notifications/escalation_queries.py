"""The SQL of escalations (SPEC §13): the rules an event is matched against, its scheduled steps, and
the claim of due steps.

Steps live in ``escalation_steps`` (no timer in any process): the event that starts an escalation
writes all its steps in its own transaction, step 0 already ``sent`` together with its outbox items;
the escalation cron claims due ``pending`` steps ``FOR UPDATE SKIP LOCKED`` and, in one transaction,
writes their outbox items and marks them ``sent``. A cancellation is ``UPDATE ... WHERE status =
'pending'``: it waits for a claim in progress and then no longer matches a step that was sent, so a
step is sent once or cancelled, never both.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast
from uuid import UUID

from sqlalchemy import Table, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from prodsentinel.notifications import escalation_rules, routing
from prodsentinel.notifications.escalation_rules import EscalationPlan, EscalationRule
from prodsentinel.notifications.group_queries import bump_counters
from prodsentinel.notifications.models import Channel, EscalationPolicy, EscalationStep, OutboxItem
from prodsentinel.notifications.repositories import outbox_row

__all__ = ("EscalationQueries", "rule_of")

_CANCEL_SQL = """
UPDATE escalation_steps AS s
SET status = 'cancelled', finished_at = :now
FROM unnest(CAST(:projects AS uuid[]), CAST(:subjects AS text[])) AS c(project_id, subject)
WHERE s.project_id = c.project_id AND s.subject = c.subject AND s.status = 'pending'
"""


#: The table itself (a Core INSERT renders None as NULL; see ``apply``).
_STEPS_TABLE = cast("Table", EscalationStep.__table__)


def rule_of(policy: EscalationPolicy) -> EscalationRule:
    """A stored escalation as the matching rule (matchers compiled)."""
    return EscalationRule(
        id=policy.id,
        project_id=policy.project_id,
        name=policy.name,
        matchers=routing.compile_matchers(policy.matchers),
        steps=[(int(s["after_seconds"]), tuple(UUID(c) for c in s["channel_ids"])) for s in policy.steps],
        repeat=policy.repeat,
        repeat_after_seconds=policy.repeat_after_seconds,
    )


class EscalationQueries:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def rules_of(self, project_id: UUID) -> list[EscalationRule]:
        policies = await self.session.scalars(
            select(EscalationPolicy).where(EscalationPolicy.project_id == project_id)
        )
        return [rule_of(p) for p in policies]

    async def apply(self, plan: EscalationPlan) -> int:
        """Cancel the plan's subjects' pending steps, write its steps, send those already due
        (the number of outbox items written: the caller wakes the dispatcher)."""
        if plan.now is None:
            return 0
        now = plan.now
        if plan.cancel:
            cancel = sorted(plan.cancel, key=str)
            await self.session.execute(
                text(_CANCEL_SQL),
                {"now": now, "projects": [p for p, _ in cancel], "subjects": [s for _, s in cancel]},
            )
        written = await self.send_steps(plan.immediate, now) if plan.immediate else 0
        rows = plan.runs
        for start in range(0, len(rows), 2000):
            # Core insert of the table: the ORM's bulk INSERT leaves None values out, which splits
            # rows into one statement per key set.
            await self.session.execute(insert(_STEPS_TABLE), rows[start : start + 2000])
        return written

    async def send_steps(self, steps: Sequence[dict[str, Any]], now: datetime) -> int:
        """Outbox items of these steps (one per enabled channel named), counted per step index."""
        wanted = {c for s in steps for c in s["channel_ids"]}
        enabled = set(
            await self.session.scalars(
                select(Channel.id).where(Channel.id.in_(list(wanted)), Channel.enabled.is_(True))
            )
        )
        rows: list[dict[str, Any]] = []
        counts: Counter[tuple[UUID, str]] = Counter()
        for step in steps:
            payload = escalation_rules.step_payload(
                step["payload"],
                policy_id=step["policy_id"],
                name=step["policy_name"],
                step=step["step"],
                round_=step["round"],
            )
            event_id = escalation_rules.step_event_id(step["id"], step["step"], step["round"])
            payload["event_id"] = str(event_id)
            payload["occurred_at"] = now.isoformat()
            counts[(step["project_id"], str(step["step"]))] += 1
            for channel_id in step["channel_ids"]:
                if channel_id in enabled:
                    rows.append(
                        outbox_row(
                            project_id=step["project_id"],
                            channel_id=channel_id,
                            event_id=event_id,
                            event_type=step["event_type"],
                            severity=step["severity"],
                            payload=payload,
                            now=now,
                            subject=step["subject"],
                        )
                    )
        if rows:
            for start in range(0, len(rows), 2000):
                await self.session.execute(insert(OutboxItem), rows[start : start + 2000])
        await bump_counters(self.session, "escalation_step", dict(counts))
        return len(rows)

    async def claim_due(self, now: datetime, limit: int) -> list[dict[str, Any]]:
        """Due pending steps, locked for this transaction (``SKIP LOCKED``), with their policy's name."""
        result = await self.session.execute(
            select(EscalationStep, EscalationPolicy.name)
            .join(
                EscalationPolicy,
                (EscalationPolicy.project_id == EscalationStep.project_id)
                & (EscalationPolicy.id == EscalationStep.policy_id),
            )
            .where(EscalationStep.status == "pending", EscalationStep.due_at <= now)
            .order_by(EscalationStep.due_at)
            .limit(limit)
            .with_for_update(of=EscalationStep, skip_locked=True)
        )
        return [
            {
                "project_id": step.project_id,
                "id": step.id,
                "policy_id": step.policy_id,
                "policy_name": name,
                "subject": step.subject,
                "step": step.step,
                "round": step.round,
                "channel_ids": list(step.channel_ids),
                "event_type": step.event_type,
                "severity": step.severity,
                "payload": step.payload,
                "schedule": step.schedule,
            }
            for step, name in result.all()
        ]

    async def advance(self, runs: Sequence[dict[str, Any]], now: datetime) -> None:
        """Runs whose current step was sent: on to their next step, or ``sent`` (bulk by key)."""
        changes = [escalation_rules.advance(run, now) for run in runs]
        for keys in ({"status", "finished_at"}, {"step", "round", "due_at", "channel_ids", "schedule"}):
            batch = [c for c in changes if keys <= c.keys()]
            if batch:
                await self.session.execute(update(EscalationStep), batch)
