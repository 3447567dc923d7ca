"""Query rules of the signal API (SPEC §5): ``SignalQueryService`` and its parameter parsers.

Parsing and validation of query parameters (levels, span statuses, labels, steps, windows) live here,
times, limits and cursors in ``lib.pagination``, so every caller gets the same 400s; the SQL lives in
``signals.read_queries``. Retention is its own pass (``signals.retention``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession

from prodsentinel.lib.errors import BadRequestError, NotFoundError
from prodsentinel.lib.pagination import DEFAULT_LIMIT, Keyset, time_range
from prodsentinel.lib.time import utcnow
from prodsentinel.lib.vocabulary import (
    LEVEL_NAMES,
    LEVELS,
    LOG_LEVEL_NAMES,
    SPAN_STATUS_NAMES,
    SPAN_STATUSES,
)
from prodsentinel.signals.read_queries import (
    AGGREGATES,
    LogQuery,
    MetricSeriesQuery,
    SignalReadQueries,
    SpanQuery,
)
from prodsentinel.signals.rollup_queries import ROLLUP_AGGREGATES, RollupQueries, plan_rollups
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
    "LOG_KEYSET",
    "MAX_SERIES_BUCKETS",
    "MAX_SERVICE_WINDOW",
    "SPAN_KEYSET",
    "TRACE_MAX_LOGS",
    "TRACE_MAX_SPANS",
    "SignalQueryService",
    "build_trace_tree",
    "log_item",
    "parse_labels",
    "parse_level",
    "parse_span_status",
    "span_item",
)

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

#: Logs page newest first by (timestamp, id), spans by (start_time, id).
LOG_KEYSET: Keyset[Any] = Keyset("logs", (datetime, int), lambda row: (row.timestamp, row.id))
SPAN_KEYSET: Keyset[Any] = Keyset("spans", (datetime, int), lambda row: (row.start_time, row.id))


# -- parameter parsing ------------------------------------------------------------------------------


def parse_level(raw: str | None) -> int | None:
    """A minimum level name (case-insensitive; WARNING = WARN) as its stored number."""
    if raw is None or raw.strip() == "":
        return None
    level = LEVELS.get(raw.strip().upper())
    if level is None:
        raise BadRequestError(f"level must be one of {', '.join(LOG_LEVEL_NAMES)}; got {raw!r}.")
    return level


def parse_span_status(raw: str | None) -> int | None:
    if raw is None or raw.strip() == "":
        return None
    status = SPAN_STATUSES.get(raw.strip().upper())
    if status is None:
        raise BadRequestError(f"status must be one of {', '.join(SPAN_STATUSES)}; got {raw!r}.")
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
    """The read side of SPEC §5 for one project at a time (every method takes the caller's project).

    Built and injected like the advanced-alchemy services (``SignalQueryService(session=...)``, one per
    request through Litestar DI), but a plain class: AA's service is CRUD over one model through one
    repository, while these are reads across three hand-written-SQL tables (``SignalReadQueries``:
    keyset pages, ``date_bin`` buckets, ``percentile_cont``, a trace joining spans and logs) with
    nothing to create, update or delete.
    """

    def __init__(self, *, session: AsyncSession) -> None:
        self.queries = SignalReadQueries(session)
        self.rollups = RollupQueries(session)

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
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
    ) -> LogPage:
        start, end = time_range(since, until)
        query = LogQuery(
            project_id=project_id,
            limit=LOG_KEYSET.fetch_size(limit),
            service=service or None,
            min_level=parse_level(level),
            trace_id=trace_id or None,
            q=q or None,
            since=start,
            until=end,
            after=LOG_KEYSET.after(cursor),
        )
        page, next_cursor = LOG_KEYSET.page(await self.queries.list_logs(query), limit)
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
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
    ) -> SpanPage:
        start, end = time_range(since, until)
        if min_duration_ms is not None and not (math.isfinite(min_duration_ms) and min_duration_ms >= 0):
            raise BadRequestError("min_duration_ms must be a finite number >= 0.")
        query = SpanQuery(
            project_id=project_id,
            limit=SPAN_KEYSET.fetch_size(limit),
            service=service or None,
            name=name or None,
            status=parse_span_status(status),
            min_duration_ms=min_duration_ms,
            since=start,
            until=end,
            after=SPAN_KEYSET.after(cursor),
        )
        page, next_cursor = SPAN_KEYSET.page(await self.queries.list_spans(query), limit)
        return SpanPage(items=[span_item(row) for row in page], next_cursor=next_cursor)

    async def get_trace(self, project_id: UUID, trace_id: str) -> TraceView:
        """The trace as a tree; NotFoundError when the project has no span and no log with this id."""
        summary = await self.queries.trace_summary(project_id, trace_id)
        if summary.span_count == 0 and summary.log_count == 0:
            raise NotFoundError(f"Trace {trace_id!r} not found.")
        span_rows = await self.queries.trace_spans(project_id, trace_id, TRACE_MAX_SPANS)
        log_rows = await self.queries.trace_logs(project_id, trace_id, TRACE_MAX_LOGS)
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
        start, end = time_range(since, until)
        end = end or utcnow()
        start = start or end - DEFAULT_SERIES_RANGE  # end >= MIN_TIME (lib.pagination): cannot underflow
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
        plan = plan_rollups(start, end, step) if agg_name in ROLLUP_AGGREGATES else None
        if plan is None:
            rows = await self.queries.metric_series(query)
        else:
            rows = await self.rollups.metric_series(
                plan,
                project_id=project_id,
                name=name,
                agg=agg_name,
                step=step,
                service=query.service,
                labels=query.labels,
            )
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
        rows = await self.rollups.service_stats(project_id, utcnow() - timedelta(seconds=window))
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
