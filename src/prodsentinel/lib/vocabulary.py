"""The shared vocabulary: severities, log levels, span statuses and event types, defined once.

Every other copy derives from here: incident escalation (``incidents.severity``), alert policies
(alerts are low/medium/high, incidents add critical), channel routing (``min_severity``), Prometheus
label values, ingest validation, the query API's parsers and the SQL that ranks severities
(:func:`severity_rank_sql`). Before this module the same four names were restated in five Python
modules and one SQL ``CASE``, and a new level would have had to be added in all of them.

``Severity`` is a ``str`` enum so it serialises as ``"low"`` etc., but its ordering is by rank
(low < medium < high < critical), never alphabetical. Comparing with a plain string parses the string
first, so ``"high" > LOW`` holds and an unknown string raises ``ValueError`` instead of silently
comparing text.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Final, Literal

__all__ = (
    "ALERT_SEVERITIES",
    "CHANNEL_KINDS",
    "EVENT_TYPES",
    "LEVELS",
    "LEVEL_NAMES",
    "LOG_LEVEL_NAMES",
    "SEVERITIES",
    "SPAN_STATUSES",
    "SPAN_STATUS_NAMES",
    "STREAM_EVENT_TYPES",
    "WEBHOOK_SIGNINGS",
    "AlertSeverityName",
    "EventTypeName",
    "Severity",
    "SeverityName",
    "max_severity",
    "parse_severity",
    "raise_one_level",
    "rank",
    "severity_rank_sql",
    "stream_type",
)


class Severity(enum.StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    def _rank_of(self, other: object) -> int | None:
        if isinstance(other, Severity):
            return rank(other)
        if isinstance(other, str):
            return rank(parse_severity(other))
        return None

    def __lt__(self, other: object) -> bool:
        other_rank = self._rank_of(other)
        if other_rank is None:
            return NotImplemented
        return rank(self) < other_rank

    def __le__(self, other: object) -> bool:
        other_rank = self._rank_of(other)
        if other_rank is None:
            return NotImplemented
        return rank(self) <= other_rank

    def __gt__(self, other: object) -> bool:
        other_rank = self._rank_of(other)
        if other_rank is None:
            return NotImplemented
        return rank(self) > other_rank

    def __ge__(self, other: object) -> bool:
        other_rank = self._rank_of(other)
        if other_rank is None:
            return NotImplemented
        return rank(self) >= other_rank


#: Every severity, lowest first (incidents use all four).
SEVERITIES: Final[tuple[Severity, ...]] = (Severity.LOW, Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL)
#: Alert policies are low, medium or high (SPEC §7); critical is reserved for incidents.
ALERT_SEVERITIES: Final[tuple[Severity, ...]] = SEVERITIES[:3]
_RANKS: Final[dict[Severity, int]] = {sev: i for i, sev in enumerate(SEVERITIES)}


def rank(sev: Severity | str) -> int:
    """0 for low up to 3 for critical; also the value to sort or store by."""
    return _RANKS[Severity(sev)]


def parse_severity(value: str) -> Severity:
    """Case- and whitespace-insensitive parse; unknown names are a ``ValueError``."""
    try:
        return Severity(value.strip().lower())
    except ValueError:
        allowed = ", ".join(s.value for s in SEVERITIES)
        raise ValueError(f"unknown severity {value!r}; expected one of {allowed}") from None


def max_severity(a: Severity, b: Severity) -> Severity:
    return a if rank(a) >= rank(b) else b


def raise_one_level(sev: Severity) -> Severity:
    """Next level up; critical is the ceiling."""
    return SEVERITIES[min(rank(sev) + 1, len(SEVERITIES) - 1)]


def severity_rank_sql(column: str) -> str:
    """A SQL expression ranking a severity text column like :func:`rank` (unknown text ranks highest).

    Generated from :data:`SEVERITIES` so the SQL can never disagree with Python's order.
    """
    whens = " ".join(f"WHEN '{sev.value}' THEN {rank(sev)}" for sev in SEVERITIES[:-1])
    return f"CASE {column} {whens} ELSE {rank(SEVERITIES[-1])} END"


#: Log levels as stored (smallint, so "level >= ERROR" is an index range). WARNING is stored as WARN.
LEVELS: Final[dict[str, int]] = {
    "DEBUG": 10,
    "INFO": 20,
    "WARN": 30,
    "WARNING": 30,
    "ERROR": 40,
    "CRITICAL": 50,
}
#: Stored number -> canonical name (WARN, not WARNING).
LEVEL_NAMES: Final[dict[int, str]] = {10: "DEBUG", 20: "INFO", 30: "WARN", 40: "ERROR", 50: "CRITICAL"}
#: The accepted names, lowest first, for error messages and OpenAPI enums.
LOG_LEVEL_NAMES: Final[tuple[str, ...]] = tuple(sorted(LEVELS, key=LEVELS.__getitem__))

SPAN_STATUSES: Final[dict[str, int]] = {"UNSET": 0, "OK": 1, "ERROR": 2}
SPAN_STATUS_NAMES: Final[dict[int, str]] = {v: k for k, v in SPAN_STATUSES.items()}

#: Outbox event types (SPEC §8, §12); channels subscribe to a subset. ``TEST`` is sent only to the
#: channel it tests; ``CHANNEL_DISABLED`` to a project's other channels when one is disabled.
EVENT_TYPES: Final[tuple[str, ...]] = (
    "ALERT_FIRING",
    "ALERT_RESOLVED",
    "ALERT_ACKNOWLEDGED",
    "INCIDENT_OPENED",
    "INCIDENT_ESCALATED",
    "INCIDENT_ACKNOWLEDGED",
    "INCIDENT_RESOLVED",
    "INCIDENT_REOPENED",
    "PROBLEM_OPENED",
    "PROBLEM_ESCALATED",
    "PROBLEM_RESOLVED",
    "TEST",
    "CHANNEL_DISABLED",
)
#: Notification channel kinds (SPEC §12); ``webhook`` is the default.
CHANNEL_KINDS: Final[tuple[str, ...]] = ("webhook", "slack", "email", "pagerduty", "teams")
#: Signing schemes of a ``webhook`` channel: ProdSentinel's own (§8, default) or Standard Webhooks.
WEBHOOK_SIGNINGS: Final[tuple[str, ...]] = ("prodsentinel", "standard")


def stream_type(event_type: str) -> str:
    """The live-stream (SSE) name of an outbox event type: ``INCIDENT_OPENED`` -> ``incident_opened``."""
    return event_type.lower()


#: The live event types of the SSE stream (SPEC §6); the stream forwards any type.
STREAM_EVENT_TYPES: Final[tuple[str, ...]] = tuple(stream_type(t) for t in EVENT_TYPES)


# Wire types for msgspec schemas, built from the tuples above so the published enums can never drift
# from the code. Type checkers see plain ``str`` (a Literal built at run time is opaque to them).
if TYPE_CHECKING:
    SeverityName = str
    AlertSeverityName = str
    EventTypeName = str
else:
    SeverityName = Literal[tuple(sev.value for sev in SEVERITIES)]
    AlertSeverityName = Literal[tuple(sev.value for sev in ALERT_SEVERITIES)]
    EventTypeName = Literal[EVENT_TYPES]
