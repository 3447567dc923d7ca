from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.lib.pagination import encode_cursor
from prodsentinel.signals.models import LogRecord
from tests.conftest import Tenant
from tests.factories import insert_rows, log_row

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ALL = ["disk full", "Connection REFUSED", "slow query 100% cpu", "User 42 logged in", "debug noise"]
Client = AsyncTestClient[Litestar]


async def get_logs(client: Client, tenant: Tenant, **params: Any) -> dict[str, Any]:
    response = await client.get("/api/v1/logs", params=params, headers=tenant.read)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def walk(client: Client, tenant: Tenant, **params: Any) -> list[dict[str, Any]]:
    """Every item of every page, following next_cursor until it is null."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(10_000):
        page = await get_logs(client, tenant, **params, **({"cursor": cursor} if cursor else {}))
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("pagination never ended")


class TestLogFilters:
    @pytest.fixture
    async def seeded(
        self, tenant: Tenant, session_maker: async_sessionmaker[AsyncSession]
    ) -> list[dict[str, Any]]:
        rows = [
            log_row(tenant.project_id, service_name="api", level=10, message="debug noise", timestamp=T0),
            log_row(
                tenant.project_id,
                service_name="api",
                level=20,
                message="User 42 logged in",
                timestamp=T0 + timedelta(seconds=1),
                trace_id="t-1",
            ),
            log_row(
                tenant.project_id,
                service_name="api",
                level=30,
                message="slow query 100% cpu",
                timestamp=T0 + timedelta(seconds=2),
            ),
            log_row(
                tenant.project_id,
                service_name="db",
                level=40,
                message="Connection REFUSED",
                timestamp=T0 + timedelta(seconds=3),
                trace_id="t-1",
                span_id="s-1",
            ),
            log_row(
                tenant.project_id,
                service_name="db",
                level=50,
                message="disk full",
                timestamp=T0 + timedelta(seconds=4),
            ),
        ]
        await insert_rows(session_maker, LogRecord, rows)
        return rows

    async def test_no_filter_lists_all_newest_first_with_ingest_field_names(
        self, client: Client, tenant: Tenant, seeded: list[dict[str, Any]]
    ) -> None:
        body = await get_logs(client, tenant)
        assert body["next_cursor"] is None
        assert [item["message"] for item in body["items"]] == [r["message"] for r in reversed(seeded)]
        item = body["items"][1]
        assert set(item) == {
            "signal_id",
            "trace_id",
            "span_id",
            "service_name",
            "timestamp",
            "level",
            "message",
            "attributes",
        }
        assert item == {
            "signal_id": str(seeded[3]["signal_id"]),
            "trace_id": "t-1",
            "span_id": "s-1",
            "service_name": "db",
            "timestamp": "2026-03-01T12:00:03Z",
            "level": "ERROR",
            "message": "Connection REFUSED",
            "attributes": seeded[3]["attributes"],
        }
        assert [item["level"] for item in body["items"]] == ["CRITICAL", "ERROR", "WARN", "INFO", "DEBUG"]

    @pytest.mark.parametrize(
        ("params", "expected"),
        [
            ({"service": "api"}, ["slow query 100% cpu", "User 42 logged in", "debug noise"]),
            ({"service": "nope"}, []),
            ({"level": "warning"}, ["disk full", "Connection REFUSED", "slow query 100% cpu"]),
            ({"level": "WARN"}, ["disk full", "Connection REFUSED", "slow query 100% cpu"]),
            ({"level": "error"}, ["disk full", "Connection REFUSED"]),
            ({"level": "Critical"}, ["disk full"]),
            ({"level": "debug"}, ALL),
            ({"trace_id": "t-1"}, ["Connection REFUSED", "User 42 logged in"]),
            ({"q": "refused"}, ["Connection REFUSED"]),
            ({"q": "USER 42"}, ["User 42 logged in"]),
            ({"q": "100%"}, ["slow query 100% cpu"]),
            ({"q": "%"}, ["slow query 100% cpu"]),
            ({"q": "_"}, []),
            ({"since": "2026-03-01T12:00:03Z"}, ["disk full", "Connection REFUSED"]),
            ({"until": "2026-03-01T12:00:01Z"}, ["debug noise"]),
            (
                {"since": "2026-03-01T12:00:01Z", "until": "2026-03-01T12:00:03Z"},
                ["slow query 100% cpu", "User 42 logged in"],
            ),
            # naive = UTC; an offset is honoured (13:00:03+01:00 is 12:00:03Z)
            ({"since": "2026-03-01T12:00:04"}, ["disk full"]),
            ({"since": "2026-03-01T13:00:03+01:00"}, ["disk full", "Connection REFUSED"]),
            ({"service": "db", "level": "critical", "q": "DISK"}, ["disk full"]),
            ({"service": "api", "trace_id": "t-1", "level": "info"}, ["User 42 logged in"]),
        ],
    )
    async def test_filters(
        self,
        client: Client,
        tenant: Tenant,
        seeded: list[dict[str, Any]],
        params: dict[str, str],
        expected: list[str],
    ) -> None:
        body = await get_logs(client, tenant, **params)
        assert [item["message"] for item in body["items"]] == expected

    async def test_unencoded_plus_in_offset_is_understood(
        self, client: Client, tenant: Tenant, seeded: list[dict[str, Any]]
    ) -> None:
        # A client that forgets to percent-encode "+" sends a space; the offset still counts.
        response = await client.get("/api/v1/logs?since=2026-03-01T13:00:04+01:00", headers=tenant.read)
        assert response.status_code == 200
        assert [item["message"] for item in response.json()["items"]] == ["disk full"]


class TestLogValidation:
    @pytest.mark.parametrize(
        ("params", "fragment"),
        [
            ({"limit": "0"}, "limit must be between 1 and 1000, got 0."),
            ({"limit": "1001"}, "limit must be between 1 and 1000, got 1001."),
            ({"limit": "-5"}, "limit"),
            ({"since": "yesterday"}, "since must be an RFC 3339 timestamp"),
            ({"until": "2026-13-01T00:00:00Z"}, "until must be an RFC 3339 timestamp"),
            ({"since": "2026-03-01"}, "since must be an RFC 3339 timestamp"),
            ({"since": "2026-03-02T00:00:00Z", "until": "2026-03-01T00:00:00Z"}, "since must not be later"),
            ({"level": "LOUD"}, "level must be one of"),
            ({"cursor": "not-a-cursor"}, "cursor is not valid"),
            ({"cursor": encode_cursor(["spans", T0, 1])}, "cursor is not valid"),  # a span cursor
            ({"cursor": encode_cursor([1, 2, 3])}, "cursor is not valid"),
            ({"cursor": encode_cursor(["logs", "2026-03-01T12:00:00", 1])}, "cursor is not valid"),  # naive
        ],
    )
    async def test_bad_parameters_are_400_with_a_clear_message(
        self, client: Client, tenant: Tenant, params: dict[str, str], fragment: str
    ) -> None:
        response = await client.get("/api/v1/logs", params=params, headers=tenant.read)
        assert response.status_code == 400, response.text
        body = response.json()
        assert fragment in body["detail"]
        assert body["request_id"]

    async def test_non_integer_limit_is_400(self, client: Client, tenant: Tenant) -> None:
        response = await client.get("/api/v1/logs", params={"limit": "ten"}, headers=tenant.read)
        assert response.status_code == 400

    async def test_limit_bounds_are_accepted(self, client: Client, tenant: Tenant) -> None:
        for limit in ("1", "1000"):
            response = await client.get("/api/v1/logs", params={"limit": limit}, headers=tenant.read)
            assert response.status_code == 200


class TestLogPagination:
    async def test_walk_yields_every_row_once_with_identical_timestamps(
        self, client: Client, tenant: Tenant, session_maker: async_sessionmaker[AsyncSession]
    ) -> None:
        # 230 rows on only 9 distinct timestamps: ties are broken by id, so no page boundary can
        # repeat or skip a row.
        rows = [
            log_row(tenant.project_id, timestamp=T0 + timedelta(seconds=i % 9), message=f"m{i}")
            for i in range(230)
        ]
        await insert_rows(session_maker, LogRecord, rows)
        for limit in (1, 7, 100, 230, 1000):
            items = await walk(client, tenant, limit=limit)
            ids = [item["signal_id"] for item in items]
            assert len(ids) == 230, limit
            assert set(ids) == {str(r["signal_id"]) for r in rows}
            stamps = [item["timestamp"] for item in items]
            assert stamps == sorted(stamps, reverse=True)

    async def test_last_page_has_null_cursor_even_when_full(
        self, client: Client, tenant: Tenant, session_maker: async_sessionmaker[AsyncSession]
    ) -> None:
        await insert_rows(session_maker, LogRecord, [log_row(tenant.project_id) for _ in range(10)])
        first = await get_logs(client, tenant, limit=5)
        assert first["next_cursor"] is not None
        second = await get_logs(client, tenant, limit=5, cursor=first["next_cursor"])
        assert len(second["items"]) == 5
        assert second["next_cursor"] is None

    async def test_walk_with_filter_while_new_rows_arrive(
        self, client: Client, tenant: Tenant, session_maker: async_sessionmaker[AsyncSession]
    ) -> None:
        existing = [
            log_row(tenant.project_id, service_name="api", level=40, timestamp=T0 + timedelta(seconds=i // 3))
            for i in range(60)
        ]
        await insert_rows(session_maker, LogRecord, existing)
        seen: list[str] = []
        cursor: str | None = None
        arrived: list[dict[str, Any]] = []
        while True:
            params: dict[str, Any] = {"service": "api", "level": "error", "limit": 8}
            if cursor:
                params["cursor"] = cursor
            page = await get_logs(client, tenant, **params)
            seen.extend(item["signal_id"] for item in page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
            # Between pages: newer rows, rows on the very timestamps being walked, late (older)
            # rows, and rows the filter excludes.
            batch = [
                log_row(tenant.project_id, service_name="api", level=40, timestamp=T0 + timedelta(hours=1)),
                log_row(tenant.project_id, service_name="api", level=50, timestamp=T0 + timedelta(seconds=9)),
                log_row(
                    tenant.project_id,
                    service_name="api",
                    level=40,
                    timestamp=T0 - timedelta(hours=1, seconds=len(arrived)),  # older than any so far
                ),
                log_row(tenant.project_id, service_name="api", level=20, timestamp=T0),
                log_row(tenant.project_id, service_name="web", level=40, timestamp=T0),
            ]
            await insert_rows(session_maker, LogRecord, batch)
            arrived.extend(batch)
        assert len(seen) == len(set(seen)), "a row was returned twice"
        assert {str(r["signal_id"]) for r in existing} <= set(seen), "a row present at the start was skipped"
        excluded = {str(r["signal_id"]) for r in arrived if r["service_name"] != "api" or r["level"] < 40}
        assert not excluded & set(seen)
        late = {str(r["signal_id"]) for r in arrived if r["timestamp"] < T0}
        assert late <= set(seen), "rows older than the walk's position are reached by later pages"
