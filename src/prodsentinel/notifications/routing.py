"""Which channels get an event, and which thread it belongs to (pure, SPEC §12).

- Labels: an alert event routes on the alert's labels; an incident event on ``service``, ``severity``
  and ``fingerprint``. Other events (``TEST``, ``CHANNEL_DISABLED``) carry no labels, so a channel with
  matchers that need a value does not get them.
- A channel passes an event when the severity reaches its ``min_severity`` and, if it has
  ``matchers`` (§7's matcher language, ``alerts.matchers``), every matcher holds over the labels.
  Unlike a silence, a matcher list that matches everything is allowed here: it routes everything.
- Subject: ``alert:<id>`` / ``incident:<id>``, the key of a channel's per-thread state (Slack ``ts``,
  root ``Message-ID``, PagerDuty ``dedup_key``). Events without one have no thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from prodsentinel.alerts.matchers import Matcher, MatcherError
from prodsentinel.lib import vocabulary

__all__ = ("compile_matchers", "event_labels", "passes", "subject_of", "validate_matchers")


def event_labels(event_type: str, payload: Mapping[str, Any]) -> dict[str, str]:
    """The labels matchers see (values as strings)."""
    if event_type.startswith("ALERT_"):
        labels = payload.get("labels") or {}
        return {str(name): str(value) for name, value in labels.items()}
    if event_type.startswith("INCIDENT_"):
        incident = payload.get("incident") or {}
        return {
            "service": str(incident.get("service_name", "")),
            "severity": str(incident.get("severity", "")),
            "fingerprint": str(incident.get("fingerprint", "")),
        }
    return {}


def subject_of(event_type: str, payload: Mapping[str, Any]) -> str | None:
    """``alert:<id>`` or ``incident:<id>``; None for events that start no thread."""
    if event_type.startswith("ALERT_") and payload.get("alert_id"):
        return f"alert:{payload['alert_id']}"
    if event_type.startswith("INCIDENT_"):
        incident = payload.get("incident") or {}
        if incident.get("id"):
            return f"incident:{incident['id']}"
    return None


def validate_matchers(raw: Iterable[Mapping[str, str]]) -> list[dict[str, str]]:
    """Stored form of a channel's matchers; MatcherError names the bad one (``matchers[i]``)."""
    stored: list[dict[str, str]] = []
    for index, item in enumerate(raw):
        try:
            matcher = Matcher(name=item["name"], op=item["op"], value=item["value"])  # type: ignore[arg-type]
        except MatcherError as exc:
            raise MatcherError(f"matchers[{index}]: {exc}") from None
        stored.append({"name": matcher.name, "op": matcher.op.value, "value": matcher.value})
    return stored


def compile_matchers(stored: Sequence[Mapping[str, str]] | None) -> list[Matcher]:
    """Matchers of a stored channel (validated when written)."""
    return [Matcher(name=m["name"], op=m["op"], value=m["value"]) for m in stored or ()]  # type: ignore[arg-type]


def passes(
    *,
    severity: str,
    min_severity: str,
    matchers: Sequence[Matcher],
    labels: Mapping[str, str],
) -> bool:
    """Severity at least ``min_severity`` and every matcher holds (no matchers: every event)."""
    if vocabulary.Severity(severity) < vocabulary.Severity(min_severity):
        return False
    return all(matcher.matches(labels) for matcher in matchers)
