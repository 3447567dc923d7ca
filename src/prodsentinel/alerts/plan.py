"""One evaluation tick, planned (pure, no I/O): what to write, audit, notify and announce live.

The evaluator (``alerts.evaluator``) loads what a tick needs - the enabled policies, their values
(``alerts.value_queries``), the stored instances and the silences in force - and hands it to
:func:`plan_tick`; it then writes the :class:`Outcome` (the transitions) and announces it (notify).
Keeping the decisions here, apart from the SQL, makes them readable as rules:

- one instance per (policy, label set); its labels are the policy's plus ``alertname``, ``severity``
  and ``service`` (:func:`alert_labels`); inactive is the absence of a row;
- :func:`prodsentinel.alerts.evaluation.next_state` moves each instance; an instance left over (its
  policy disabled or no longer producing its label set) is fed a false condition, so it resolves and
  settles through the same state machine;
- a new activation (inactive/resolved -> pending/firing) starts a new cycle: own clocks, no ack;
- every transition is audited; fired/resolved ones are also notified (one outbox event) unless a
  silence in force matches the labels or (for a firing one) an inhibit rule mutes it given the alerts
  firing at the end of the tick (``alerts.inhibition``), and announced live
  (``alert_firing``/``alert_resolved``), muted or not; the resolution of an alert whose ALERT_FIRING
  an inhibit rule held back is not notified either (receivers never heard it fire);
- a firing alert whose ALERT_FIRING a silence or an inhibit rule suppressed is announced once neither
  holds it any more, as in Alertmanager (:func:`_announce_if_unmuted`).

Deleting a policy resolves its firing alerts with the same notification and audit shapes
(:func:`plan_policy_deletion`).
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

from sqlalchemy import inspect as sa_inspect
from uuid_utils.compat import uuid7

from prodsentinel.alerts.evaluation import AlertState, Transition, compare, next_state
from prodsentinel.alerts.inhibition import Inhibitions, InhibitRules
from prodsentinel.alerts.models import Alert, AlertPolicy
from prodsentinel.audit.services import AuditEntry
from prodsentinel.lib.vocabulary import stream_type

__all__ = (
    "LiveEvent",
    "Notification",
    "Outcome",
    "Silences",
    "alert_labels",
    "labels_key",
    "plan_policy_deletion",
    "plan_tick",
)

ACTIVE = (AlertState.PENDING, AlertState.FIRING)


class Silences(Protocol):
    """What the plan asks of the silences in force (``alerts.silences.ActiveSilences``)."""

    def silencing(self, project_id: UUID, labels: Mapping[str, str]) -> UUID | None: ...


@dataclass(frozen=True, slots=True)
class Notification:
    """One outbox event to write (``notifications.outbox.add_event``)."""

    project_id: UUID
    event_type: str
    severity: str
    payload: dict[str, Any]
    event_id: UUID


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """One SSE event to publish once the transaction commits (``lib.events``)."""

    event_type: str
    project_id: UUID
    data: dict[str, Any]


@dataclass
class Outcome:
    """Everything one tick (or one policy deletion) writes and announces, in write order."""

    evaluated: int = 0
    transitions: int = 0
    fired: int = 0
    resolved: int = 0
    inserts: list[dict[str, Any]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)
    audit: list[AuditEntry] = field(default_factory=list)
    notifications: list[Notification] = field(default_factory=list)
    live_events: list[LiveEvent] = field(default_factory=list)

    @property
    def notified(self) -> int:
        return len(self.notifications)


def alert_labels(policy: AlertPolicy) -> dict[str, str]:
    """SPEC §7: the policy's labels plus alertname, severity and (when named) service."""
    labels = dict(policy.labels or {})
    labels["alertname"] = policy.name
    labels["severity"] = policy.severity
    service = (policy.params or {}).get("service")
    if service:
        labels["service"] = str(service)
    return labels


def labels_key(labels: Mapping[str, str]) -> str:
    """Canonical text of a label set: the identity of an alert instance within its policy."""
    return json.dumps(dict(labels), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class _Instance:
    """One alert instance to evaluate: its policy, labels, stored row (None: never active) and value."""

    policy: AlertPolicy
    labels: dict[str, str]
    key: str
    alert: Alert | None
    value: float | None
    condition: bool


@dataclass(frozen=True, slots=True)
class _Change:
    """A changed (or still firing) instance: its new row, its policy and the state it came from."""

    row: dict[str, Any]
    policy: AlertPolicy
    from_state: str


def plan_tick(
    *,
    policies: Sequence[AlertPolicy],
    known: Mapping[UUID, AlertPolicy],
    values: Mapping[UUID, float | None],
    existing: Sequence[Alert],
    silences: Silences,
    now: datetime,
    interval_seconds: int,
    actor: str,
    inhibit_rules: InhibitRules | None = None,
) -> Outcome:
    """Plan one tick: ``policies`` are the evaluated (enabled) ones, ``known`` every policy an
    ``existing`` instance belongs to, ``values`` the policies' values at ``now``.

    Inhibition is decided after every instance has stepped: the sources are the alerts firing at the
    end of the tick, so a source and its target that fire in the same tick already mute."""
    outcome = Outcome(evaluated=len(policies))
    notify: list[_Change] = []
    unannounced: list[_Change] = []
    for instance in _instances(policies, known, values, existing):
        change = _step(instance, now=now, interval_seconds=interval_seconds, outcome=outcome)
        if change is None:
            continue
        transition, item = change
        if transition.changed:
            outcome.transitions += 1
            if transition.fired or transition.resolved:
                notify.append(item)
            else:
                outcome.audit.append(_transition_audit(item.row, item.policy, item.from_state, actor, now))
        elif transition.new_state is AlertState.FIRING and (
            item.row["silenced_by"] is not None or item.row["inhibited_by"] is not None
        ):
            unannounced.append(item)
    inhibitions = _inhibitions(inhibit_rules, outcome)
    for item in notify:
        _notify(item, silences, inhibitions, actor, now, outcome)
    for item in unannounced:
        _announce_if_unmuted(item, silences, inhibitions, actor, now, outcome)
    return outcome


def _inhibitions(rules: InhibitRules | None, outcome: Outcome) -> Inhibitions:
    """The rules against the alerts firing at the end of the tick (every active instance in scope has a
    row in the outcome, so these are all of them)."""
    if not rules:
        return Inhibitions()
    firing = AlertState.FIRING.value
    return rules.against(
        (row["project_id"], row["labels"])
        for row in (*outcome.inserts, *outcome.updates)
        if row["state"] == firing
    )


def _instances(
    policies: Sequence[AlertPolicy],
    known: Mapping[UUID, AlertPolicy],
    values: Mapping[UUID, float | None],
    existing: Sequence[Alert],
) -> list[_Instance]:
    stored = {(alert.policy_id, alert.labels_key): alert for alert in existing}
    instances = []
    for policy in policies:
        labels = alert_labels(policy)
        key = labels_key(labels)
        value = values.get(policy.id)
        condition = value is not None and compare(value, policy.operator, policy.threshold)
        instances.append(_Instance(policy, labels, key, stored.pop((policy.id, key), None), value, condition))
    # Left over: instances of disabled policies or of a label set the policy no longer produces;
    # their condition is false, so they resolve (and settle) through the normal state machine.
    for stale in stored.values():
        if stale.state != AlertState.INACTIVE.value:
            policy = known[stale.policy_id]
            instances.append(_Instance(policy, stale.labels, stale.labels_key, stale, stale.value, False))
    return instances


def _step(
    instance: _Instance, *, now: datetime, interval_seconds: int, outcome: Outcome
) -> tuple[Transition, _Change] | None:
    """Apply the state machine to one instance and queue its row; None when nothing is recorded."""
    policy, alert = instance.policy, instance.alert
    state = AlertState(alert.state) if alert is not None else AlertState.INACTIVE
    transition = next_state(
        state=state,
        condition_true=instance.condition,
        pending_since=alert.started_at if alert is not None else None,
        now=now,
        for_seconds=policy.for_seconds,
        resolved_at=alert.resolved_at if alert is not None else None,
        interval_seconds=interval_seconds,
    )
    if alert is None and not transition.changed:
        return None  # never active: no instance row (inactive is the absence of a row)
    if alert is not None and not transition.changed and state not in ACTIVE:
        return None  # a settled instance: nothing to record
    row = _new_row(instance, now) if alert is None else _alert_row(alert)
    row.update(state=transition.new_state.value, value=instance.value, last_evaluated_at=now, updated_at=now)
    if transition.changed and transition.new_state in ACTIVE and state not in ACTIVE:
        # A new activation: a new cycle with its own clocks and no ack from the last one.
        row.update(
            started_at=now, fired_at=None, resolved_at=None, acked_by=None, acked_at=None, inhibited_by=None
        )
    if transition.fired:
        row["fired_at"] = now
        outcome.fired += 1
    if transition.resolved:
        row["resolved_at"] = now
        outcome.resolved += 1
    (outcome.inserts if alert is None else outcome.updates).append(row)
    return transition, _Change(row, policy, state.value)


def _new_row(instance: _Instance, now: datetime) -> dict[str, Any]:
    policy = instance.policy
    return {
        "id": uuid7(),
        "project_id": policy.project_id,
        "policy_id": policy.id,
        "labels": instance.labels,
        "labels_key": instance.key,
        "severity": policy.severity,
        "started_at": None,
        "fired_at": None,
        "resolved_at": None,
        "acked_by": None,
        "acked_at": None,
        "silenced_by": None,
        "inhibited_by": None,
        "created_at": now,
    }


def _alert_row(alert: Alert) -> dict[str, Any]:
    return {attr.key: getattr(alert, attr.key) for attr in sa_inspect(Alert).column_attrs}


def _notify(
    item: _Change,
    silences: Silences,
    inhibitions: Inhibitions,
    actor: str,
    now: datetime,
    outcome: Outcome,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """A fired/resolved transition: one outbox event unless muted, its audit row, one live event.

    Muted: a silence in force matches, or (firing) an inhibit rule mutes the alert now, or (resolved)
    an inhibit rule held back its ALERT_FIRING and it was never announced (``inhibited_by`` still set).
    """
    row, policy = item.row, item.policy
    silence_id = silences.silencing(row["project_id"], row["labels"])
    firing = row["state"] == AlertState.FIRING.value
    rule_id = inhibitions.inhibiting(row["project_id"], row["labels"]) if firing else row["inhibited_by"]
    row["silenced_by"], row["inhibited_by"] = silence_id, rule_id
    event_type = "ALERT_FIRING" if firing else "ALERT_RESOLVED"
    payload = {**_payload(row, policy), **(extra or {})}
    event_id = None
    if silence_id is None and rule_id is None:
        event_id = uuid.uuid4()
        outcome.notifications.append(
            Notification(row["project_id"], event_type, row["severity"], payload, event_id)
        )
    outcome.audit.append(
        _transition_audit(row, policy, item.from_state, actor, now, event_id, silence_id, rule_id)
    )
    live = {
        **payload,
        "severity": row["severity"],
        "silenced_by": _str_or_none(silence_id),
        "inhibited_by": _str_or_none(rule_id),
    }
    outcome.live_events.append(LiveEvent(stream_type(event_type), row["project_id"], live))


def _announce_if_unmuted(
    item: _Change, silences: Silences, inhibitions: Inhibitions, actor: str, now: datetime, outcome: Outcome
) -> None:
    """Announce a still-firing alert whose ALERT_FIRING a silence or an inhibit rule suppressed, once
    neither holds it any more.

    As in Alertmanager, receivers hear of an alert that outlived its silence or its inhibiting source.
    ``silenced_by``/``inhibited_by`` on the row name what suppressed the last notification; clearing
    them marks the alert announced, so this writes one outbox event per suppressed firing. An alert
    that a newer silence or another rule holds stays quiet, now under that id. Not a transition: no
    second live event.
    """
    row, policy = item.row, item.policy
    silence_id = silences.silencing(row["project_id"], row["labels"])
    rule_id = inhibitions.inhibiting(row["project_id"], row["labels"])
    if silence_id is not None or rule_id is not None:
        row["silenced_by"], row["inhibited_by"] = silence_id, rule_id
        return
    previously_silenced_by, previously_inhibited_by = row["silenced_by"], row["inhibited_by"]
    row["silenced_by"], row["inhibited_by"] = None, None
    event_id = uuid.uuid4()
    outcome.notifications.append(
        Notification(row["project_id"], "ALERT_FIRING", row["severity"], _payload(row, policy), event_id)
    )
    entry = _transition_audit(row, policy, AlertState.FIRING.value, actor, now, event_id)
    details = dict(entry.details)
    if previously_silenced_by is not None:
        details["notification"] = "announced: the silence that suppressed it has ended"
        details["previously_silenced_by"] = str(previously_silenced_by)
    if previously_inhibited_by is not None:
        details["notification"] = "announced: the inhibit rule that suppressed it no longer holds"
        details["previously_inhibited_by"] = str(previously_inhibited_by)
    outcome.audit.append(dataclasses.replace(entry, details=details))


def plan_policy_deletion(
    policy: AlertPolicy, firing: Sequence[Alert], silences: Silences, *, actor: str, now: datetime
) -> Outcome:
    """Resolve the firing alerts of a policy about to be deleted, so receivers never keep an alert
    that can no longer resolve: ALERT_RESOLVED (``reason: policy_deleted``) unless silenced, the
    ``alert.resolved`` audit rows and the live events. The rows themselves go with the policy."""
    outcome = Outcome()
    for alert in firing:
        row = _alert_row(alert)
        row.update(state=AlertState.RESOLVED.value, resolved_at=now)
        outcome.resolved += 1
        outcome.transitions += 1
        item = _Change(row, policy, AlertState.FIRING.value)
        _notify(item, silences, Inhibitions(), actor, now, outcome, extra={"reason": "policy_deleted"})
    return outcome


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _str_or_none(value: UUID | None) -> str | None:
    return None if value is None else str(value)


def _payload(row: Mapping[str, Any], policy: AlertPolicy) -> dict[str, Any]:
    """What receivers get (add_event adds event_id, event_type, severity and occurred_at)."""
    return {
        "alert_id": str(row["id"]),
        "policy_id": str(policy.id),
        "policy_name": policy.name,
        "kind": policy.kind,
        "state": row["state"],
        "labels": row["labels"],
        "value": row["value"],
        "operator": policy.operator,
        "threshold": policy.threshold,
        "window_seconds": policy.window_seconds,
        "started_at": _iso(row["started_at"]),
        "fired_at": _iso(row["fired_at"]),
        "resolved_at": _iso(row["resolved_at"]),
    }


def _transition_audit(
    row: Mapping[str, Any],
    policy: AlertPolicy,
    from_state: str,
    actor: str,
    now: datetime,
    event_id: UUID | None = None,
    silence_id: UUID | None = None,
    rule_id: UUID | None = None,
) -> AuditEntry:
    details: dict[str, Any] = {
        "from": from_state,
        "to": row["state"],
        "value": row["value"],
        "operator": policy.operator,
        "threshold": policy.threshold,
        "policy_id": str(policy.id),
        "policy_name": policy.name,
        "labels": row["labels"],
    }
    if event_id is not None:
        details["event_id"] = str(event_id)
    if silence_id is not None:
        details["silenced_by"] = str(silence_id)
        details["notification"] = "suppressed by silence"
    if rule_id is not None:
        details["inhibited_by"] = str(rule_id)
        details["notification"] = (
            "suppressed by inhibit rule"
            if row["state"] != AlertState.RESOLVED.value
            else "suppressed: its ALERT_FIRING was held back by an inhibit rule and never announced"
        )
    return AuditEntry(
        project_id=row["project_id"],
        actor=actor,
        action=f"alert.{row['state']}",
        subject_type="alert",
        subject_id=row["id"],
        details=details,
        at=now,
    )
