"""Alert-policy validation and normalisation (pure, no I/O).

A policy travels flat on the wire (SPEC §7): the common fields plus the fields of its kind. Storage
keeps the common fields as columns and the per-kind fields in ``params``; :func:`normalise` is the one
place that checks a policy and fills defaults, used by the API (create and PATCH) and by the YAML file
loader alike, so both accept exactly the same policies.

Rules beyond the SPEC's text, chosen and documented here:

- a per-kind field that does not belong to the policy's kind is rejected (a ``metric`` on a
  ``log_rate`` policy is a mistake, not something to ignore silently);
- ``labels`` must not set ``alertname``, ``severity`` or ``service``: those labels are derived from
  the policy (SPEC §7) and a second source would make silences ambiguous;
- ``q`` of ``log_rate`` is a case-insensitive substring; written as ``/.../`` it is a regular
  expression (case-insensitive, PostgreSQL syntax), and an invalid regex is a 422;
- ``window_seconds`` is 1 s .. 7 days, so one evaluation never scans unbounded history.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from prodsentinel.alerts.evaluation import OPERATORS
from prodsentinel.lib import vocabulary

__all__ = (
    "AGGS",
    "COMMON_FIELDS",
    "KINDS",
    "KIND_FIELDS",
    "PolicyError",
    "PolicySpec",
    "normalise",
    "q_regex",
    "to_wire",
)

KINDS: Final = ("log_rate", "error_rate", "metric_threshold", "anomaly", "incident")
SEVERITIES: Final = tuple(sev.value for sev in vocabulary.ALERT_SEVERITIES)
INCIDENT_SEVERITIES: Final = tuple(sev.value for sev in vocabulary.SEVERITIES)
AGGS: Final = ("avg", "min", "max", "sum", "count", "p50", "p95", "p99")
COMMON_FIELDS: Final = (
    "name",
    "kind",
    "severity",
    "for_seconds",
    "window_seconds",
    "operator",
    "threshold",
    "labels",
    "enabled",
)
KIND_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "log_rate": ("service", "level", "q"),
    "error_rate": ("service",),
    "metric_threshold": ("metric", "service", "agg", "match_labels"),
    "anomaly": ("metric", "service"),
    "incident": ("min_severity",),
}
ALL_KIND_FIELDS: Final = tuple(sorted({name for names in KIND_FIELDS.values() for name in names}))
RESERVED_LABELS: Final = ("alertname", "severity", "service")
MAX_WINDOW_SECONDS: Final = 7 * 24 * 3600
_LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class PolicyError(ValueError):
    """A policy that cannot be stored; ``str(error)`` is the sentence for the 422 detail."""


@dataclass(frozen=True, slots=True)
class PolicySpec:
    """A valid policy: columns plus ``params`` (the per-kind fields, defaults filled in)."""

    name: str
    kind: str
    severity: str
    for_seconds: int
    window_seconds: int
    operator: str
    threshold: float
    labels: dict[str, str]
    enabled: bool
    params: dict[str, Any] = field(default_factory=dict)

    def columns(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "severity": self.severity,
            "for_seconds": self.for_seconds,
            "window_seconds": self.window_seconds,
            "operator": self.operator,
            "threshold": self.threshold,
            "labels": self.labels,
            "enabled": self.enabled,
            "params": self.params,
        }


def q_regex(q: str) -> str | None:
    """The regex of a ``/.../`` query, or None for a plain substring."""
    if len(q) >= 2 and q.startswith("/") and q.endswith("/"):
        return q[1:-1]
    return None


def normalise(raw: Mapping[str, Any]) -> PolicySpec:
    """Validate a flat policy (None means "not given") and return it with defaults filled in."""
    given = {key: value for key, value in raw.items() if value is not None}
    kind = _choice(given, "kind", KINDS, required=True)
    foreign = sorted(name for name in ALL_KIND_FIELDS if name in given and name not in KIND_FIELDS[kind])
    if foreign:
        raise PolicyError(
            f"{', '.join(foreign)} does not apply to kind {kind!r}; "
            f"its fields are: {', '.join(KIND_FIELDS[kind])}."
        )
    counts_events = kind in ("anomaly", "incident")
    threshold = given.get("threshold", 1.0 if counts_events else None)
    if threshold is None:
        raise PolicyError(f"threshold is required for kind {kind!r}.")
    return PolicySpec(
        name=_name(given),
        kind=kind,
        severity=_choice(given, "severity", SEVERITIES, required=True),
        for_seconds=_int(given, "for_seconds", default=0, minimum=0, maximum=MAX_WINDOW_SECONDS),
        window_seconds=_int(given, "window_seconds", default=300, minimum=1, maximum=MAX_WINDOW_SECONDS),
        operator=_choice(given, "operator", OPERATORS, default=">=" if counts_events else ">"),
        threshold=_number("threshold", threshold),
        labels=_labels(given.get("labels", {})),
        enabled=_bool(given, "enabled", default=True),
        params=_params(kind, given),
    )


def _params(kind: str, given: Mapping[str, Any]) -> dict[str, Any]:
    if kind == "log_rate":
        level = _string(given, "level") or "ERROR"
        if level.upper() not in vocabulary.LEVELS:
            raise PolicyError(f"level {level!r} is not one of {', '.join(vocabulary.LOG_LEVEL_NAMES)}.")
        q = _string(given, "q")
        if q is not None and (pattern := q_regex(q)) is not None:
            _check_regex("q", pattern)
        return {"service": _string(given, "service"), "level": level.upper(), "q": q}
    if kind == "error_rate":
        service = _string(given, "service")
        if service is None:
            raise PolicyError("service is required for kind 'error_rate'.")
        return {"service": service}
    if kind == "metric_threshold":
        return {
            "metric": _required_metric(given, kind),
            "service": _string(given, "service"),
            "agg": _choice(given, "agg", AGGS, default="avg"),
            "match_labels": _labels(given["match_labels"], what="match_labels")
            if "match_labels" in given
            else None,
        }
    if kind == "anomaly":
        return {"metric": _required_metric(given, kind), "service": _string(given, "service")}
    min_severity = _choice(given, "min_severity", INCIDENT_SEVERITIES, required=True)
    return {"min_severity": min_severity}


def to_wire(columns: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """The flat wire form of a stored policy: the common fields plus its kind's fields."""
    wire = {name: columns[name] for name in COMMON_FIELDS}
    for name in KIND_FIELDS.get(str(columns["kind"]), ()):
        wire[name] = params.get(name)
    return wire


def _name(given: Mapping[str, Any]) -> str:
    name = given.get("name")
    if not isinstance(name, str) or not name.strip():
        raise PolicyError("name is required (a non-empty string).")
    name = name.strip()
    if len(name) > 200:
        raise PolicyError("name must be at most 200 characters.")
    return name


def _choice(
    given: Mapping[str, Any],
    key: str,
    allowed: tuple[str, ...],
    *,
    required: bool = False,
    default: str | None = None,
) -> str:
    value = given.get(key, default)
    if value is None:
        if required:
            raise PolicyError(f"{key} is required; expected one of {', '.join(allowed)}.")
        raise PolicyError(f"{key} is missing.")  # pragma: no cover - every optional choice has a default
    if not isinstance(value, str) or value not in allowed:
        raise PolicyError(f"{key} {value!r} is not valid; expected one of {', '.join(allowed)}.")
    return value


def _string(given: Mapping[str, Any], key: str) -> str | None:
    value = given.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise PolicyError(f"{key} must be a non-empty string.")
    return value.strip()


def _required_metric(given: Mapping[str, Any], kind: str) -> str:
    metric = _string(given, "metric")
    if metric is None:
        raise PolicyError(f"metric is required for kind {kind!r}.")
    return metric


def _int(given: Mapping[str, Any], key: str, *, default: int, minimum: int, maximum: int) -> int:
    value = given.get(key, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(f"{key} must be an integer number of seconds.")
    if not minimum <= value <= maximum:
        raise PolicyError(f"{key} must be between {minimum} and {maximum}, got {value}.")
    return value


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PolicyError(f"{key} must be a finite number.")
    return float(value)


def _bool(given: Mapping[str, Any], key: str, *, default: bool) -> bool:
    value = given.get(key, default)
    if not isinstance(value, bool):
        raise PolicyError(f"{key} must be true or false.")
    return value


def _labels(value: Any, *, what: str = "labels") -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise PolicyError(f"{what} must be an object of string values.")
    labels: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not _LABEL_NAME.fullmatch(key):
            raise PolicyError(f"{what}: {key!r} is not a valid label name ([A-Za-z_][A-Za-z0-9_]*).")
        if not isinstance(item, str):
            raise PolicyError(f"{what}: the value of {key!r} must be a string.")
        if what == "labels" and key in RESERVED_LABELS:
            raise PolicyError(
                f"labels must not set {key!r}: alertname, severity and service are derived from the policy."
            )
        labels[key] = item
    return labels


def _check_regex(key: str, pattern: str) -> None:
    if not pattern:
        raise PolicyError(f"{key}: the regular expression is empty.")
    if len(pattern) > 1024:
        raise PolicyError(f"{key}: the regular expression is longer than 1024 characters.")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise PolicyError(f"{key}: invalid regular expression {pattern!r}: {exc}.") from None
