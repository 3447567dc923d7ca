"""Wire format of incidents and anomalies (SPEC §6 field names)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from prodsentinel.lib.structs import Struct

__all__ = (
    "AnomalyOut",
    "AnomalyPage",
    "IncidentDetail",
    "IncidentOut",
    "IncidentPage",
    "LogSample",
    "SpanSample",
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


class LogSample(Struct):
    signal_id: UUID
    trace_id: str | None
    span_id: str | None
    service_name: str
    timestamp: datetime
    level: str
    message: str
    attributes: dict[str, Any] | None


class SpanSample(Struct):
    signal_id: UUID
    trace_id: str
    span_id: str
    parent_span_id: str | None
    service_name: str
    name: str
    start_time: datetime
    end_time: datetime
    duration_ms: float
    status: str
    attributes: dict[str, Any] | None


class IncidentDetail(IncidentOut):
    """One incident with a few of its most recent occurrences."""

    sample_logs: list[LogSample] = []
    sample_spans: list[SpanSample] = []


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
