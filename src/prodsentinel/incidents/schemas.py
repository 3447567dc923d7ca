"""Wire format of incidents, anomalies (SPEC §6 field names) and problems (SPEC §14)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from prodsentinel.lib.structs import Struct
from prodsentinel.signals.schemas import LogItem, SpanItem

__all__ = (
    "AnomalyOut",
    "AnomalyPage",
    "IncidentDetail",
    "IncidentOut",
    "IncidentPage",
    "MergeIn",
    "ProblemEvidence",
    "ProblemOut",
    "ProblemPage",
    "ProblemRoot",
)


class IncidentOut(Struct):
    id: UUID
    fingerprint: str
    title: str
    service_name: str
    #: low | medium | high | critical
    severity: str
    #: open | acknowledged | resolved
    status: str
    count: int
    first_seen: datetime
    last_seen: datetime
    sample_trace_ids: list[str]
    reopened_count: int
    #: Root-cause analysis (``{"version": 1, ...}``, see docs/incidents.md); null until analysed.
    analysis: dict[str, Any] | None
    #: log | span | anomaly
    source: str
    acked_by: str | None = None
    acked_at: datetime | None = None
    resolved_by: str | None = None
    resolved_at: datetime | None = None
    analysed_at: datetime | None = None
    #: The problem (SPEC §14) the incident is in; null until correlated, or after a detach until its
    #: next occurrence.
    problem_id: UUID | None = None


class IncidentDetail(IncidentOut):
    """One incident with a few of its most recent occurrences."""

    sample_logs: list[LogItem] = []
    sample_spans: list[SpanItem] = []


class IncidentPage(Struct):
    items: list[IncidentOut]
    next_cursor: str | None


class AnomalyOut(Struct):
    id: UUID
    metric: str
    service_name: str
    labels: dict[str, str]
    ts: datetime
    value: float
    #: The series' median over its history window.
    expected: float
    #: Signed robust z-score ((value - median) / scale); negative is a drop.
    score: float
    method: str
    detected_at: datetime


class AnomalyPage(Struct):
    items: list[AnomalyOut]
    next_cursor: str | None


class ProblemRoot(Struct):
    """Where the cascade starts: the dependency (or service) in the most failing traces."""

    service: str | None
    dependency: str | None
    incident_id: UUID | None
    span_id: str | None


class ProblemEvidence(Struct):
    incident_id: UUID
    #: trace | dependency | merge
    joined_by: str
    signal_ids: list[UUID]


class ProblemOut(Struct):
    id: UUID
    title: str
    #: open | acknowledged | resolved
    status: str
    #: The highest severity of its incidents.
    severity: str
    root: ProblemRoot
    services: list[str]
    incident_ids: list[UUID]
    first_seen: datetime
    last_seen: datetime
    evidence: list[ProblemEvidence]
    #: Until when (signal time) another incident may still join: extended by each join, capped at 24 h.
    window_until: datetime
    #: Set when a by-hand merge folded this problem into another one (it is then resolved).
    merged_into: UUID | None = None
    #: Root-cause analysis of the problem (docs/incidents.md); null until analysed.
    analysis: dict[str, Any] | None = None


class ProblemPage(Struct):
    items: list[ProblemOut]
    next_cursor: str | None


class MergeIn(Struct):
    """``POST /api/v1/problems/{id}/merge``: the problem folded into ``{id}``."""

    problem_id: UUID
