"""GET /api/v1/incidents (filters, keyset pages) and GET /api/v1/incidents/{id} (samples)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.incidents import grouping
from tests.conftest import Tenant
from tests.incidents.seed import log_row, seed, span_row


class TestIncidentList:
    async def test_filters_and_pagination(
        self,
        client: AsyncTestClient[Litestar],
        session_maker: async_sessionmaker[AsyncSession],
        tenant: Tenant,
        clock: datetime,
    ) -> None:
        rows = [
            log_row(tenant.project_id, service=f"svc{i % 3}", message=f"failure kind {chr(97 + i)}", ts=clock)
            for i in range(7)
        ]
        rows.append(
            log_row(tenant.project_id, service="db", message="disk corrupted", ts=clock, level="CRITICAL")
        )
        await seed(session_maker, "log", rows)
        await grouping.run_grouping(session_maker, now=clock)
        headers = tenant.read

        seen: list[str] = []
        cursor = None
        for _ in range(10):
            params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
            page = (await client.get("/api/v1/incidents", params=params, headers=headers)).json()
            seen.extend(item["id"] for item in page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == 8
        assert len(set(seen)) == 8
        assert seen == sorted(seen, reverse=True)

        item = (await client.get("/api/v1/incidents", params={"limit": "1"}, headers=headers)).json()[
            "items"
        ][0]
        assert set(item) >= {
            "id",
            "fingerprint",
            "title",
            "service_name",
            "severity",
            "status",
            "count",
            "first_seen",
            "last_seen",
            "sample_trace_ids",
            "reopened_count",
            "analysis",
        }
        critical = (
            await client.get("/api/v1/incidents", params={"severity": "critical"}, headers=headers)
        ).json()
        assert [i["service_name"] for i in critical["items"]] == ["db"]
        svc = (await client.get("/api/v1/incidents", params={"service": "svc1"}, headers=headers)).json()
        assert len(svc["items"]) == 2
        open_ = await client.get("/api/v1/incidents", params={"status": "open,acknowledged"}, headers=headers)
        assert len(open_.json()["items"]) == 8
        resolved = await client.get("/api/v1/incidents", params={"status": "resolved"}, headers=headers)
        assert resolved.json()["items"] == []

        for bad in (
            {"limit": "0"},
            {"limit": "1001"},
            {"status": "closed"},
            {"severity": "urgent"},
            {"cursor": "x"},
            {"cursor": "WyJub3QtYS11dWlkIl0"},  # a well-formed cursor holding ["not-a-uuid"]
        ):
            response = await client.get("/api/v1/incidents", params=bad, headers=headers)
            assert response.status_code == 400, bad
            assert response.json()["detail"]
        assert (await client.get("/api/v1/incidents")).status_code == 401
        ingest_only = tenant.ingest
        assert (await client.get("/api/v1/incidents", headers=ingest_only)).status_code == 403

    async def test_since_until_keep_incidents_active_in_the_range(
        self,
        client: AsyncTestClient[Litestar],
        session_maker: async_sessionmaker[AsyncSession],
        tenant: Tenant,
        clock: datetime,
    ) -> None:
        later = clock + timedelta(minutes=10)
        await seed(
            session_maker,
            "log",
            [
                log_row(tenant.project_id, service="api", message="early failure", ts=clock),
                log_row(tenant.project_id, service="api", message="late failure", ts=later),
            ],
        )
        await grouping.run_grouping(session_maker, now=later)
        headers = tenant.read
        middle = (clock + timedelta(minutes=5)).astimezone(timezone(timedelta(hours=2))).isoformat()
        assert middle.endswith("+02:00")

        # "+02:00" sent unencoded arrives as " 02:00": the offset still counts, as for /logs
        since = await client.get(f"/api/v1/incidents?since={middle}", headers=headers)
        assert since.status_code == 200, since.text
        assert [i["title"] for i in since.json()["items"]] == ["api: late failure"]
        until = await client.get(f"/api/v1/incidents?until={middle}", headers=headers)
        assert until.status_code == 200, until.text
        assert [i["title"] for i in until.json()["items"]] == ["api: early failure"]
        bad = await client.get("/api/v1/incidents", params={"since": "yesterday"}, headers=headers)
        assert bad.status_code == 400
        assert bad.json()["detail"].startswith("since must be an RFC 3339 timestamp")

    async def test_detail_has_sample_logs_and_spans(
        self,
        client: AsyncTestClient[Litestar],
        session_maker: async_sessionmaker[AsyncSession],
        tenant: Tenant,
        clock: datetime,
    ) -> None:
        await seed(
            session_maker,
            "log",
            [
                log_row(
                    tenant.project_id,
                    service="api",
                    message=f"GET /items/{i} crashed",
                    ts=clock + timedelta(seconds=i),
                    trace_id=f"tr{i}",
                )
                for i in range(8)
            ],
        )
        await seed(
            session_maker,
            "span",
            [
                span_row(
                    tenant.project_id,
                    service="api",
                    name="GET /items/<num> crashed",
                    trace_id="trs",
                    span_id="a",
                    start=clock,
                )
            ],
        )
        await grouping.run_grouping(session_maker, now=clock)
        headers = tenant.read
        [item] = (await client.get("/api/v1/incidents", headers=headers)).json()["items"]
        assert item["count"] == 9  # the span name has the same template: one incident
        detail = (await client.get(f"/api/v1/incidents/{item['id']}", headers=headers)).json()
        assert detail["analysis"] is None
        assert len(detail["sample_logs"]) == 5
        assert detail["sample_logs"][0]["message"] == "GET /items/7 crashed"
        assert detail["sample_logs"][0]["level"] == "ERROR"
        assert [s["trace_id"] for s in detail["sample_spans"]] == ["trs"]
        assert detail["sample_spans"][0]["status"] == "ERROR"
