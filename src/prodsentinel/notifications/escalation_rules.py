"""Escalation's rules (pure, SPEC §13): which escalations an event matches, and the steps it schedules.

An escalation ``{"name", "matchers", "steps": [{"after_seconds", "channel_ids"}], "repeat",
"repeat_after_seconds"}`` applies to the alert and incident events whose labels (``routing.event_labels``)
satisfy all its matchers (none: every alert and incident):

- a firing alert (``ALERT_FIRING``) or an opened/reopened incident starts it: step ``k`` of round ``r``
  is due at ``start + r * period + steps[k].after_seconds`` with ``period`` = the last step's
  ``after_seconds`` + ``repeat_after_seconds``, for rounds ``0..repeat``. Step 0 (``after_seconds`` 0)
  of round 0 goes out in the event's own transaction. A new start of the same alert or incident
  (it fired again) first cancels what was left of the previous one, so the steps restart;
- an acknowledgement or a resolution of that alert or incident cancels its steps not yet sent;
- the channels named in its steps get the events it matches only through the steps.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final
from uuid import UUID

from prodsentinel.alerts.matchers import Matcher

__all__ = (
    "START_EVENTS",
    "STOP_EVENTS",
    "EscalationPlan",
    "EscalationRule",
    "matching",
    "step_channels",
    "step_event_id",
    "step_payload",
)

START_EVENTS: Final = frozenset({"ALERT_FIRING", "INCIDENT_OPENED", "INCIDENT_REOPENED"})
STOP_EVENTS: Final = frozenset(
    {"ALERT_RESOLVED", "ALERT_ACKNOWLEDGED", "INCIDENT_ACKNOWLEDGED", "INCIDENT_RESOLVED"}
)
_NAMESPACE: Final = uuid.UUID("a3c4b1e2-7d55-4c1b-8f0e-5e2d9b7c6a10")


@dataclass(frozen=True, slots=True)
class EscalationRule:
    id: UUID
    project_id: UUID
    name: str
    matchers: Sequence[Matcher]
    #: ``(after_seconds, channel_ids)`` per step, ``after_seconds`` ascending, the first 0.
    steps: Sequence[tuple[int, tuple[UUID, ...]]]
    repeat: int
    repeat_after_seconds: int

    @property
    def period(self) -> int:
        return self.steps[-1][0] + self.repeat_after_seconds


def matching(
    rules: Sequence[EscalationRule], event_type: str, labels: Mapping[str, str]
) -> list[EscalationRule]:
    """The escalations of an alert or incident event (none for other events)."""
    if not rules or not event_type.startswith(("ALERT_", "INCIDENT_")):
        return []
    return [rule for rule in rules if all(m.matches(labels) for m in rule.matchers)]


def step_channels(rules: Sequence[EscalationRule]) -> set[UUID]:
    """The channels these escalations reach only through their steps."""
    return {channel for rule in rules for _, channels in rule.steps for channel in channels}


def step_event_id(step_id: UUID) -> UUID:
    """The event id of one step notification (stable across retries and replays)."""
    return uuid.uuid5(_NAMESPACE, str(step_id))


def step_payload(
    body: Mapping[str, Any], *, policy_id: UUID, name: str, step: int, round_: int
) -> dict[str, Any]:
    """The started event's body, naming the escalation step it is sent for."""
    return {
        **body,
        "escalation": {"id": str(policy_id), "name": name, "step": step, "round": round_},
    }


@dataclass
class EscalationPlan:
    """What one write does to escalations: subjects whose pending steps end, steps to schedule."""

    #: (project_id, subject) whose pending steps are cancelled (before ``steps`` are written).
    cancel: set[tuple[UUID, str]] = field(default_factory=set)
    #: escalation_steps rows; ``due_at`` <= ``now`` ones are sent in the same transaction.
    steps: list[dict[str, Any]] = field(default_factory=list)
    now: datetime | None = None

    def add(
        self,
        project_id: UUID,
        event_type: str,
        severity: str,
        subject: str | None,
        body: dict[str, Any],
        matched: Sequence[EscalationRule],
        now: datetime,
    ) -> None:
        if subject is None or (event_type not in START_EVENTS and event_type not in STOP_EVENTS):
            return
        self.now = now
        self.cancel.add((project_id, subject))
        # A later event of the same subject in this write wins over steps planned earlier in it.
        self.steps = [
            s for s in self.steps if not (s["project_id"] == project_id and s["subject"] == subject)
        ]
        if event_type not in START_EVENTS:
            return
        for rule in matched:
            for round_ in range(rule.repeat + 1):
                start = now + timedelta(seconds=round_ * rule.period)
                for index, (after, channels) in enumerate(rule.steps):
                    self.steps.append(
                        {
                            "project_id": project_id,
                            "id": uuid.uuid4(),
                            "policy_id": rule.id,
                            "policy_name": rule.name,
                            "subject": subject,
                            "step": index,
                            "round": round_,
                            "due_at": start + timedelta(seconds=after),
                            "status": "pending",
                            "channel_ids": list(channels),
                            "event_type": event_type,
                            "severity": severity,
                            "payload": body,
                            "created_at": now,
                        }
                    )
