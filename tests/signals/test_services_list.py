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


async def services(client: Client, tenant: Tenant, **params: Any) -> list[dict[str, Any]]:
    response = await client.get("/api/v1/services", params=params, headers=tenant.read)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


class TestServices:
    async def test_counts_error_rate_and_last_seen_in_the_window(
        self, client: Client, tenant: Tenant, session_maker: async_sessionmaker[AsyncSession]
    ) -> None:
        now = datetime.now(UTC).replace(microsecond=0)
        recent = now - timedelta(minutes=10)
        old = now - timedelta(hours=3)
        await insert_rows(
            session_maker,
            LogRecord,
            [
                # api: 4 logs in the window, 1 ERROR + 1 CRITICAL; WARN does not count as an error
                log_row(tenant.project_id, service_name="api", level=20, timestamp=recent),
                log_row(tenant.project_id, service_name="api", level=30, timestamp=recent),
                log_row(tenant.project_id, service_name="api", level=40, timestamp=recent),
                log_row(
                    tenant.project_id, service_name="api", level=50, timestamp=now - timedelta(minutes=1)
                ),
                log_row(tenant.project_id, service_name="api", level=50, timestamp=old),  # outside
                # old-only service: absent with the default window
                log_row(tenant.project_id, service_name="legacy", level=40, timestamp=old),
            ],
        )
        await insert_rows(
            session_maker,
            Span,
            [
                # api: 4 spans, 1 ERROR -> (2 + 1) / (4 + 4)
                span_row(tenant.project_id, service_name="api", status=2, start_time=recent),
                span_row(tenant.project_id, service_name="api", status=1, start_time=recent),
                span_row(tenant.project_id, service_name="api", status=0, start_time=recent),
                span_row(
                    tenant.project_id, service_name="api", status=0, start_time=now - timedelta(minutes=2)
                ),
                # db: spans only, 1 of 2 errors
                span_row(tenant.project_id, service_name="db", status=2, start_time=recent),
                span_row(tenant.project_id, service_name="db", status=0, start_time=recent),
            ],
        )
        await insert_rows(
            session_maker,
            MetricPoint,
            [
                metric_row(tenant.project_id, service_name="api", timestamp=recent),
                # metrics only: error_rate 0, not a division by zero
                metric_row(tenant.project_id, service_name="node-exporter", timestamp=recent),
                metric_row(
                    tenant.project_id, service_name="node-exporter", timestamp=now - timedelta(seconds=30)
                ),
            ],
        )
        items = await services(client, tenant)
        assert [item["service_name"] for item in items] == ["api", "db", "node-exporter"]
        api, db, exporter = items
        assert {k: api[k] for k in ("logs", "spans", "metrics")} == {"logs": 4, "spans": 4, "metrics": 1}
        assert api["error_rate"] == pytest.approx(3 / 8)
        assert api["last_seen"] == (now - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        assert (db["logs"], db["spans"], db["metrics"], db["error_rate"]) == (0, 2, 0, 0.5)
        assert (exporter["logs"], exporter["spans"], exporter["metrics"], exporter["error_rate"]) == (
            0,
            0,
            2,
            0.0,
        )
        assert exporter["last_seen"] == (now - timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M:%SZ")

        wide = {item["service_name"]: item for item in await services(client, tenant, window=4 * 3600)}
        assert set(wide) == {"api", "db", "node-exporter", "legacy"}
        assert wide["api"]["logs"] == 5
        assert wide["api"]["error_rate"] == pytest.approx(4 / 9)
        assert wide["legacy"]["error_rate"] == 1.0

        narrow = await services(client, tenant, window=90)
        assert [(i["service_name"], i["logs"], i["spans"], i["metrics"]) for i in narrow] == [
            ("api", 1, 0, 0),
            ("node-exporter", 0, 0, 1),
        ]

    async def test_empty_project_has_no_services(self, client: Client, tenant: Tenant) -> None:
        assert await services(client, tenant) == []

    @pytest.mark.parametrize("window", ["0", "-1", "7776001", "hour"])
    async def test_bad_window_is_400(self, client: Client, tenant: Tenant, window: str) -> None:
        response = await client.get("/api/v1/services", params={"window": window}, headers=tenant.read)
        assert response.status_code == 400
