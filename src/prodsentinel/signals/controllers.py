"""The query API (SPEC §5, scope read): thin controllers over ``SignalQueryService``.

List parameters are ``lib.pagination``'s (``Since``/``Until`` as strings parsed by the service, so a bad
value answers 400 with a sentence naming the parameter, and an unencoded ``+02:00`` still parses).
"""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get
from litestar.di import Provide
from litestar.params import PathParameter, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from prodsentinel.auth.guards import requires_scope
from prodsentinel.auth.scopes import Principal, Scope
from prodsentinel.lib.pagination import DEFAULT_LIMIT, Cursor, Limit, Since, Until
from prodsentinel.lib.vocabulary import LOG_LEVEL_NAMES, SPAN_STATUSES
from prodsentinel.signals.schemas import LogPage, MetricSeries, ServiceList, SpanPage, TraceView
from prodsentinel.signals.services import SignalQueryService

__all__ = ("LogController", "MetricController", "ServiceController", "SpanController")

ServiceFilter = Annotated[str | None, QueryParameter(description="Exact service_name.")]


async def provide_signal_query_service(db_session: AsyncSession) -> SignalQueryService:
    return SignalQueryService(session=db_session)


class _ReadController(Controller):
    guards = [requires_scope(Scope.READ)]
    dependencies = {"queries": Provide(provide_signal_query_service)}


class LogController(_ReadController):
    path = "/api/v1/logs"
    tags = ["logs"]

    @get(
        "/",
        summary="Search logs, newest first, with keyset pagination",
        description=(
            "Ordered by (timestamp, id) descending. Walking next_cursor until it is null returns every "
            "matching row exactly once, even while new rows arrive."
        ),
    )
    async def list_logs(
        self,
        queries: SignalQueryService,
        principal: Principal,
        service: ServiceFilter = None,
        level: Annotated[
            str | None,
            QueryParameter(description=f"Minimum level: {', '.join(LOG_LEVEL_NAMES)} (case-insensitive)."),
        ] = None,
        trace_id: Annotated[str | None, QueryParameter(description="Exact trace_id.")] = None,
        q: Annotated[
            str | None, QueryParameter(description="Case-insensitive substring of the message.")
        ] = None,
        since: Since = None,
        until: Until = None,
        limit: Limit = DEFAULT_LIMIT,
        cursor: Cursor = None,
    ) -> LogPage:
        return await queries.list_logs(
            principal.project_id,
            service=service,
            level=level,
            trace_id=trace_id,
            q=q,
            since=since,
            until=until,
            limit=limit,
            cursor=cursor,
        )


class SpanController(_ReadController):
    path = "/api/v1"
    tags = ["spans"]

    @get(
        "/spans",
        summary="Search spans, newest first by start_time, with keyset pagination",
        description="Ordered by (start_time, id) descending; same cursor semantics as /api/v1/logs.",
    )
    async def list_spans(
        self,
        queries: SignalQueryService,
        principal: Principal,
        service: ServiceFilter = None,
        name: Annotated[str | None, QueryParameter(description="Exact span name.")] = None,
        status: Annotated[
            str | None, QueryParameter(description=f"One of {', '.join(SPAN_STATUSES)}.")
        ] = None,
        min_duration_ms: Annotated[
            float | None, QueryParameter(description="Only spans lasting at least this long.")
        ] = None,
        since: Since = None,
        until: Until = None,
        limit: Limit = DEFAULT_LIMIT,
        cursor: Cursor = None,
    ) -> SpanPage:
        return await queries.list_spans(
            principal.project_id,
            service=service,
            name=name,
            status=status,
            min_duration_ms=min_duration_ms,
            since=since,
            until=until,
            limit=limit,
            cursor=cursor,
        )

    @get(
        "/traces/{trace_id:str}",
        summary="One trace: spans nested by parent (orphans at the root) and its logs",
        description="404 when the project has neither a span nor a log with this trace_id.",
    )
    async def get_trace(
        self,
        queries: SignalQueryService,
        principal: Principal,
        trace_id: Annotated[str, PathParameter(description="The trace_id.")],
    ) -> TraceView:
        return await queries.get_trace(principal.project_id, trace_id)


class MetricController(_ReadController):
    path = "/api/v1/metrics"
    tags = ["metrics"]

    @get(
        "/series",
        summary="A metric aggregated into time buckets",
        description=(
            "Buckets start at multiples of step seconds since the Unix epoch; empty buckets are "
            "omitted. Percentiles interpolate linearly (PostgreSQL percentile_cont). Without since/until "
            "the last hour is returned."
        ),
    )
    async def series(
        self,
        queries: SignalQueryService,
        principal: Principal,
        name: Annotated[str, QueryParameter(description="Metric name.")],
        service: ServiceFilter = None,
        since: Since = None,
        until: Until = None,
        step: Annotated[
            int, QueryParameter(description="Bucket width in seconds (>= 1).", schema_extra={"minimum": 1})
        ] = 60,
        agg: Annotated[
            str, QueryParameter(description="avg, min, max, sum, count, p50, p95 or p99.")
        ] = "avg",
        labels: Annotated[
            str | None,
            QueryParameter(description="Only points carrying all these labels: key:value,key2:value2."),
        ] = None,
    ) -> MetricSeries:
        return await queries.metric_series(
            principal.project_id,
            name=name,
            service=service,
            since=since,
            until=until,
            step=step,
            agg=agg,
            labels=labels,
        )


class ServiceController(_ReadController):
    path = "/api/v1/services"
    tags = ["services"]

    @get("/", summary="Services seen in the window with signal counts and error rate")
    async def list_services(
        self,
        queries: SignalQueryService,
        principal: Principal,
        window: Annotated[
            int,
            QueryParameter(
                description="Seconds back from now (1 .. 7776000).",
                schema_extra={"minimum": 1, "maximum": 7_776_000},
            ),
        ] = 3600,
    ) -> ServiceList:
        return await queries.list_services(principal.project_id, window=window)
