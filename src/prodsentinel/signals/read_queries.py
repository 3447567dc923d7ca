"""Read SQL of the signal tables: keyset pages, trace lookups, bucketed metric aggregates over raw points.

A plain query class (``SignalReadQueries``) rather than advanced-alchemy repositories: the reads span
three tables (a trace joins spans and logs, service stats merge all three) and need keyset row
comparisons, ``date_bin`` buckets, ``percentile_cont`` and multi-table aggregates, all computed by
PostgreSQL. Every statement filters by ``project_id`` first, so each one is served by a
``(project_id, ...)`` index (see docs/query.md).

Write SQL (ingest) lives in ``signals.writes``, partition DDL in ``signals.partition_queries``;
reads over the rollups (``/services``, long metric series) in ``signals.rollup_queries``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple
from uuid import UUID

from sqlalchemy import (
    ColumnElement,
    Double,
    and_,
    func,
    literal,
    literal_column,
    select,
    tuple_,
    union,
)
from sqlalchemy.dialects.postgresql import JSONB, aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncSession

from prodsentinel.lib import float_sql
from prodsentinel.lib.vocabulary import LEVELS, SPAN_STATUSES
from prodsentinel.signals.models import LogRecord, MetricPoint, Span
from prodsentinel.signals.search import CUSTOM_PLAN, RECENT_ROWS, detect_search_mode, message_matches

__all__ = (
    "EPOCH",
    "LogQuery",
    "MetricSeriesQuery",
    "SignalReadQueries",
    "SpanQuery",
    "TraceSummary",
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ERROR_LEVEL = LEVELS["ERROR"]
_ERROR_STATUS = SPAN_STATUSES["ERROR"]

#: The metric value column, as SQL text for the overflow-free aggregates of ``lib.float_sql``.
_VALUE_SQL = "metric_points.value"

#: An aggregate expression over the metric value column.
Aggregate = Callable[[Any], ColumnElement[Any]]


def _sql(text_sql: str) -> ColumnElement[float]:
    return literal_column(text_sql, Double())


def _percentile(fraction: float) -> Aggregate:
    return lambda v: func.percentile_cont(fraction).within_group(v)


def _halved_percentile(fraction: float) -> Aggregate:
    """The fallback for a bucket whose percentile overflowed to Infinity (see ``lib.float_sql.halved``)."""
    return lambda v: func.percentile_cont(fraction).within_group(_sql(float_sql.halved(_VALUE_SQL))) * 2.0


#: SQL aggregate expressions by API name; percentiles interpolate linearly (``percentile_cont``).
#: ``avg`` and ``sum`` never overflow (``lib.float_sql``).
_AGGREGATES: dict[str, Aggregate] = {
    "avg": lambda v: _sql(float_sql.overflow_free_avg(_VALUE_SQL)),
    "min": lambda v: func.min(v),
    "max": lambda v: func.max(v),
    "sum": lambda v: _sql(float_sql.overflow_free_sum(_VALUE_SQL)),
    "count": lambda v: func.count(v),
    "p50": _percentile(0.5),
    "p95": _percentile(0.95),
    "p99": _percentile(0.99),
}
_HALVED_PERCENTILES = {
    "p50": _halved_percentile(0.5),
    "p95": _halved_percentile(0.95),
    "p99": _halved_percentile(0.99),
}
AGGREGATES: frozenset[str] = frozenset(_AGGREGATES)


class MetricBucketRow(NamedTuple):
    """A ``metric_series`` row whose value was recomputed (same fields as the SQL rows)."""

    ts: datetime
    value: float | None


LOG_COLUMNS = (
    LogRecord.id,
    LogRecord.signal_id,
    LogRecord.trace_id,
    LogRecord.span_id,
    LogRecord.service_name,
    LogRecord.timestamp,
    LogRecord.level,
    LogRecord.message,
    LogRecord.attributes,
)
SPAN_COLUMNS = (
    Span.id,
    Span.signal_id,
    Span.trace_id,
    Span.span_id,
    Span.parent_span_id,
    Span.service_name,
    Span.name,
    Span.start_time,
    Span.end_time,
    Span.duration_ms,
    Span.status,
    Span.attributes,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class LogQuery:
    project_id: UUID
    #: rows to fetch: the page size + 1 (``Keyset.fetch_size``), the extra row says "more"
    limit: int
    service: str | None = None
    min_level: int | None = None
    trace_id: str | None = None
    q: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    #: the ``(timestamp, id)`` of the last row of the previous page
    after: tuple[Any, ...] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SpanQuery:
    project_id: UUID
    #: rows to fetch: the page size + 1 (``Keyset.fetch_size``)
    limit: int
    service: str | None = None
    name: str | None = None
    status: int | None = None
    min_duration_ms: float | None = None
    since: datetime | None = None
    until: datetime | None = None
    #: the ``(start_time, id)`` of the last row of the previous page
    after: tuple[Any, ...] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricSeriesQuery:
    project_id: UUID
    name: str
    agg: str
    step: int
    since: datetime
    until: datetime
    service: str | None = None
    labels: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class TraceSummary:
    span_count: int
    log_count: int
    duration_ms: float
    services: list[str]
    error_span_ids: list[str]


class SignalReadQueries:
    """Reads of logs, spans and metric points on one session (never writes, never commits)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    # -- logs ---------------------------------------------------------------------------------------

    async def list_logs(self, query: LogQuery) -> Sequence[Any]:
        """Up to ``query.limit`` rows newest first by ``(timestamp, id)``.

        The keyset condition ``(timestamp, id) < (:ts, :id)`` is a btree range on
        ``ix_logs_project_ts (project_id, timestamp, id)`` scanned backwards, so a page costs
        ``limit`` index entries however deep the walk is, and a row committed between two pages can
        never shift the walk (unlike OFFSET). ``q`` is served by the trigram index (``signals.search``).
        """
        conditions: list[ColumnElement[bool]] = [LogRecord.project_id == query.project_id]
        if query.service is not None:
            conditions.append(LogRecord.service_name == query.service)
        if query.min_level is not None:
            conditions.append(LogRecord.level >= query.min_level)
        if query.trace_id is not None:
            conditions.append(LogRecord.trace_id == query.trace_id)
        if query.since is not None:
            conditions.append(LogRecord.timestamp >= query.since)
        if query.until is not None:
            conditions.append(LogRecord.timestamp < query.until)
        if query.after is not None:
            conditions.append(tuple_(LogRecord.timestamp, LogRecord.id) < tuple_(*query.after))
        newest_first = (LogRecord.timestamp.desc(), LogRecord.id.desc())
        if not query.q:
            statement = select(*LOG_COLUMNS).where(*conditions).order_by(*newest_first).limit(query.limit)
            return (await self.session.execute(statement)).all()
        mode = await detect_search_mode(self.session)
        await self.session.execute(CUSTOM_PLAN)
        if mode == "core":
            # The newest rows first: a frequent q fills the page there (the prefilter's estimate
            # cannot tell, see signals.search.RECENT_ROWS). Exact: the first ``limit`` matches among
            # the newest rows in order are the first ``limit`` matches overall.
            recent = (
                select(*LOG_COLUMNS).where(*conditions).order_by(*newest_first).limit(RECENT_ROWS).subquery()
            )
            statement = (
                select(*recent.c)
                .where(message_matches(recent.c.message, query.q, "none"))
                .order_by(recent.c.timestamp.desc(), recent.c.id.desc())
                .limit(query.limit)
            )
            rows = (await self.session.execute(statement)).all()
            if len(rows) == query.limit:
                return rows
        conditions.append(message_matches(LogRecord.message, query.q, mode))
        statement = select(*LOG_COLUMNS).where(*conditions).order_by(*newest_first).limit(query.limit)
        return (await self.session.execute(statement)).all()

    # -- spans and traces ---------------------------------------------------------------------------

    async def list_spans(self, query: SpanQuery) -> Sequence[Any]:
        """Up to ``query.limit`` spans newest first by ``(start_time, id)`` (see :meth:`list_logs`)."""
        conditions: list[ColumnElement[bool]] = [Span.project_id == query.project_id]
        if query.service is not None:
            conditions.append(Span.service_name == query.service)
        if query.name is not None:
            conditions.append(Span.name == query.name)
        if query.status is not None:
            conditions.append(Span.status == query.status)
        if query.min_duration_ms is not None:
            conditions.append(Span.duration_ms >= query.min_duration_ms)
        if query.since is not None:
            conditions.append(Span.start_time >= query.since)
        if query.until is not None:
            conditions.append(Span.start_time < query.until)
        if query.after is not None:
            conditions.append(tuple_(Span.start_time, Span.id) < tuple_(*query.after))
        statement = (
            select(*SPAN_COLUMNS)
            .where(*conditions)
            .order_by(Span.start_time.desc(), Span.id.desc())
            .limit(query.limit)
        )
        return (await self.session.execute(statement)).all()

    async def trace_summary(self, project_id: UUID, trace_id: str) -> TraceSummary:
        """Counts, duration, services and error span ids of a trace in one round trip.

        Duration is ``max(end_time) - min(start_time)`` over its spans (0 without spans); services are
        those of its spans and of the logs carrying the trace_id, sorted.
        """
        in_spans = and_(Span.project_id == project_id, Span.trace_id == trace_id)
        in_logs = and_(LogRecord.project_id == project_id, LogRecord.trace_id == trace_id)
        services = union(
            select(Span.service_name.label("service_name")).where(in_spans),
            select(LogRecord.service_name.label("service_name")).where(in_logs),
        ).subquery()
        span_stats = select(
            func.count().label("span_count"),
            func.coalesce(
                func.extract("epoch", func.max(Span.end_time) - func.min(Span.start_time)) * 1000.0, 0.0
            ).label("duration_ms"),
            func.coalesce(
                func.array_agg(aggregate_order_by(Span.span_id, Span.start_time, Span.span_id)).filter(
                    Span.status == _ERROR_STATUS
                ),
                literal_column("ARRAY[]::text[]"),
            ).label("error_span_ids"),
        ).where(in_spans)
        stats = span_stats.subquery()
        statement = select(
            stats.c.span_count,
            stats.c.duration_ms,
            stats.c.error_span_ids,
            select(func.count()).where(in_logs).scalar_subquery().label("log_count"),
            select(
                func.coalesce(
                    func.array_agg(aggregate_order_by(services.c.service_name, services.c.service_name)),
                    literal_column("ARRAY[]::text[]"),
                )
            )
            .scalar_subquery()
            .label("services"),
        )
        row = (await self.session.execute(statement)).one()
        return TraceSummary(
            span_count=int(row.span_count),
            log_count=int(row.log_count),
            duration_ms=float(row.duration_ms),
            services=list(row.services),
            error_span_ids=list(row.error_span_ids),
        )

    async def trace_spans(self, project_id: UUID, trace_id: str, limit: int) -> Sequence[Any]:
        """The trace's spans by ``start_time`` (served by ``ix_spans_project_trace``)."""
        statement = (
            select(*SPAN_COLUMNS)
            .where(Span.project_id == project_id, Span.trace_id == trace_id)
            .order_by(Span.start_time, Span.span_id, Span.id)
            .limit(limit)
        )
        return (await self.session.execute(statement)).all()

    async def trace_logs(self, project_id: UUID, trace_id: str, limit: int) -> Sequence[Any]:
        """Logs carrying the trace_id, oldest first (served by ``ix_logs_project_trace``)."""
        statement = (
            select(*LOG_COLUMNS)
            .where(LogRecord.project_id == project_id, LogRecord.trace_id == trace_id)
            .order_by(LogRecord.timestamp, LogRecord.id)
            .limit(limit)
        )
        return (await self.session.execute(statement)).all()

    # -- metrics ------------------------------------------------------------------------------------

    async def metric_series(self, query: MetricSeriesQuery) -> Sequence[Any]:
        """``(bucket_start, value)`` per non-empty bucket, oldest first.

        ``date_bin(step, timestamp, epoch)`` aligns buckets to multiples of ``step`` seconds since
        the Unix epoch; served by ``ix_metric_points_series_ts (project_id, name, service_name, ts)``.
        Aggregates never overflow (``lib.float_sql``). A percentile that overflowed to Infinity
        (only possible between opposite-sign values near +-1.8e308: the stored values are finite) is
        recomputed by a second statement with ``_halved_percentile``, so ordinary data costs nothing.
        """
        bucket = func.date_bin(
            literal(timedelta(seconds=query.step)), MetricPoint.timestamp, literal(EPOCH)
        ).label("ts")
        conditions: list[ColumnElement[bool]] = [
            MetricPoint.project_id == query.project_id,
            MetricPoint.name == query.name,
            MetricPoint.timestamp >= query.since,
            MetricPoint.timestamp < query.until,
        ]
        if query.service is not None:
            conditions.append(MetricPoint.service_name == query.service)
        if query.labels:
            conditions.append(MetricPoint.labels.op("@>")(literal(query.labels, JSONB)))

        async def run(aggregate: Aggregate) -> Sequence[Any]:
            value = aggregate(MetricPoint.value).label("value")
            statement = select(bucket, value).where(*conditions).group_by(bucket).order_by(bucket)
            return (await self.session.execute(statement)).all()

        rows = await run(_AGGREGATES[query.agg])
        halved = _HALVED_PERCENTILES.get(query.agg)
        if halved is None or all(row.value is None or math.isfinite(row.value) for row in rows):
            return rows
        fallback = {row.ts: row.value for row in await run(halved)}
        return [
            row
            if row.value is None or math.isfinite(row.value)
            else MetricBucketRow(row.ts, fallback[row.ts])
            for row in rows
        ]
