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
    "advance",
    "matching",
    "schedule_entry",
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


def step_event_id(run_id: UUID, step: int, round_: int) -> UUID:
    """The event id of one step notification of one run (stable across retries and replays)."""
    return uuid.uuid5(_NAMESPACE, f"{run_id}:{round_}:{step}")


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
    """What one write does to escalations: subjects whose pending steps end, runs to schedule.

    One ``escalation_steps`` row per started escalation (an escalation *run*): its next step
    (``step``, ``round``, ``due_at``, ``channel_ids``) and the ``schedule`` of the ones after it. The
    steps due at once (step 0 of round 0) are in ``immediate`` and go out in the event's transaction.
    """

    #: (project_id, subject) whose pending steps are cancelled (before ``runs`` are written).
    cancel: set[tuple[UUID, str]] = field(default_factory=set)
    #: per (project_id, subject): (rows to insert, steps to send now)
    by_subject: dict[tuple[UUID, str], tuple[list[dict[str, Any]], list[dict[str, Any]]]] = field(
        default_factory=dict
    )
    now: datetime | None = None

    @property
    def runs(self) -> list[dict[str, Any]]:
        return [row for rows, _ in self.by_subject.values() for row in rows]

    @property
    def immediate(self) -> list[dict[str, Any]]:
        return [step for _, steps in self.by_subject.values() for step in steps]

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
        # A later event of the same subject in this write wins over runs planned earlier in it.
        rows: list[dict[str, Any]] = []
        immediate: list[dict[str, Any]] = []
        self.by_subject[(project_id, subject)] = (rows, immediate)
        if event_type not in START_EVENTS:
            return
        for rule in matched:
            run_id = uuid.uuid4()
            common = {
                "project_id": project_id,
                "id": run_id,
                "policy_id": rule.id,
                "subject": subject,
                "event_type": event_type,
                "severity": severity,
                "payload": body,
            }
            timeline = [
                (index, round_, now + timedelta(seconds=round_ * rule.period + after), channels)
                for round_ in range(rule.repeat + 1)
                for index, (after, channels) in enumerate(rule.steps)
            ]
            later = [t for t in timeline if t[2] > now]
            for index, round_, _, channels in (t for t in timeline if t[2] <= now):
                immediate.append(
                    {
                        **common,
                        "policy_name": rule.name,
                        "step": index,
                        "round": round_,
                        "channel_ids": list(channels),
                    }
                )
            if not later:
                continue
            (index, round_, due_at, channels), rest = later[0], later[1:]
            rows.append(
                {
                    **common,
                    "step": index,
                    "round": round_,
                    "due_at": due_at,
                    "channel_ids": list(channels),
                    "schedule": [schedule_entry(*entry) for entry in rest],
                    "status": "pending",
                    "created_at": now,
                    "finished_at": None,
                }
            )


def schedule_entry(step: int, round_: int, due_at: datetime, channels: Sequence[UUID]) -> dict[str, Any]:
    """A later step of a run as stored in its ``schedule`` (JSON)."""
    return {
        "step": step,
        "round": round_,
        "due_at": due_at.isoformat(),
        "channel_ids": [str(c) for c in channels],
    }


def advance(run: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The stored change of a run whose current step was just sent: its next step, or ``sent``."""
    schedule = list(run["schedule"] or ())
    if not schedule:
        return {"project_id": run["project_id"], "id": run["id"], "status": "sent", "finished_at": now}
    following = schedule.pop(0)
    return {
        "project_id": run["project_id"],
        "id": run["id"],
        "step": following["step"],
        "round": following["round"],
        "due_at": datetime.fromisoformat(following["due_at"]),
        "channel_ids": [UUID(c) for c in following["channel_ids"]],
        "schedule": schedule,
    }
