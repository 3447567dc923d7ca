from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.signals.models import LogRecord, Span
from tests.conftest import Tenant
from tests.factories import insert_rows, log_row, span_row

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
Client = AsyncTestClient[Litestar]
SessionMaker = async_sessionmaker[AsyncSession]


def at(ms: float) -> datetime:
    return T0 + timedelta(milliseconds=ms)


async def get_json(client: Client, tenant: Tenant, path: str, **params: Any) -> Any:
    response = await client.get(path, params=params, headers=tenant.read)
    assert response.status_code == 200, response.text
    return response.json()


def shape(nodes: list[dict[str, Any]]) -> list[Any]:
    """The tree as nested (span_id, [children]) pairs, for readable assertions."""
    return [(node["span_id"], shape(node["children"])) for node in nodes]


class TestSpanList:
    @pytest.fixture
    async def seeded(self, tenant: Tenant, session_maker: SessionMaker) -> list[dict[str, Any]]:
        rows = [
            span_row(
                tenant.project_id,
                span_id="a",
                service_name="api",
                name="GET /x",
                start_time=at(0),
                duration_ms=5,
                status=1,
            ),
            span_row(
                tenant.project_id,
                span_id="b",
                service_name="api",
                name="GET /y",
                start_time=at(1000),
                duration_ms=250,
                status=2,
            ),
            span_row(
                tenant.project_id,
                span_id="c",
                service_name="db",
                name="SELECT",
                start_time=at(2000),
                duration_ms=1500.5,
                status=0,
            ),
            span_row(
                tenant.project_id,
                span_id="d",
                service_name="db",
                name="SELECT",
                start_time=at(3000),
                duration_ms=20,
                status=2,
            ),
        ]
        await insert_rows(session_maker, Span, rows)
        return rows

    async def test_items_carry_ingest_fields_and_duration(
        self, client: Client, tenant: Tenant, seeded: list[dict[str, Any]]
    ) -> None:
        body = await get_json(client, tenant, "/api/v1/spans")
        assert [item["span_id"] for item in body["items"]] == ["d", "c", "b", "a"]
        assert body["next_cursor"] is None
        item = body["items"][1]
        assert item == {
            "signal_id": str(seeded[2]["signal_id"]),
            "trace_id": seeded[2]["trace_id"],
            "span_id": "c",
            "parent_span_id": None,
            "service_name": "db",
            "name": "SELECT",
            "start_time": "2026-03-01T12:00:02Z",
            "end_time": "2026-03-01T12:00:03.500500Z",
            "duration_ms": 1500.5,
            "status": "UNSET",
            "attributes": seeded[2]["attributes"],
        }

    @pytest.mark.parametrize(
        ("params", "expected"),
        [
            ({"service": "api"}, ["b", "a"]),
            ({"name": "SELECT"}, ["d", "c"]),
            ({"status": "error"}, ["d", "b"]),
            ({"status": "OK"}, ["a"]),
            ({"status": "unset"}, ["c"]),
            ({"min_duration_ms": "250"}, ["c", "b"]),
            ({"min_duration_ms": "1500.6"}, []),
            ({"since": "2026-03-01T12:00:01Z", "until": "2026-03-01T12:00:03Z"}, ["c", "b"]),
            ({"service": "db", "status": "ERROR", "min_duration_ms": "10"}, ["d"]),
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
        body = await get_json(client, tenant, "/api/v1/spans", **params)
        assert [item["span_id"] for item in body["items"]] == expected

    @pytest.mark.parametrize(
        "params",
        [
            {"limit": "0"},
            {"limit": "1001"},
            {"status": "FAILED"},
            {"min_duration_ms": "fast"},
            {"min_duration_ms": "nan"},
            {"min_duration_ms": "-1"},
            {"since": "noon"},
            {"cursor": "!!"},
        ],
    )
    async def test_bad_parameters_are_400(
        self, client: Client, tenant: Tenant, params: dict[str, str]
    ) -> None:
        response = await client.get("/api/v1/spans", params=params, headers=tenant.read)
        assert response.status_code == 400, response.text
        assert response.json()["detail"]

    async def test_walk_with_ties_and_concurrent_inserts(
        self, client: Client, tenant: Tenant, session_maker: SessionMaker
    ) -> None:
        existing = [span_row(tenant.project_id, start_time=at((i % 4) * 1000)) for i in range(45)]
        await insert_rows(session_maker, Span, existing)
        seen: list[str] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 6, **({"cursor": cursor} if cursor else {})}
            page = await get_json(client, tenant, "/api/v1/spans", **params)
            seen.extend(item["signal_id"] for item in page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
            await insert_rows(
                session_maker,
                Span,
                [
                    span_row(tenant.project_id, start_time=at(1000)),
                    span_row(tenant.project_id, start_time=at(9e6)),
                ],
            )
        assert len(seen) == len(set(seen))
        assert {str(r["signal_id"]) for r in existing} <= set(seen)


class TestTrace:
    async def test_tree_with_siblings_orphans_and_multiple_roots(
        self, client: Client, tenant: Tenant, session_maker: SessionMaker
    ) -> None:
        trace = "trace-shapes"
        rows = [
            # root r1 with children c2 (later) and c1 (earlier); c1 has a grandchild g1
            span_row(
                tenant.project_id,
                trace_id=trace,
                span_id="r1",
                start_time=at(0),
                duration_ms=900,
                service_name="gateway",
            ),
            span_row(
                tenant.project_id,
                trace_id=trace,
                span_id="c2",
                parent_span_id="r1",
                start_time=at(300),
                duration_ms=100,
                service_name="api",
                status=2,
            ),
            span_row(
                tenant.project_id,
                trace_id=trace,
                span_id="c1",
                parent_span_id="r1",
                start_time=at(100),
                duration_ms=100,
                service_name="api",
            ),
            span_row(
                tenant.project_id,
                trace_id=trace,
                span_id="g1",
                parent_span_id="c1",
                start_time=at(150),
                duration_ms=10,
                service_name="db",
                status=2,
            ),
            # an orphan whose parent was never received, with its own child
            span_row(
                tenant.project_id,
                trace_id=trace,
                span_id="o1",
                parent_span_id="missing",
                start_time=at(50),
                duration_ms=20,
                service_name="worker",
            ),
            span_row(
                tenant.project_id,
                trace_id=trace,
                span_id="o1c",
                parent_span_id="o1",
                start_time=at(60),
                duration_ms=5,
                service_name="worker",
            ),
            # a second root, starting last, ending last
            span_row(
                tenant.project_id,
                trace_id=trace,
                span_id="r2",
                start_time=at(1000),
                duration_ms=500,
                service_name="batch",
            ),
            # another trace's span with the same parent id must not leak in
            span_row(
                tenant.project_id, trace_id="other", span_id="x", parent_span_id="r1", start_time=at(10)
            ),
        ]
        await insert_rows(session_maker, Span, rows)
        logs = [
            log_row(
                tenant.project_id,
                trace_id=trace,
                span_id="g1",
                timestamp=at(155),
                level=40,
                message="query failed",
                service_name="db",
            ),
            log_row(
                tenant.project_id,
                trace_id=trace,
                span_id="c1",
                timestamp=at(120),
                level=20,
                message="handling",
                service_name="api",
            ),
            log_row(tenant.project_id, trace_id="other", timestamp=at(120), message="not mine"),
        ]
        await insert_rows(session_maker, LogRecord, logs)

        body = await get_json(client, tenant, f"/api/v1/traces/{trace}")
        assert body["trace_id"] == trace
        assert shape(body["spans"]) == [
            ("r1", [("c1", [("g1", [])]), ("c2", [])]),
            ("o1", [("o1c", [])]),
            ("r2", []),
        ]
        assert body["duration_ms"] == pytest.approx(1500.0)
        assert body["services"] == ["api", "batch", "db", "gateway", "worker"]
        assert body["error_span_ids"] == ["g1", "c2"]
        assert [log["message"] for log in body["logs"]] == ["handling", "query failed"]
        root = body["spans"][0]
        assert root["duration_ms"] == pytest.approx(900.0)
        assert root["status"] == "UNSET"
        assert {"signal_id", "parent_span_id", "name", "start_time", "end_time", "children"} <= set(root)
        assert body["spans"][1]["parent_span_id"] == "missing"

    async def test_deep_chain_of_fifty(
        self, client: Client, tenant: Tenant, session_maker: SessionMaker
    ) -> None:
        trace = "deep-chain"
        # inserted in reverse so the tree cannot come out right by insertion order alone
        rows = [
            span_row(
                tenant.project_id,
                trace_id=trace,
                span_id=f"s{i}",
                parent_span_id=f"s{i - 1}" if i else None,
                start_time=at(i),
                duration_ms=1000 - i,
            )
            for i in reversed(range(50))
        ]
        await insert_rows(session_maker, Span, rows)
        body = await get_json(client, tenant, f"/api/v1/traces/{trace}")
        assert len(body["spans"]) == 1
        node, depth = body["spans"][0], 1
        assert node["span_id"] == "s0"
        while node["children"]:
            assert len(node["children"]) == 1
            node = node["children"][0]
            assert node["span_id"] == f"s{depth}"
            depth += 1
        assert depth == 50
        assert body["duration_ms"] == pytest.approx(1000.0)
        assert body["error_span_ids"] == []
        assert body["logs"] == []

    async def test_many_siblings_sorted_by_start_time(
        self, client: Client, tenant: Tenant, session_maker: SessionMaker
    ) -> None:
        trace = "siblings"
        order = [7, 2, 9, 0, 4, 1, 8, 3, 6, 5]
        rows = [
            span_row(tenant.project_id, trace_id=trace, span_id="root", start_time=at(0), duration_ms=100)
        ]
        rows += [
            span_row(
                tenant.project_id,
                trace_id=trace,
                span_id=f"k{i}",
                parent_span_id="root",
                start_time=at(i + 1),
            )
            for i in order
        ]
        await insert_rows(session_maker, Span, rows)
        body = await get_json(client, tenant, f"/api/v1/traces/{trace}")
        assert shape(body["spans"]) == [("root", [(f"k{i}", []) for i in range(10)])]

    async def test_parent_cycle_still_shows_every_span_once(
        self, client: Client, tenant: Tenant, session_maker: SessionMaker
    ) -> None:
        trace = "cycle"
        rows = [
            span_row(tenant.project_id, trace_id=trace, span_id="a", parent_span_id="b", start_time=at(0)),
            span_row(tenant.project_id, trace_id=trace, span_id="b", parent_span_id="a", start_time=at(1)),
            span_row(
                tenant.project_id, trace_id=trace, span_id="self", parent_span_id="self", start_time=at(2)
            ),
        ]
        await insert_rows(session_maker, Span, rows)
        body = await get_json(client, tenant, f"/api/v1/traces/{trace}")
        assert shape(body["spans"]) == [("a", [("b", [])]), ("self", [])]

    async def test_trace_known_only_from_logs(
        self, client: Client, tenant: Tenant, session_maker: SessionMaker
    ) -> None:
        await insert_rows(
            session_maker, LogRecord, [log_row(tenant.project_id, trace_id="logs-only", service_name="cron")]
        )
        body = await get_json(client, tenant, "/api/v1/traces/logs-only")
        assert body["spans"] == []
        assert body["duration_ms"] == 0
        assert body["services"] == ["cron"]
        assert len(body["logs"]) == 1

    async def test_unknown_trace_is_404(self, client: Client, tenant: Tenant) -> None:
        response = await client.get("/api/v1/traces/nope", headers=tenant.read)
        assert response.status_code == 404
        assert "not found" in response.json()["detail"]
