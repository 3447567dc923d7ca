"""Set-based seeding of the signal tables for query tests.

Rows get polyfactory-generated values for whatever a test does not pin, and are written with one
multi-row Core ``INSERT`` per call (no ORM objects per row), like the ingest path.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from uuid import UUID, uuid4

from polyfactory import Use
from polyfactory.factories.sqlalchemy_factory import SQLAlchemyFactory
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.lib.database import session_scope
from prodsentinel.signals.models import LogRecord, MetricPoint, Span

__all__ = ("insert_rows", "log_row", "metric_row", "span_row")

BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)


def _recent() -> datetime:
    return datetime.now(UTC) - timedelta(minutes=5)


def _attributes() -> dict[str, Any]:
    return {"host": f"h-{uuid4().hex[:6]}", "attempt": 1}


class _SignalFactory(SQLAlchemyFactory[Any]):
    __is_base_factory__ = True
    __set_primary_key__: ClassVar[bool] = False
    __set_relationships__: ClassVar[bool] = False
    __check_model__ = False


class LogFactory(_SignalFactory):
    __model__ = LogRecord

    signal_id = Use(uuid4)
    trace_id = None
    span_id = None
    service_name = Use(lambda: "svc-" + uuid4().hex[:4])
    timestamp = Use(_recent)
    level = Use(SQLAlchemyFactory.__random__.choice, [10, 20, 30, 40, 50])
    attributes = Use(_attributes)
    received_at = Use(lambda: datetime.now(UTC))


class SpanFactory(_SignalFactory):
    __model__ = Span

    signal_id = Use(uuid4)
    trace_id = Use(lambda: uuid4().hex)
    span_id = Use(lambda: uuid4().hex[:16])
    parent_span_id = None
    service_name = Use(lambda: "svc-" + uuid4().hex[:4])
    start_time = Use(_recent)
    status = 0
    attributes = Use(_attributes)
    received_at = Use(lambda: datetime.now(UTC))


class MetricFactory(_SignalFactory):
    __model__ = MetricPoint

    signal_id = Use(uuid4)
    service_name = Use(lambda: "svc-" + uuid4().hex[:4])
    timestamp = Use(_recent)
    value = Use(SQLAlchemyFactory.__random__.uniform, 0.0, 1000.0)
    labels = Use(dict)
    received_at = Use(lambda: datetime.now(UTC))


def _columns(instance: Any, model: Any) -> dict[str, Any]:
    return {c.key: getattr(instance, c.key) for c in model.__table__.columns if c.key != "id"}


def log_row(project_id: UUID, **overrides: Any) -> dict[str, Any]:
    return _columns(LogFactory.build(project_id=project_id, **overrides), LogRecord)


def span_row(project_id: UUID, *, duration_ms: float | None = None, **overrides: Any) -> dict[str, Any]:
    """A span; ``end_time`` and ``duration_ms`` follow from ``start_time`` and ``duration_ms``."""
    if duration_ms is None:
        duration_ms = float(SpanFactory.__random__.randint(1, 5000))
    row = _columns(SpanFactory.build(project_id=project_id, **overrides), Span)
    if "end_time" not in overrides:
        row["end_time"] = row["start_time"] + timedelta(milliseconds=duration_ms)
    row["duration_ms"] = (row["end_time"] - row["start_time"]).total_seconds() * 1000.0
    return row


def metric_row(project_id: UUID, **overrides: Any) -> dict[str, Any]:
    return _columns(MetricFactory.build(project_id=project_id, **overrides), MetricPoint)


async def insert_rows(
    session_maker: async_sessionmaker[AsyncSession], model: Any, rows: Sequence[dict[str, Any]]
) -> list[int]:
    """Insert ``rows`` into ``model``'s table in one statement; returns their ids in row order."""
    if not rows:
        return []
    async with session_scope(session_maker) as session:
        result = await session.execute(insert(model).values(list(rows)).returning(model.id))
        return [row_id for (row_id,) in result.all()]
