"""Wire format of the query API (SPEC §5): items reuse the ingest field names; spans add ``duration_ms``."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from prodsentinel.lib.structs import Struct

__all__ = (
    "LogItem",
    "LogPage",
    "MetricBucket",
    "MetricSeries",
    "ServiceItem",
    "ServiceList",
    "SpanItem",
    "SpanNode",
    "SpanPage",
    "TraceView",
)


class LogItem(Struct):
    """One stored log record. ``level`` is the canonical name (WARNING is reported as WARN)."""

    signal_id: UUID
    trace_id: str | None
    span_id: str | None
    service_name: str
    timestamp: datetime
    level: str
    message: str
    attributes: dict[str, Any] | None


class LogPage(Struct):
    """A page of logs, newest first; ``next_cursor`` is null on the last page."""

    items: list[LogItem]
    next_cursor: str | None


class SpanItem(Struct):
    """One stored span; ``duration_ms`` = end_time - start_time in milliseconds."""

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


class SpanPage(Struct):
    """A page of spans, newest first by start_time; ``next_cursor`` is null on the last page."""

    items: list[SpanItem]
    next_cursor: str | None


class SpanNode(SpanItem):
    """A span inside a trace tree: its children are the spans whose parent it is, by start_time."""

    children: list[SpanNode]


class TraceView(Struct):
    """One trace: spans nested by parent (orphans at the root) and the logs carrying the trace_id."""

    trace_id: str
    duration_ms: float
    services: list[str]
    error_span_ids: list[str]
    spans: list[SpanNode]
    logs: list[LogItem]


class MetricBucket(Struct):
    """``ts`` is the bucket start, a multiple of ``step`` seconds since the Unix epoch."""

    ts: datetime
    value: float


class MetricSeries(Struct):
    name: str
    service: str | None
    agg: str
    step: int
    buckets: list[MetricBucket]


class ServiceItem(Struct):
    """Activity of one service in the window.

    error_rate = (ERROR/CRITICAL logs + ERROR spans) / (logs + spans), 0 without logs and spans.
    """

    service_name: str
    last_seen: datetime
    logs: int
    spans: int
    metrics: int
    error_rate: float


class ServiceList(Struct):
    items: list[ServiceItem]
