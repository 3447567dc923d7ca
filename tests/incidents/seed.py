"""The incidents suites' vocabulary for stored signals, over the shared factories (``tests/factories.py``).

Incident tests speak in level and span-status names and pin every field grouping and analysis read;
these adapters translate that into factory overrides, and ``seed`` writes one kind in one multi-row
insert (``insert_rows``). Times are explicit so tests control the clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.signals.models import LEVELS, SPAN_STATUSES, LogRecord, MetricPoint, Span
from tests import factories

__all__ = ("log_row", "metric_row", "seed", "span_row")


def log_row(
    project_id: UUID,
    *,
    service: str,
    message: str,
    ts: datetime,
    level: str = "ERROR",
    trace_id: str | None = None,
    span_id: str | None = None,
) -> dict[str, Any]:
    return factories.log_row(
        project_id,
        service_name=service,
        message=message,
        timestamp=ts,
        level=LEVELS[level],
        trace_id=trace_id,
        span_id=span_id,
        attributes=None,
    )


def span_row(
    project_id: UUID,
    *,
    service: str,
    name: str,
    trace_id: str,
    span_id: str,
    start: datetime,
    parent_span_id: str | None = None,
    duration_ms: float = 10.0,
    status: str = "ERROR",
) -> dict[str, Any]:
    return factories.span_row(
        project_id,
        duration_ms=duration_ms,
        service_name=service,
        name=name,
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent_span_id,
        start_time=start,
        status=SPAN_STATUSES[status],
        attributes=None,
    )


def metric_row(
    project_id: UUID,
    *,
    name: str,
    service: str,
    ts: datetime,
    value: float,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    return factories.metric_row(
        project_id, name=name, service_name=service, timestamp=ts, value=value, labels=labels or {}
    )


_MODELS = {"log": LogRecord, "span": Span, "metric": MetricPoint}


async def seed(
    session_maker: async_sessionmaker[AsyncSession], kind: str, rows: Sequence[dict[str, Any]]
) -> None:
    """Insert ``rows`` of one kind (log|span|metric) in one committed transaction."""
    await factories.insert_rows(session_maker, _MODELS[kind], rows)
