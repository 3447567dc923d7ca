"""Seed stored signals with set-based core inserts (the ingest endpoint is built elsewhere).

Row builders return plain dicts for ``insert(Model)`` executemany; ``seed`` commits them in one
transaction. Times are explicit so tests control the clock.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.lib.database import session_scope
from prodsentinel.signals.models import LEVELS, SPAN_STATUSES, LogRecord, MetricPoint, Span

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
    return {
        "project_id": project_id,
        "signal_id": uuid.uuid4(),
        "trace_id": trace_id,
        "span_id": span_id,
        "service_name": service,
        "timestamp": ts,
        "level": LEVELS[level],
        "message": message,
        "attributes": None,
    }


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
    return {
        "project_id": project_id,
        "signal_id": uuid.uuid4(),
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_span_id": parent_span_id,
        "service_name": service,
        "name": name,
        "start_time": start,
        "end_time": start + timedelta(milliseconds=duration_ms),
        "duration_ms": duration_ms,
        "status": SPAN_STATUSES[status],
        "attributes": None,
    }


def metric_row(
    project_id: UUID,
    *,
    name: str,
    service: str,
    ts: datetime,
    value: float,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "project_id": project_id,
        "signal_id": uuid.uuid4(),
        "name": name,
        "service_name": service,
        "timestamp": ts,
        "value": value,
        "labels": labels or {},
    }


_MODELS = {"log": LogRecord, "span": Span, "metric": MetricPoint}


async def seed(
    session_maker: async_sessionmaker[AsyncSession], kind: str, rows: Sequence[dict[str, Any]]
) -> None:
    """Insert ``rows`` of one kind (log|span|metric) in one committed transaction."""
    if not rows:
        return
    async with session_scope(session_maker) as session:
        await session.execute(insert(_MODELS[kind]), list(rows))
