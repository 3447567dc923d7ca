"""What an event says to a person, independent of where it is shown (pure).

Every human-facing kind (Slack, email, PagerDuty, Teams) renders the same :class:`Summary`, so an alert
reads the same everywhere: a status word (``FIRING``, ``RESOLVED``, ``ACKNOWLEDGED``, ...), a title, the
severity, and a few facts. ``phase`` is what the event does to its thread: ``trigger`` (it starts or
worsens), ``acknowledge``, ``resolve``, or ``info`` (no thread: TEST, CHANNEL_DISABLED).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

__all__ = ("START_EVENTS", "Phase", "Summary", "summarize")

Phase = Literal["trigger", "acknowledge", "resolve", "info"]

_STATUS: Final[dict[str, tuple[str, Phase]]] = {
    "ALERT_FIRING": ("FIRING", "trigger"),
    "ALERT_RESOLVED": ("RESOLVED", "resolve"),
    "ALERT_ACKNOWLEDGED": ("ACKNOWLEDGED", "acknowledge"),
    "INCIDENT_OPENED": ("OPENED", "trigger"),
    "INCIDENT_ESCALATED": ("ESCALATED", "trigger"),
    "INCIDENT_REOPENED": ("REOPENED", "trigger"),
    "INCIDENT_ACKNOWLEDGED": ("ACKNOWLEDGED", "acknowledge"),
    "INCIDENT_RESOLVED": ("RESOLVED", "resolve"),
    "TEST": ("TEST", "info"),
    "CHANNEL_DISABLED": ("CHANNEL DISABLED", "info"),
}
#: Events that begin a new thread when the previous one of the same subject was resolved.
START_EVENTS: Final = frozenset({"ALERT_FIRING", "INCIDENT_OPENED", "INCIDENT_REOPENED"})


@dataclass(frozen=True, slots=True)
class Summary:
    event_type: str
    status: str
    phase: Phase
    title: str
    severity: str
    #: One line for notification previews and text fallbacks.
    text: str
    facts: list[tuple[str, str]]
    occurred_at: str

    @property
    def headline(self) -> str:
        """``[FIRING] High error rate``: the mail subject, the Slack/Teams heading."""
        return f"[{self.status}] {self.title}"


def _labels_text(labels: dict[str, Any]) -> str:
    return ", ".join(f"{name}={value}" for name, value in sorted(labels.items()))


def summarize(event: dict[str, Any]) -> Summary:
    """The :class:`Summary` of an outbox event body (``event_type``, ``severity``, payload fields)."""
    event_type = str(event.get("event_type", ""))
    status, phase = _STATUS.get(event_type, (event_type, "info"))
    severity = str(event.get("severity", "low"))
    facts: list[tuple[str, str]] = [("Severity", severity)]
    if event.get("grouped"):
        return _grouped(event, event_type, status, phase, severity, facts)
    if event_type.startswith("ALERT_"):
        title = str(event.get("policy_name") or "alert")
        labels = event.get("labels") or {}
        value = event.get("value")
        text = f"{title}: value {value} {event.get('operator', '')} {event.get('threshold', '')}".strip()
        if labels:
            facts.append(("Labels", _labels_text(labels)))
        facts.append(("Value", f"{value}"))
        if event.get("acked_by"):
            facts.append(("Acknowledged by", str(event["acked_by"])))
    elif event_type.startswith("INCIDENT_"):
        incident = event.get("incident") or {}
        title = str(incident.get("title") or "incident")
        service = str(incident.get("service_name", ""))
        text = f"{title} ({service}), {incident.get('count', 0)} occurrences"
        facts += [("Service", service), ("Occurrences", str(incident.get("count", 0)))]
        if incident.get("acked_by"):
            facts.append(("Acknowledged by", str(incident["acked_by"])))
    elif event_type == "CHANNEL_DISABLED":
        channel = event.get("channel") or {}
        title = f"channel {channel.get('name', '')} disabled"
        text = f"Notification channel {channel.get('name', '')} was disabled: {event.get('reason', '')}"
        facts.append(("Reason", str(event.get("reason", ""))))
    else:
        title = str(event.get("message") or "ProdSentinel test notification")
        text = f"{title}: this channel is set up correctly."
    if event.get("escalation"):
        facts.append(("Escalation", _escalation_text(event["escalation"])))
    facts.append(("Event", event_type))
    return Summary(
        event_type=event_type,
        status=status,
        phase=phase,
        title=title,
        severity=severity,
        text=text,
        facts=facts,
        occurred_at=str(event.get("occurred_at", "")),
    )


#: Alerts a grouped message lists one by one (the rest are counted).
GROUP_LISTED: Final = 10


def _escalation_text(escalation: dict[str, Any]) -> str:
    return (
        f"{escalation.get('name', '')} step {escalation.get('step', 0)} (round {escalation.get('round', 0)})"
    )


def _grouped(
    event: dict[str, Any],
    event_type: str,
    status: str,
    phase: Phase,
    severity: str,
    facts: list[tuple[str, str]],
) -> Summary:
    """A group notification (SPEC §13): ``[FIRING:3] team=db``, its reason, then its alerts."""
    alerts = event.get("alerts") or []
    firing = int(event.get("firing_count", 0))
    resolved = int(event.get("resolved_count", 0))
    labels = event.get("labels") or {}
    title = _labels_text(labels) or "alert group"
    status = f"{status}:{firing}" if firing else status
    text = f"{firing} firing, {resolved} resolved ({event.get('reason', '')})"
    facts += [("Reason", str(event.get("reason", ""))), ("Group", title)]
    for alert in alerts[:GROUP_LISTED]:
        name = str(alert.get("policy_name") or "alert")
        facts.append((name, f"{alert.get('status', '')} {_labels_text(alert.get('labels') or {})}".strip()))
    if len(alerts) > GROUP_LISTED:
        facts.append(("More", f"{len(alerts) - GROUP_LISTED} more alerts"))
    facts.append(("Event", event_type))
    return Summary(
        event_type=event_type,
        status=status,
        phase=phase,
        title=title,
        severity=severity,
        text=text,
        facts=facts,
        occurred_at=str(event.get("occurred_at", "")),
    )
