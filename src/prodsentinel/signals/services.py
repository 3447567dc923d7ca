"""Query rules of the signal API (SPEC §5) and retention.

Parsing and validation of query parameters (times, levels, labels, limits, cursors) live here so every
caller gets the same 400s; the SQL lives in ``signals.repositories``. ``SignalQueryService`` is not an
advanced-alchemy service subclass because it reads three tables with hand-written SQL (keyset pages,
``date_bin`` buckets, ``percentile_cont``) that AA's generic CRUD service does not express.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import msgspec
import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.lib.database import session_scope
from prodsentinel.lib.errors import BadRequestError, NotFoundError
from prodsentinel.lib.pagination import check_limit, decode_cursor, encode_cursor
from prodsentinel.lib.time import as_utc, utcnow
from prodsentinel.lib.vocabulary import LEVEL_NAMES, LEVELS, SPAN_STATUS_NAMES, SPAN_STATUSES
from prodsentinel.settings import Settings
from prodsentinel.signals.repositories import (
    AGGREGATES,
    LogQuery,
    MetricSeriesQuery,
    SignalRepository,
    SpanQuery,
)
from prodsentinel.signals.schemas import (
    LogItem,
    LogPage,
    MetricBucket,
    MetricSeries,
    ServiceItem,
    ServiceList,
    SpanItem,
    SpanNode,
    SpanPage,
    TraceView,
)

__all__ = (
    "DEFAULT_SERIES_RANGE",
    "MAX_SERIES_BUCKETS",
    "MAX_SERVICE_WINDOW",
    "PURGE_CHUNK_SIZE",
    "TRACE_MAX_LOGS",
    "TRACE_MAX_SPANS",
    "PurgeReport",
    "SignalQueryService",
    "build_trace_tree",
    "parse_labels",
    "parse_level",
    "parse_span_status",
    "parse_time",
    "purge_expired_signals",
)

logger = structlog.get_logger("prodsentinel.signals")

#: A trace answer holds at most this many spans / logs (the earliest ones); larger traces are cut.
TRACE_MAX_SPANS = 10_000
TRACE_MAX_LOGS = 1_000
#: ``/metrics/series`` without ``since`` covers the hour before ``until`` (default now).
DEFAULT_SERIES_RANGE = timedelta(hours=1)
#: ``(until - since) / step`` may not exceed this (the answer would be unreasonably large).
MAX_SERIES_BUCKETS = 10_000
MAX_STEP = 31 * 86_400
#: ``/services?window=`` is 1 s .. 90 days.
MAX_SERVICE_WINDOW = 90 * 86_400
#: Retention deletes at most this many rows per statement (and transaction).
PURGE_CHUNK_SIZE = 5_000
#: One retention run stops after this long; the next run carries on.
PURGE_TIME_BUDGET_SECONDS = 600.0

_LOG_CURSOR = "l"
_SPAN_CURSOR = "s"
# "+02:00" sent unencoded in a query string arrives as " 02:00": put the plus back.
_SPACE_OFFSET = re.compile(r"^(.+\d) (\d{2}:?\d{2})$")


# -- parameter parsing ------------------------------------------------------------------------------


def parse_time(name: str, raw: str | None) -> datetime | None:
    """An RFC 3339 timestamp (naive = UTC) or None; anything else is a 400 naming the parameter.

    The result is in UTC and in the supported range (``lib.time``, 1970 .. 9999): outside it is a 400
    too, so the range arithmetic below never overflows.
    """
    if raw is None or raw.strip() == "":
        return None
    value = raw.strip()
    match = _SPACE_OFFSET.match(value)
    if match:
        value = f"{match.group(1)}+{match.group(2)}"
    try:
        parsed = msgspec.convert(value, datetime)
    except msgspec.ValidationError:
        raise BadRequestError(
            f"{name} must be an RFC 3339 timestamp such as 2026-01-31T12:00:00Z, got {raw!r}."
        ) from None
    return as_utc(parsed, name)


def _time_range(since: str | None, until: str | None) -> tuple[datetime | None, datetime | None]:
    start, end = parse_time("since", since), parse_time("until", until)
    if start is not None and end is not None and start > end:
        raise BadRequestError("since must not be later than until.")
    return start, end


def parse_level(raw: str | None) -> int | None:
    """A minimum level name (case-insensitive; WARNING = WARN) as its stored number."""
    if raw is None or raw.strip() == "":
        return None
    level = LEVELS.get(raw.strip().upper())
    if level is None:
        raise BadRequestError(f"level must be one of DEBUG, INFO, WARN, ERROR, CRITICAL; got {raw!r}.")
    return level


def parse_span_status(raw: str | None) -> int | None:
    if raw is None or raw.strip() == "":
        return None
    status = SPAN_STATUSES.get(raw.strip().upper())
    if status is None:
        raise BadRequestError(f"status must be one of UNSET, OK, ERROR; got {raw!r}.")
    return status


def parse_labels(raw: str | None) -> dict[str, str] | None:
    """``key:value,key2:value2`` (values may contain ':'); a malformed pair is a 400."""
    if raw is None or raw.strip() == "":
        return None
    labels: dict[str, str] = {}
    for pair in raw.split(","):
        key, sep, value = pair.partition(":")
        key = key.strip()
        if not sep or not key:
            raise BadRequestError(f"labels must look like key:value,key2:value2; got {raw!r}.")
        if key in labels and labels[key] != value:
            raise BadRequestError(f"labels names {key!r} twice with different values.")
        labels[key] = value
    return labels


def _after(cursor: str | None, kind: str) -> tuple[datetime, int] | None:
    if cursor is None or cursor == "":
        return None
    tag, ts, row_id = decode_cursor(cursor, (str, datetime, int))
    if tag != kind or ts.tzinfo is None:
        raise BadRequestError("cursor is not valid; use next_cursor from a previous page.")
    return ts, row_id


# -- row mapping ------------------------------------------------------------------------------------


def log_item(row: Any) -> LogItem:
    """A stored log row (ORM object or Row) as the API's item; also used by incident samples."""
    return LogItem(
        signal_id=row.signal_id,
        trace_id=row.trace_id,
        span_id=row.span_id,
        service_name=row.service_name,
        timestamp=row.timestamp,
        level=LEVEL_NAMES.get(row.level, str(row.level)),
        message=row.message,
        attributes=row.attributes,
    )


def span_item(row: Any) -> SpanItem:
    """A stored span row as the API's item; also used by incident samples."""
    return SpanItem(**_span_fields(row))


def _span_fields(row: Any) -> dict[str, Any]:
    return {
        "signal_id": row.signal_id,
        "trace_id": row.trace_id,
        "span_id": row.span_id,
        "parent_span_id": row.parent_span_id,
        "service_name": row.service_name,
        "name": row.name,
        "start_time": row.start_time,
        "end_time": row.end_time,
        "duration_ms": row.duration_ms,
        "status": SPAN_STATUS_NAMES.get(row.status, str(row.status)),
        "attributes": row.attributes,
    }


def build_trace_tree(nodes: Sequence[SpanNode]) -> list[SpanNode]:
    """Nest ``nodes`` (sorted by start_time) under their parents and return the roots.

    Roots are spans without a parent, orphans (the parent is not in the trace) and, should the data
    contain a parent cycle, the earliest span of each cycle: every span appears exactly once. When
    several spans share a span_id, children attach to the earliest of them. Siblings keep the input
    order, i.e. start_time order.
    """
    by_span_id: dict[str, SpanNode] = {}
    for node in nodes:
        by_span_id.setdefault(node.span_id, node)
    roots: list[SpanNode] = []
    parent_of: dict[int, SpanNode] = {}
    for node in nodes:
        parent = by_span_id.get(node.parent_span_id) if node.parent_span_id else None
        if parent is None or parent is node:
            roots.append(node)
        else:
            parent.children.append(node)
            parent_of[id(node)] = parent

    reached: set[int] = set()

    def mark(root: SpanNode) -> None:
        stack = [root]
        while stack:
            current = stack.pop()
            reached.add(id(current))
            stack.extend(current.children)

    for root in roots:
        mark(root)
    if len(reached) < len(nodes):  # parent cycles: cut each at its earliest span
        for node in nodes:
            if id(node) not in reached:
                parent_of[id(node)].children.remove(node)
                roots.append(node)
                mark(node)
        roots.sort(key=lambda n: (n.start_time, n.span_id))
    return roots


# -- the query service ------------------------------------------------------------------------------


class SignalQueryService:
    """The read side of SPEC §5 for one project at a time (every method takes the caller's project)."""

    def __init__(self, session: AsyncSession) -> None:
        self.repository = SignalRepository(session)

    async def list_logs(
        self,
        project_id: UUID,
        *,
        service: str | None = None,
        level: str | None = None,
        trace_id: str | None = None,
        q: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> LogPage:
        start, end = _time_range(since, until)
        query = LogQuery(
            project_id=project_id,
            limit=check_limit(limit),
            service=service or None,
            min_level=parse_level(level),
            trace_id=trace_id or None,
            q=q or None,
            since=start,
            until=end,
            after=_after(cursor, _LOG_CURSOR),
        )
        rows = await self.repository.list_logs(query)
        page, more = rows[: query.limit], len(rows) > query.limit
        next_cursor = encode_cursor([_LOG_CURSOR, page[-1].timestamp, page[-1].id]) if more else None
        return LogPage(items=[log_item(row) for row in page], next_cursor=next_cursor)

    async def list_spans(
        self,
        project_id: UUID,
        *,
        service: str | None = None,
        name: str | None = None,
        status: str | None = None,
        min_duration_ms: float | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> SpanPage:
        start, end = _time_range(since, until)
        if min_duration_ms is not None and not (math.isfinite(min_duration_ms) and min_duration_ms >= 0):
            raise BadRequestError("min_duration_ms must be a finite number >= 0.")
        query = SpanQuery(
            project_id=project_id,
            limit=check_limit(limit),
            service=service or None,
            name=name or None,
            status=parse_span_status(status),
            min_duration_ms=min_duration_ms,
            since=start,
            until=end,
            after=_after(cursor, _SPAN_CURSOR),
        )
        rows = await self.repository.list_spans(query)
        page, more = rows[: query.limit], len(rows) > query.limit
        next_cursor = encode_cursor([_SPAN_CURSOR, page[-1].start_time, page[-1].id]) if more else None
        return SpanPage(items=[span_item(row) for row in page], next_cursor=next_cursor)

    async def get_trace(self, project_id: UUID, trace_id: str) -> TraceView:
        """The trace as a tree; NotFoundError when the project has no span and no log with this id."""
        summary = await self.repository.trace_summary(project_id, trace_id)
        if summary.span_count == 0 and summary.log_count == 0:
            raise NotFoundError(f"Trace {trace_id!r} not found.")
        span_rows = await self.repository.trace_spans(project_id, trace_id, TRACE_MAX_SPANS)
        log_rows = await self.repository.trace_logs(project_id, trace_id, TRACE_MAX_LOGS)
        nodes = [SpanNode(**_span_fields(row), children=[]) for row in span_rows]
        return TraceView(
            trace_id=trace_id,
            duration_ms=summary.duration_ms,
            services=summary.services,
            error_span_ids=summary.error_span_ids,
            spans=build_trace_tree(nodes),
            logs=[log_item(row) for row in log_rows],
        )

    async def metric_series(
        self,
        project_id: UUID,
        *,
        name: str,
        service: str | None = None,
        since: str | None = None,
        until: str | None = None,
        step: int = 60,
        agg: str = "avg",
        labels: str | None = None,
    ) -> MetricSeries:
        if not name.strip():
            raise BadRequestError("name is required.")
        agg_name = agg.strip().lower()
        if agg_name not in AGGREGATES:
            raise BadRequestError(f"agg must be one of {', '.join(sorted(AGGREGATES))}; got {agg!r}.")
        if not 1 <= step <= MAX_STEP:
            raise BadRequestError(f"step must be between 1 and {MAX_STEP} seconds, got {step}.")
        start, end = _time_range(since, until)
        end = end or utcnow()
        start = start or end - DEFAULT_SERIES_RANGE  # end >= MIN_TIME (parse_time): cannot underflow
        if start > end:
            raise BadRequestError("since must not be later than until.")
        if (end - start).total_seconds() / step > MAX_SERIES_BUCKETS:
            raise BadRequestError(
                f"the range holds more than {MAX_SERIES_BUCKETS} buckets of {step} s; "
                "raise step or narrow since/until."
            )
        query = MetricSeriesQuery(
            project_id=project_id,
            name=name,
            agg=agg_name,
            step=step,
            since=start,
            until=end,
            service=service or None,
            labels=parse_labels(labels),
        )
        rows = await self.repository.metric_series(query)
        return MetricSeries(
            name=name,
            service=query.service,
            agg=agg_name,
            step=step,
            buckets=[
                MetricBucket(ts=row.ts, value=float(row.value)) for row in rows if row.value is not None
            ],
        )

    async def list_services(self, project_id: UUID, *, window: int = 3600) -> ServiceList:
        if not 1 <= window <= MAX_SERVICE_WINDOW:
            raise BadRequestError(f"window must be between 1 and {MAX_SERVICE_WINDOW} seconds, got {window}.")
        rows = await self.repository.service_stats(project_id, utcnow() - timedelta(seconds=window))
        items = []
        for service_name, last_seen, logs, spans, metrics, errors in rows:
            events = int(logs) + int(spans)
            items.append(
                ServiceItem(
                    service_name=service_name,
                    last_seen=last_seen,
                    logs=int(logs),
                    spans=int(spans),
                    metrics=int(metrics),
                    error_rate=int(errors) / events if events else 0.0,
                )
            )
        return ServiceList(items=items)


# -- retention --------------------------------------------------------------------------------------

RETENTION_TABLES = ("logs", "spans", "metric_points")


@dataclass(slots=True)
class PurgeReport:
    """Rows deleted per table; ``complete`` is False when the time budget ran out first."""

    deleted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RETENTION_TABLES, 0))
    complete: bool = True


def retention_cutoffs(settings: Settings, now: datetime) -> dict[str, datetime]:
    return {
        "logs": now - timedelta(days=settings.retention_days_logs),
        "spans": now - timedelta(days=settings.retention_days_spans),
        "metric_points": now - timedelta(days=settings.retention_days_metrics),
    }


async def purge_expired_signals(
    session_maker: async_sessionmaker[AsyncSession],
    settings: Settings,
    *,
    now: datetime | None = None,
    chunk_size: int = PURGE_CHUNK_SIZE,
    time_budget_seconds: float = PURGE_TIME_BUDGET_SECONDS,
) -> PurgeReport:
    """Delete signals older than their retention (the only DELETE path of the signal tables).

    Unlike other services this one owns its transactions: each chunk of at most ``chunk_size`` rows
    is its own short transaction, so a purge of millions of rows never holds locks or builds one
    huge WAL record set, and concurrent ingest and queries are never blocked for long. It is
    idempotent: a killed run leaves the remaining expired rows to the next one.
    """
    cutoffs = retention_cutoffs(settings, now or utcnow())
    report = PurgeReport()
    deadline = time.monotonic() + time_budget_seconds
    for table, cutoff in cutoffs.items():
        while True:
            async with session_scope(session_maker) as session:
                deleted = await SignalRepository(session).delete_expired(table, cutoff, chunk_size)
            report.deleted[table] += deleted
            if deleted < chunk_size:
                break
            if time.monotonic() > deadline:
                report.complete = False
                logger.info("retention_budget_exhausted", deleted=report.deleted)  # the next run carries on
                return report
    logger.info("retention_purged", deleted=report.deleted)
    return report
