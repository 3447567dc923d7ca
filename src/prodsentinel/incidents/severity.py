"""Incident severity and its escalation rules (pure, no I/O).

``Severity`` and its order are the shared vocabulary (``lib.vocabulary``),
re-exported here because the escalation rules are written in its terms.

``severity_for`` applies SPEC §6 in this order:

1. start from the base (``base_for_log_level``, ``SPAN_ERROR_BASE``,
   ``ANOMALY_BASE``);
2. rate floor: ``>= rules.high_rate`` occurrences in the window -> at least
   high; ``>= rules.critical_rate`` -> critical;
3. spread: the same trace failing in ``>= rules.spread_services`` distinct
   services (this one included) -> one level up from the result of step 2.

So a medium error repeated 10 times in a trace that spans two failing
services is critical. While an incident is open its stored severity only
moves up: callers store ``escalate(current, computed)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from prodsentinel.lib.vocabulary import (
    SEVERITIES,
    Severity,
    max_severity,
    parse_severity,
    raise_one_level,
    rank,
)

__all__ = [
    "ANOMALY_BASE",
    "DEFAULT_RULES",
    "SEVERITIES",
    "SPAN_ERROR_BASE",
    "Severity",
    "SeverityRules",
    "base_for_log_level",
    "escalate",
    "is_escalation",
    "max_severity",
    "parse_severity",
    "raise_one_level",
    "rank",
    "severity_for",
]


SPAN_ERROR_BASE: Final = Severity.MEDIUM
ANOMALY_BASE: Final = Severity.MEDIUM
_LOG_LEVEL_BASE: Final[dict[str, Severity]] = {
    "ERROR": Severity.MEDIUM,
    "CRITICAL": Severity.CRITICAL,
}


def base_for_log_level(level: str) -> Severity | None:
    """Base severity of a log level, ``None`` for levels that open no incident.

    Only ERROR and CRITICAL logs create incidents (SPEC §6); ``level`` is
    matched case-insensitively like ingest does.
    """
    return _LOG_LEVEL_BASE.get(level.strip().upper())


@dataclass(frozen=True, slots=True)
class SeverityRules:
    """Thresholds of the escalation rules; defaults are SPEC §6's."""

    high_rate: int = 10
    critical_rate: int = 100
    window_seconds: int = 300
    spread_services: int = 2

    def __post_init__(self) -> None:
        if self.high_rate < 1 or self.critical_rate < 1:
            raise ValueError("occurrence thresholds must be >= 1")
        if self.critical_rate < self.high_rate:
            raise ValueError("critical_rate must be >= high_rate")
        if self.window_seconds < 1:
            raise ValueError("window_seconds must be >= 1")
        if self.spread_services < 2:
            raise ValueError("spread_services must be >= 2 (one service is not a spread)")


DEFAULT_RULES: Final = SeverityRules()


def severity_for(
    *,
    base: Severity,
    occurrences_in_window: int,
    services_in_same_trace: int,
    rules: SeverityRules = DEFAULT_RULES,
) -> Severity:
    """Severity an incident deserves now (see the module docstring for the order).

    ``occurrences_in_window`` counts this incident's occurrences in the last
    ``rules.window_seconds`` including the current one; ``services_in_same_trace``
    is the number of distinct services with an error in the occurrence's
    trace (1, or 0 when there is no trace).
    """
    sev = Severity(base)
    if occurrences_in_window >= rules.critical_rate:
        sev = Severity.CRITICAL
    elif occurrences_in_window >= rules.high_rate:
        sev = max_severity(sev, Severity.HIGH)
    if services_in_same_trace >= rules.spread_services:
        sev = raise_one_level(sev)
    return sev


def escalate(current: Severity, computed: Severity) -> Severity:
    """Severity to store on an open incident: it never drops while open."""
    return max_severity(current, computed)


def is_escalation(current: Severity, new: Severity) -> bool:
    """True when storing ``new`` raises the level (emit INCIDENT_ESCALATED, re-run triage)."""
    return rank(new) > rank(current)
