"""Project isolation, scopes and the OpenAPI document of the query API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.signals.models import LogRecord, MetricPoint, Span
from tests.conftest import Tenant
from tests.factories import insert_rows, log_row, metric_row, span_row

Client = AsyncTestClient[Litestar]

READ_PATHS = [
    "/api/v1/logs",
    "/api/v1/spans",
    "/api/v1/traces/shared-trace",
    "/api/v1/metrics/series?name=shared.metric",
    "/api/v1/services",
]


async def seed_everything(
    session_maker: async_sessionmaker[AsyncSession], tenant: Tenant, service: str
) -> None:
    """One log, span and metric point of ``service`` in ``tenant``'s project, on shared ids and names."""
    ts = datetime.now(UTC) - timedelta(minutes=1)
    await insert_rows(
        session_maker,
        LogRecord,
        [log_row(tenant.project_id, trace_id="shared-trace", service_name=service, timestamp=ts)],
    )
    await insert_rows(
        session_maker,
        Span,
        [span_row(tenant.project_id, trace_id="shared-trace", service_name=service, start_time=ts)],
    )
    await insert_rows(
        session_maker,
        MetricPoint,
        [metric_row(tenant.project_id, name="shared.metric", service_name=service, timestamp=ts)],
    )


def services_in(path: str, body: dict[str, Any]) -> set[str]:
    """Every service_name an answer of ``path`` mentions."""
    if path.startswith("/api/v1/traces"):
        return (
            set(body["services"])
            | {s["service_name"] for s in body["spans"]}
            | {log["service_name"] for log in body["logs"]}
        )
    if path.startswith("/api/v1/metrics"):
        return (
            {body["service"]}
            if body["buckets"] and body["service"]
            else ({"?"} if body["buckets"] else set())
        )
    return {item["service_name"] for item in body["items"]}


class TestProjectIsolation:
    async def test_every_read_endpoint_sees_only_its_own_project(
        self,
        client: Client,
        tenant: Tenant,
        other_tenant: Tenant,
        session_maker: async_sessionmaker[AsyncSession],
    ) -> None:
        await seed_everything(session_maker, tenant, "mine")
        await seed_everything(session_maker, other_tenant, "theirs")
        for path in READ_PATHS:
            mine = await client.get(path, headers=tenant.read)
            theirs = await client.get(path, headers=other_tenant.read)
            assert mine.status_code == theirs.status_code == 200, path
            if path.startswith("/api/v1/metrics"):
                # one point each, so a count per project proves the other's point is excluded
                for response in (mine, theirs):
                    assert [b["value"] for b in response.json()["buckets"]] != []
                count = await client.get(path + "&agg=count&step=86400", headers=tenant.read)
                assert sum(b["value"] for b in count.json()["buckets"]) == 1
                continue
            assert services_in(path, mine.json()) == {"mine"}, path
            assert services_in(path, theirs.json()) == {"theirs"}, path

    async def test_other_projects_trace_is_404(
        self,
        client: Client,
        tenant: Tenant,
        other_tenant: Tenant,
        session_maker: async_sessionmaker[AsyncSession],
    ) -> None:
        await insert_rows(session_maker, Span, [span_row(other_tenant.project_id, trace_id="private-trace")])
        await insert_rows(
            session_maker, LogRecord, [log_row(other_tenant.project_id, trace_id="private-trace")]
        )
        assert (
            await client.get("/api/v1/traces/private-trace", headers=other_tenant.read)
        ).status_code == 200
        response = await client.get("/api/v1/traces/private-trace", headers=tenant.read)
        assert response.status_code == 404
        assert response.json()["request_id"]

    async def test_a_cursor_cannot_reach_into_another_project(
        self,
        client: Client,
        tenant: Tenant,
        other_tenant: Tenant,
        session_maker: async_sessionmaker[AsyncSession],
    ) -> None:
        await insert_rows(session_maker, LogRecord, [log_row(other_tenant.project_id) for _ in range(3)])
        await insert_rows(session_maker, LogRecord, [log_row(tenant.project_id) for _ in range(3)])
        first = (await client.get("/api/v1/logs?limit=1", headers=other_tenant.read)).json()
        page = await client.get("/api/v1/logs", params={"cursor": first["next_cursor"]}, headers=tenant.read)
        assert page.status_code == 200
        assert {item["signal_id"] for item in page.json()["items"]} <= {
            item["signal_id"]
            for item in (await client.get("/api/v1/logs", headers=tenant.read)).json()["items"]
        }


class TestScopes:
    @pytest.mark.parametrize("path", READ_PATHS)
    async def test_no_key_is_401(self, client: Client, path: str) -> None:
        response = await client.get(path)
        assert response.status_code == 401
        assert response.json()["detail"]

    @pytest.mark.parametrize("path", READ_PATHS)
    async def test_ingest_only_key_is_403(self, client: Client, tenant: Tenant, path: str) -> None:
        response = await client.get(path, headers=tenant.ingest)
        assert response.status_code == 403
        assert "read" in response.json()["detail"]

    @pytest.mark.parametrize("scope", ["read", "operate", "admin"])
    async def test_read_operate_and_admin_may_read(self, client: Client, tenant: Tenant, scope: str) -> None:
        for path in READ_PATHS:
            response = await client.get(path, headers=getattr(tenant, scope))
            assert response.status_code == (404 if "traces" in path else 200), (scope, path)


class TestOpenAPI:
    async def test_query_paths_tags_and_schemas(self, client: Client) -> None:
        response = await client.get("/schema/openapi.json")
        assert response.status_code == 200
        doc = response.json()
        expected_tags = {
            "/api/v1/logs": "logs",
            "/api/v1/spans": "spans",
            "/api/v1/traces/{trace_id}": "spans",
            "/api/v1/metrics/series": "metrics",
            "/api/v1/services": "services",
        }
        for path, tag in expected_tags.items():
            operation = doc["paths"][path]["get"]
            assert operation["tags"] == [tag], path
            assert "200" in operation["responses"], path
            ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
            assert ref.startswith("#/components/schemas/"), path
        schemas = doc["components"]["schemas"]
        for name in (
            "LogPage",
            "LogItem",
            "SpanPage",
            "SpanItem",
            "SpanNode",
            "TraceView",
            "MetricSeries",
            "MetricBucket",
            "ServiceList",
            "ServiceItem",
        ):
            assert name in schemas, name
        assert set(schemas["LogItem"]["properties"]) >= {
            "signal_id",
            "trace_id",
            "span_id",
            "service_name",
            "timestamp",
            "level",
            "message",
            "attributes",
        }
        assert "duration_ms" in schemas["SpanItem"]["properties"]
        assert set(schemas["TraceView"]["properties"]) == {
            "trace_id",
            "duration_ms",
            "services",
            "error_span_ids",
            "spans",
            "logs",
        }
        assert schemas["SpanNode"]["properties"]["children"]["items"]["$ref"].endswith("/SpanNode")
        logs_params = {p["name"] for p in doc["paths"]["/api/v1/logs"]["get"]["parameters"]}
        assert logs_params >= {"service", "level", "trace_id", "q", "since", "until", "limit", "cursor"}
        series_params = {p["name"] for p in doc["paths"]["/api/v1/metrics/series"]["get"]["parameters"]}
        assert series_params >= {"name", "service", "since", "until", "step", "agg", "labels"}
