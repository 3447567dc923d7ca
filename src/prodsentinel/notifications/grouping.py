"""Grouping's rules (pure, SPEC §13): group keys, Alertmanager's dedup decision, the grouped body.

A channel with ``group_by`` does not get ``ALERT_FIRING``/``ALERT_RESOLVED`` one by one: each alert
joins the group of its ``group_by`` label values (``["..."]``: all its labels), and the group
notification cron (``group_flush``) flushes due groups. This module decides, for one flush, whether
a notification goes out and why, exactly as Alertmanager's ``DedupStage.needsUpdate`` does, with the
last notification's firing/resolved sets standing in for its notification log:

- never notified: notify when something fires (``first_notification``); a group whose alerts all
  fired and resolved before its first flush is never sent;
- a firing alert the last notification did not list as firing: ``new_alerts``;
- nothing fires any more and the last notification listed some as firing: ``resolved``;
- an alert resolved since the last notification: ``resolved``;
- otherwise, while something fires, once ``repeat_interval`` has passed since the last one: ``repeat``.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Literal
from uuid import UUID

import msgspec

from prodsentinel.lib import vocabulary

__all__ = (
    "ALL_LABELS",
    "GROUPED_EVENTS",
    "REASONS",
    "GroupAlert",
    "Reason",
    "decide",
    "group_body",
    "group_labels",
    "notification_event_id",
)

Reason = Literal["first_notification", "new_alerts", "resolved", "repeat"]
REASONS: Final[tuple[Reason, ...]] = ("first_notification", "new_alerts", "resolved", "repeat")
#: The event types a grouped channel aggregates; every other event reaches it as before (§8).
GROUPED_EVENTS: Final = frozenset({"ALERT_FIRING", "ALERT_RESOLVED"})
#: ``group_by: ["..."]`` groups by every label (Alertmanager's spelling): one group per label set.
ALL_LABELS: Final = "..."

_NAMESPACE: Final = uuid.UUID("6f1f3d0e-5a7e-4f55-9a55-2f6b8f0c9e41")


def group_labels(labels: Mapping[str, str], group_by: Sequence[str]) -> tuple[str, dict[str, str]]:
    """``(group_key, group_labels)`` of an alert: its values of the ``group_by`` labels (a missing
    label is left out, as in Alertmanager). The key is canonical JSON (sorted), unique per channel."""
    if ALL_LABELS in group_by:
        chosen = dict(labels)
    else:
        chosen = {name: labels[name] for name in group_by if name in labels}
    ordered = dict(sorted(chosen.items()))
    return msgspec.json.encode(ordered).decode(), ordered


def decide(
    *,
    firing: Collection[UUID],
    resolved: Collection[UUID],
    notified_firing: Collection[UUID],
    notified_resolved: Collection[UUID],
    last_notified_at: datetime | None,
    repeat_interval: float,
    now: datetime,
) -> Reason | None:
    """Alertmanager's dedup decision for one flush of one group (module docstring); None: send nothing."""
    if last_notified_at is None:
        return "first_notification" if firing else None
    if not set(firing) <= set(notified_firing):
        return "new_alerts"
    if not firing:
        return "resolved" if notified_firing else None
    if not set(resolved) <= set(notified_resolved):
        return "resolved"
    if last_notified_at + timedelta(seconds=repeat_interval) <= now:
        return "repeat"
    return None


def notification_event_id(group_id: UUID, sequence: int) -> UUID:
    """The event id of the ``sequence``-th notification of a group: the receiver's dedup key, the
    same on every retry and replay of that notification."""
    return uuid.uuid5(_NAMESPACE, f"{group_id}:{sequence}")


@dataclass(frozen=True, slots=True)
class GroupAlert:
    """One alert of a group at flush time: its state and its last event's payload."""

    alert_id: UUID
    firing: bool
    severity: str
    alert: dict[str, Any]


def _alert_entry(alert: GroupAlert) -> dict[str, Any]:
    """An alert as the grouped body lists it: its last event's fields plus ``status``."""
    fields = {
        name: value
        for name, value in alert.alert.items()
        if name not in {"event_id", "event_type", "project_id", "occurred_at"}
    }
    return {**fields, "alert_id": str(alert.alert_id), "status": "firing" if alert.firing else "resolved"}


def group_body(
    *,
    group_id: UUID,
    channel_id: UUID,
    labels: Mapping[str, str],
    alerts: Iterable[GroupAlert],
    reason: Reason,
    sequence: int,
) -> tuple[str, str, dict[str, Any]]:
    """``(event_type, severity, payload)`` of one group notification.

    ``ALERT_FIRING`` while anything fires, else ``ALERT_RESOLVED`` (Alertmanager's group status), at
    the highest severity in the group. The payload carries ``grouped``, ``reason``, ``group`` (id and
    labels), ``labels`` (the group labels: what the channel's matchers and a Slack/Teams title show)
    and ``alerts`` (firing first, each with its ``status``).
    """
    listed = sorted(
        alerts, key=lambda a: (not a.firing, str(a.alert.get("policy_name", "")), str(a.alert_id))
    )
    firing = sum(1 for a in listed if a.firing)
    severity = max((vocabulary.Severity(a.severity) for a in listed), default=vocabulary.Severity("low"))
    payload = {
        "grouped": True,
        "reason": reason,
        "status": "firing" if firing else "resolved",
        "group": {"id": str(group_id), "channel_id": str(channel_id), "labels": dict(labels)},
        "sequence": sequence,
        "labels": dict(labels),
        "firing_count": firing,
        "resolved_count": len(listed) - firing,
        "alerts": [_alert_entry(a) for a in listed],
    }
    return ("ALERT_FIRING" if firing else "ALERT_RESOLVED"), severity.value, payload
