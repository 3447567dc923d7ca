"""polyfactory factories shared by the test suites: wire structs of SPEC §4 (ingest) and stored rows.

Stored rows get polyfactory-generated values for whatever a test does not pin, and are written by
:func:`insert_rows` with one multi-row Core ``INSERT`` per call (no ORM object per row), like the
ingest path. Every domain seeds through these (no hand-written row dicts in the suites).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from uuid import UUID, uuid4

from polyfactory import Use
from polyfactory.factories.msgspec_factory import MsgspecFactory
from polyfactory.factories.sqlalchemy_factory import SQLAlchemyFactory
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.incidents.models import Anomaly, Incident
from prodsentinel.ingest.schemas import LogIn, MetricIn, SpanIn
from prodsentinel.lib.database import session_scope
from prodsentinel.notifications.models import Channel
from prodsentinel.signals.models import LogRecord, MetricPoint, Span
from prodsentinel.signals.partition_queries import PartitionQueries
from prodsentinel.signals.partitions import DEFAULT_INTERVAL_SECONDS, PARTITIONED, ranges_for

# --- ingest: wire structs of SPEC §4 -----------------------------------------------------------------

_SERVICES = ("checkout", "payments", "inventory", "gateway")


def _recent() -> datetime:
    return datetime.now(UTC) - timedelta(seconds=random.uniform(0, 3600))


def _hex(length: int) -> str:
    return "".join(random.choices("0123456789abcdef", k=length))


class LogInFactory(MsgspecFactory[LogIn]):
    service_name = Use(random.choice, _SERVICES)
    timestamp = Use(_recent)
    level = Use(random.choice, ["DEBUG", "info", "WARN", "WARNING", "INFO"])
    trace_id = Use(_hex, 32)
    span_id = Use(_hex, 16)
    attributes = Use(lambda: {"http.method": "GET", "attempt": random.randint(1, 3)})


class SpanInFactory(MsgspecFactory[SpanIn]):
    trace_id = Use(_hex, 32)
    span_id = Use(_hex, 16)
    parent_span_id = None
    service_name = Use(random.choice, _SERVICES)
    name = Use(random.choice, ["GET /cart", "SELECT orders", "charge"])
    start_time = Use(_recent)
    end_time = Use(lambda: datetime.now(UTC))
    status = Use(random.choice, ["UNSET", "OK"])
    attributes = Use(lambda: {"db.system": "postgresql"})

    @classmethod
    def build(cls, **kwargs: Any) -> SpanIn:
        span = super().build(**kwargs)
        if "end_time" not in kwargs and span.end_time < span.start_time:
            span.end_time = span.start_time + timedelta(milliseconds=random.randint(1, 500))
        return span


class MetricInFactory(MsgspecFactory[MetricIn]):
    name = Use(random.choice, ["http.latency_ms", "queue.depth", "cpu.util"])
    value = Use(random.uniform, 0, 1000)
    service_name = Use(random.choice, _SERVICES)
    timestamp = Use(_recent)
    labels = Use(lambda: {"region": random.choice(["eu", "us"]), "host": f"h{random.randint(1, 9)}"})


# --- end ingest ----------------------------------------------------------------------------------------


# --- stored rows: signals, incidents, anomalies, channels ------------------------------------------


def _ago(minutes: float = 5) -> datetime:
    return datetime.now(UTC) - timedelta(minutes=minutes)


def _attributes() -> dict[str, Any]:
    return {"host": f"h-{uuid4().hex[:6]}", "attempt": 1}


def _service() -> str:
    return "svc-" + uuid4().hex[:4]


class _RowFactory(SQLAlchemyFactory[Any]):
    """Values for columns only: the id (server/Python default) and relationships are left out."""

    __is_base_factory__ = True
    __set_primary_key__: ClassVar[bool] = False
    __set_relationships__: ClassVar[bool] = False
    __check_model__ = False


class LogFactory(_RowFactory):
    __model__ = LogRecord
    # The time column is part of the primary key (partitioned table): build it; ``id`` stays out (_columns).
    __set_primary_key__ = True

    signal_id = Use(uuid4)
    trace_id = None
    span_id = None
    service_name = Use(_service)
    timestamp = Use(_ago)
    level = Use(SQLAlchemyFactory.__random__.choice, [10, 20, 30, 40, 50])
    attributes = Use(_attributes)
    received_at = Use(lambda: datetime.now(UTC))


class SpanFactory(_RowFactory):
    __model__ = Span
    # The time column is part of the primary key (partitioned table): build it; ``id`` stays out (_columns).
    __set_primary_key__ = True

    signal_id = Use(uuid4)
    trace_id = Use(lambda: uuid4().hex)
    span_id = Use(lambda: uuid4().hex[:16])
    parent_span_id = None
    service_name = Use(_service)
    start_time = Use(_ago)
    status = 0
    attributes = Use(_attributes)
    received_at = Use(lambda: datetime.now(UTC))


class MetricFactory(_RowFactory):
    __model__ = MetricPoint
    # The time column is part of the primary key (partitioned table): build it; ``id`` stays out (_columns).
    __set_primary_key__ = True

    signal_id = Use(uuid4)
    service_name = Use(_service)
    timestamp = Use(_ago)
    value = Use(SQLAlchemyFactory.__random__.uniform, 0.0, 1000.0)
    labels = Use(dict)
    received_at = Use(lambda: datetime.now(UTC))


class IncidentFactory(_RowFactory):
    """An open, never acknowledged or analysed incident seen once, now."""

    __model__ = Incident

    fingerprint = Use(lambda: uuid4().hex)
    title = "boom"
    service_name = Use(_service)
    source = "log"
    severity = "high"
    status = "open"
    count = 1
    first_seen = Use(lambda: datetime.now(UTC))
    last_seen = Use(lambda: datetime.now(UTC))
    sample_trace_ids = Use(list)
    reopened_count = 0
    acked_by = None
    acked_at = None
    resolved_by = None
    resolved_at = None
    analysis = None
    analysed_at = None
    created_at = Use(lambda: datetime.now(UTC))
    updated_at = Use(lambda: datetime.now(UTC))


class AnomalyFactory(_RowFactory):
    """A clear anomaly (value far above its expected level) of an unlabelled series."""

    __model__ = Anomaly

    metric_name = "latency_ms"
    service_name = Use(_service)
    labels = Use(dict)
    labels_key = "{}"
    ts = Use(lambda: datetime.now(UTC))
    value = 100.0
    expected = 10.0
    score = 9.0
    method = "mad"
    detected_at = Use(lambda: datetime.now(UTC))


class ChannelFactory(_RowFactory):
    """An enabled webhook channel, no secret, every event type, pointing at a closed port."""

    __model__ = Channel

    name = Use(lambda: f"hook-{uuid4().hex[:6]}")
    url = "http://127.0.0.1:9/hook"
    secret = None
    secret_env = None
    kind = "webhook"
    signing = "prodsentinel"
    slack_channel = None
    email_to = None
    matchers = None
    min_severity = "low"
    event_types = None
    enabled = True
    disabled_reason = None
    disabled_at = None
    reenabled_at = None
    throttled_until = None
    #: Not grouped (SPEC §13 grouping is opt-in): one outbox item per event, as the tests expect.
    group_by = None
    group_wait = 30
    group_interval = 300
    repeat_interval = 14400
    created_at = Use(lambda: datetime.now(UTC))
    updated_at = Use(lambda: datetime.now(UTC))


_NOT_VALUES = {"id", "sa_orm_sentinel"}


def _columns(instance: Any, model: Any) -> dict[str, Any]:
    return {c.key: getattr(instance, c.key) for c in model.__table__.columns if c.key not in _NOT_VALUES}


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


def incident_row(project_id: UUID, **overrides: Any) -> dict[str, Any]:
    return _columns(IncidentFactory.build(project_id=project_id, **overrides), Incident)


def anomaly_row(project_id: UUID, **overrides: Any) -> dict[str, Any]:
    return _columns(AnomalyFactory.build(project_id=project_id, **overrides), Anomaly)


def channel_row(project_id: UUID, **overrides: Any) -> dict[str, Any]:
    return _columns(ChannelFactory.build(project_id=project_id, **overrides), Channel)


async def insert_rows(
    session_maker: async_sessionmaker[AsyncSession], model: Any, rows: Sequence[dict[str, Any]]
) -> list[Any]:
    """Insert ``rows`` into ``model``'s table in one statement and commit; returns their ids in row order.

    For a signal table, the partitions the rows' timestamps need are created first (as ingest does).
    """
    if not rows:
        return []
    table = PARTITIONED.get(model.__tablename__)
    if table is not None:
        starts = ranges_for((row[table.time_column] for row in rows), DEFAULT_INTERVAL_SECONDS)
        async with session_scope(session_maker) as session:
            await PartitionQueries(session).ensure(table, starts, DEFAULT_INTERVAL_SECONDS)
    async with session_scope(session_maker) as session:
        result = await session.execute(insert(model).values(list(rows)).returning(model.id))
        return [row_id for (row_id,) in result.all()]
