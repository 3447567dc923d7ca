"""Wire format of incidents and anomalies (SPEC §6 field names)."""

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
