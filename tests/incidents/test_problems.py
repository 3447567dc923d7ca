"""Correlated problems (SPEC §14) through the real ingest API: cascades by trace, by dependency, the
window and its cap, merge and detach kept as rules, project isolation, outbox and SSE events, and
the demo's outage."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.audit.models import AuditEvent
from prodsentinel.incidents import grouping
from prodsentinel.lib import events
from prodsentinel.lib.database import libpq_url
from prodsentinel.notifications.models import OutboxItem
from prodsentinel.settings import Settings
from prodsentinel.system.demo import PAYMENTS_DB_DEPENDENCY, TelemetryGenerator
from tests.conftest import Tenant, TenantFactory
from tests.incidents.conftest import INCIDENT_EVENTS, add_channel

Client = AsyncTestClient[Litestar]
DB = {"db.system": "postgresql", "server.address": "orders-db", "db.name": "orders"}
DB_DEPENDENCY = "postgresql://orders-db/orders"
PROBLEM_EVENTS = ["PROBLEM_OPENED", "PROBLEM_ESCALATED", "PROBLEM_RESOLVED"]


def _ts(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _hex(n: int) -> str:
    return uuid.uuid4().hex[: n * 2] if n <= 16 else uuid.uuid4().hex


class Telemetry:
    """§4 ingest items for hand-built traces, posted through the real API with an ingest key."""

    def __init__(self) -> None:
        self.logs: list[dict[str, Any]] = []
        self.spans: list[dict[str, Any]] = []

    def span(
        self,
        *,
        trace: str,
        service: str,
        name: str,
        at: datetime,
        parent: dict[str, Any] | None = None,
        error: bool = True,
        ms: float = 20.0,
        attributes: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        item = {
            "signal_id": str(uuid.uuid4()),
            "trace_id": trace,
            "span_id": _hex(8),
            "parent_span_id": parent["span_id"] if parent else None,
            "service_name": service,
            "name": name,
            "start_time": _ts(at),
            "end_time": _ts(at + timedelta(milliseconds=ms)),
            "status": "ERROR" if error else "OK",
            "attributes": attributes or {},
        }
        self.spans.append(item)
        return item

    def log(self, *, service: str, message: str, at: datetime, span: dict[str, Any] | None = None) -> None:
        self.logs.append(
            {
                "signal_id": str(uuid.uuid4()),
                "trace_id": span["trace_id"] if span else None,
                "span_id": span["span_id"] if span else None,
                "service_name": service,
                "timestamp": _ts(at),
                "level": "ERROR",
                "message": message,
                "attributes": {},
            }
        )

    def cascade(self, at: datetime, *, db: dict[str, Any] = DB) -> str:
        """frontend -> checkout -> payments -> the database: every span of the chain fails, each
        service logs an error (the shape of a real outage)."""
        trace = _hex(16)
        front = self.span(trace=trace, service="frontend", name="GET /checkout", at=at, ms=300)
        check = self.span(
            trace=trace, service="checkout", name="POST /api/checkout", at=at, parent=front, ms=280
        )
        pay = self.span(trace=trace, service="payments", name="charge_card", at=at, parent=check, ms=250)
        query = self.span(
            trace=trace, service="payments", name="db.query", at=at, parent=pay, ms=200, attributes=db
        )
        self.log(
            service="payments", message="Database timeout", at=at + timedelta(milliseconds=200), span=query
        )
        self.log(
            service="checkout", message="Payment failed", at=at + timedelta(milliseconds=260), span=check
        )
        self.log(
            service="frontend",
            message="Checkout failed with 502",
            at=at + timedelta(milliseconds=300),
            span=front,
        )
        return trace

    async def send(self, client: Client, tenant: Tenant) -> None:
        for path, items in (("/api/v1/ingest/logs", self.logs), ("/api/v1/ingest/traces", self.spans)):
            if items:
                response = await client.post(path, json=items, headers=tenant.ingest)
                assert response.status_code == 202, response.text
        self.logs, self.spans = [], []


async def send_and_group(
    client: Client,
    tenant: Tenant,
    telemetry: Telemetry,
    session_maker: async_sessionmaker[AsyncSession],
    **kwargs: Any,
) -> grouping.GroupingResult:
    await telemetry.send(client, tenant)
    return await grouping.run_grouping(session_maker, **kwargs)


async def problems_of(client: Client, tenant: Tenant, **params: str) -> list[dict[str, Any]]:
    response = await client.get("/api/v1/problems", params=params, headers=tenant.read)
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


async def incidents_by_title(client: Client, tenant: Tenant) -> dict[str, dict[str, Any]]:
    response = await client.get("/api/v1/incidents", params={"limit": "100"}, headers=tenant.read)
    return {item["title"]: item for item in response.json()["items"]}


@pytest.fixture
def start() -> datetime:
    return datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)


class TestCorrelation:
    async def test_three_service_cascade_sharing_traces_is_one_problem_rooted_in_the_database(
        self, client: Client, tenant: Tenant, session_maker: async_sessionmaker[AsyncSession], start: datetime
    ) -> None:
        telemetry = Telemetry()
        for i in range(5):
            telemetry.cascade(start + timedelta(seconds=i))
        await send_and_group(client, tenant, telemetry, session_maker)

        [problem] = await problems_of(client, tenant)
        incidents = await incidents_by_title(client, tenant)
        assert len(incidents) == 7  # 4 failing spans + 3 error logs, in three services
        assert sorted(problem["incident_ids"]) == sorted(i["id"] for i in incidents.values())
        assert all(i["problem_id"] == problem["id"] for i in incidents.values())
        assert problem["services"] == ["checkout", "frontend", "payments"]
        assert problem["status"] == "open"
        assert problem["root"]["dependency"] == DB_DEPENDENCY
        assert problem["root"]["service"] == "payments"
        root_incident = next(i for i in incidents.values() if i["id"] == problem["root"]["incident_id"])
        assert root_incident["title"] == "payments: db.query"
        db_spans = {s.span_id for s in await _spans(session_maker, tenant.project_id, "db.query")}
        assert problem["root"]["span_id"] in db_spans
        assert {e["joined_by"] for e in problem["evidence"]} == {"trace"}
        assert all(e["signal_ids"] for e in problem["evidence"])
        assert problem["severity"] == max(
            (i["severity"] for i in incidents.values()), key=["low", "medium", "high", "critical"].index
        )
        detail = await client.get(f"/api/v1/problems/{problem['id']}", headers=tenant.read)
        assert detail.json() == problem

    async def test_two_services_failing_on_one_database_in_different_traces_is_one_problem(
        self, client: Client, tenant: Tenant, session_maker: async_sessionmaker[AsyncSession], start: datetime
    ) -> None:
        telemetry = Telemetry()
        for i in range(3):
            telemetry.span(
                trace=_hex(16),
                service="billing",
                name="insert invoice",
                at=start + timedelta(seconds=i),
                attributes=DB,
            )
        await send_and_group(client, tenant, telemetry, session_maker)
        for i in range(3):
            telemetry.span(
                trace=_hex(16),
                service="orders",
                name="select order",
                at=start + timedelta(seconds=60 + i),
                attributes=DB,
            )
        await send_and_group(client, tenant, telemetry, session_maker)

        [problem] = await problems_of(client, tenant)
        incidents = await incidents_by_title(client, tenant)
        assert problem["services"] == ["billing", "orders"]
        assert problem["root"]["dependency"] == DB_DEPENDENCY
        evidence = {e["incident_id"]: e for e in problem["evidence"]}
        assert evidence[incidents["orders: select order"]["id"]]["joined_by"] == "dependency"
        assert len(evidence[incidents["orders: select order"]["id"]]["signal_ids"]) == 3

    async def test_unrelated_errors_in_the_same_minute_are_two_problems(
        self, client: Client, tenant: Tenant, session_maker: async_sessionmaker[AsyncSession], start: datetime
    ) -> None:
        telemetry = Telemetry()
        telemetry.span(
            trace=_hex(16),
            service="search",
            name="query index",
            at=start,
            attributes={"peer.service": "elastic"},
        )
        telemetry.span(
            trace=_hex(16),
            service="mailer",
            name="send mail",
            at=start + timedelta(seconds=5),
            attributes={"url.full": "https://smtp.example.com:587/x"},
        )
        telemetry.log(service="auth", message="token signing key missing", at=start + timedelta(seconds=10))
        await send_and_group(client, tenant, telemetry, session_maker)

        problems = await problems_of(client, tenant)
        assert sorted((p["services"], p["root"]["dependency"]) for p in problems) == [
            (["auth"], None),
            (["mailer"], "smtp.example.com"),
            (["search"], "elastic"),
        ]
        assert all(len(p["incident_ids"]) == 1 for p in problems)


class TestWindow:
    async def test_each_join_extends_the_window(
        self, client: Client, tenant: Tenant, session_maker: async_sessionmaker[AsyncSession], start: datetime
    ) -> None:
        telemetry = Telemetry()
        for minutes, service in ((0, "a"), (8, "b"), (16, "c"), (40, "d")):
            at = start + timedelta(minutes=minutes)
            telemetry.span(trace=_hex(16), service=service, name="write", at=at, attributes=DB)
            await send_and_group(client, tenant, telemetry, session_maker, problem_window_seconds=600)
        problems = await problems_of(client, tenant)
        # c joins at +16 min, only because b's join at +8 extended the 10-minute window; d (+40) is late.
        assert sorted(p["services"] for p in problems) == [["a", "b", "c"], ["d"]]
        joined = next(p for p in problems if p["services"] == ["a", "b", "c"])
        assert datetime.fromisoformat(joined["window_until"]) == start + timedelta(minutes=26)

    async def test_no_join_after_24_hours_however_often_extended(
        self, client: Client, tenant: Tenant, session_maker: async_sessionmaker[AsyncSession], start: datetime
    ) -> None:
        first = start - timedelta(hours=26)
        telemetry = Telemetry()
        for hours, service in ((0, "a"), (12, "b"), (23, "c"), (25, "d")):
            telemetry.span(
                trace=_hex(16),
                service=service,
                name="write",
                at=first + timedelta(hours=hours),
                attributes=DB,
            )
            await send_and_group(client, tenant, telemetry, session_maker, problem_window_seconds=20 * 3600)
        problems = await problems_of(client, tenant)
        assert sorted(p["services"] for p in problems) == [["a", "b", "c"], ["d"]]
        capped = next(p for p in problems if p["services"] == ["a", "b", "c"])
        assert datetime.fromisoformat(capped["window_until"]) == first + timedelta(hours=24)


class TestByHand:
    async def test_merge_then_new_occurrences_stay_merged(
        self, client: Client, tenant: Tenant, session_maker: async_sessionmaker[AsyncSession], start: datetime
    ) -> None:
        telemetry = Telemetry()
        telemetry.log(service="api", message="rate limiter unavailable", at=start)
        telemetry.log(service="worker", message="queue backlog too large", at=start + timedelta(seconds=1))
        await send_and_group(client, tenant, telemetry, session_maker)
        problems = await problems_of(client, tenant)
        assert len(problems) == 2
        target, other = sorted(problems, key=lambda p: p["services"])

        body = {"problem_id": other["id"]}
        assert (
            await client.post(f"/api/v1/problems/{target['id']}/merge", json=body, headers=tenant.read)
        ).status_code == 403
        response = await client.post(
            f"/api/v1/problems/{target['id']}/merge", json=body, headers=tenant.operate
        )
        assert response.status_code == 200, response.text
        merged = response.json()
        assert merged["services"] == ["api", "worker"]
        assert {e["joined_by"] for e in merged["evidence"]} == {"trace", "merge"}
        gone = (await client.get(f"/api/v1/problems/{other['id']}", headers=tenant.read)).json()
        assert (gone["status"], gone["merged_into"]) == ("resolved", target["id"])
        again = await client.post(f"/api/v1/problems/{target['id']}/merge", json=body, headers=tenant.operate)
        assert again.status_code == 409
        same = await client.post(
            f"/api/v1/problems/{target['id']}/merge",
            json={"problem_id": target["id"]},
            headers=tenant.operate,
        )
        assert same.status_code == 400

        # Both incidents resolve (the problem with them), then both regress apart: they stay together.
        for incident_id in merged["incident_ids"]:
            resolved = await client.post(f"/api/v1/incidents/{incident_id}/resolve", headers=tenant.operate)
            assert resolved.status_code == 200
        assert (await client.get(f"/api/v1/problems/{target['id']}", headers=tenant.read)).json()[
            "status"
        ] == "resolved"
        telemetry.log(service="api", message="rate limiter unavailable", at=start + timedelta(hours=1))
        telemetry.log(
            service="worker", message="queue backlog too large", at=start + timedelta(hours=1, seconds=30)
        )
        await send_and_group(client, tenant, telemetry, session_maker)
        problems = await problems_of(client, tenant, status="open")
        [reopened] = problems
        assert reopened["services"] == ["api", "worker"]
        assert "merge" in {e["joined_by"] for e in reopened["evidence"]}
        actions = await _audit(session_maker, tenant.project_id, "problem_merged")
        assert len(actions) == 1

    async def test_detach_then_a_new_occurrence_does_not_rejoin(
        self, client: Client, tenant: Tenant, session_maker: async_sessionmaker[AsyncSession], start: datetime
    ) -> None:
        telemetry = Telemetry()
        for i in range(3):
            telemetry.cascade(start + timedelta(seconds=i))
        await send_and_group(client, tenant, telemetry, session_maker)
        [problem] = await problems_of(client, tenant)
        incidents = await incidents_by_title(client, tenant)
        frontend = incidents["frontend: Checkout failed with <num>"]

        response = await client.post(f"/api/v1/incidents/{frontend['id']}/detach", headers=tenant.operate)
        assert response.status_code == 200, response.text
        assert response.json()["problem_id"] is None
        after = (await client.get(f"/api/v1/problems/{problem['id']}", headers=tenant.read)).json()
        assert frontend["id"] not in after["incident_ids"]
        assert (
            await client.post(f"/api/v1/incidents/{frontend['id']}/detach", headers=tenant.operate)
        ).status_code == 409

        telemetry.cascade(start + timedelta(seconds=30))  # a new occurrence, in a trace shared with the rest
        await send_and_group(client, tenant, telemetry, session_maker)
        incidents = await incidents_by_title(client, tenant)
        moved = incidents["frontend: Checkout failed with <num>"]
        assert moved["problem_id"] not in (None, problem["id"])
        assert all(
            i["problem_id"] == problem["id"] for t, i in incidents.items() if not t.startswith("frontend")
        )
        assert len(await _audit(session_maker, tenant.project_id, "incident_detached")) == 1


class TestIsolation:
    async def test_projects_never_share_problems(
        self,
        client: Client,
        make_tenant: TenantFactory,
        session_maker: async_sessionmaker[AsyncSession],
        start: datetime,
    ) -> None:
        mine, theirs = await make_tenant(), await make_tenant(f"other-{uuid.uuid4().hex[:8]}")
        trace = _hex(16)
        for tenant, service in ((mine, "a"), (theirs, "b")):
            telemetry = Telemetry()
            telemetry.span(trace=trace, service=service, name="write", at=start, attributes=DB)
            await telemetry.send(client, tenant)
        await grouping.run_grouping(session_maker)
        [my_problem] = await problems_of(client, mine)
        [their_problem] = await problems_of(client, theirs)
        assert my_problem["services"] == ["a"]
        assert their_problem["services"] == ["b"]
        assert (
            await client.get(f"/api/v1/problems/{their_problem['id']}", headers=mine.read)
        ).status_code == 404
        cross = await client.post(
            f"/api/v1/problems/{my_problem['id']}/merge",
            json={"problem_id": their_problem["id"]},
            headers=mine.operate,
        )
        assert cross.status_code == 404
        assert (
            await client.post(
                f"/api/v1/incidents/{their_problem['incident_ids'][0]}/detach", headers=mine.operate
            )
        ).status_code == 404


class TestEvents:
    async def test_a_problem_channel_gets_one_notification_per_cascade_and_sse_carries_them(
        self,
        client: Client,
        tenant: Tenant,
        session_maker: async_sessionmaker[AsyncSession],
        settings: Settings,
        database_url: str,
        start: datetime,
    ) -> None:
        problem_channel = await add_channel(
            session_maker, tenant.project_id, ["PROBLEM_OPENED"], name="cascades"
        )
        incident_channel = await add_channel(
            session_maker, tenant.project_id, INCIDENT_EVENTS, name="incidents"
        )
        received: list[tuple[str, bytes]] = []
        async with Listening(database_url, tenant.project_id, received):
            publisher = await events.start_publisher(settings, libpq_url(database_url))
            try:
                telemetry = Telemetry()
                for i in range(20):
                    telemetry.cascade(start + timedelta(seconds=i))
                await send_and_group(client, tenant, telemetry, session_maker)
                await _until(lambda: any(t == "problem_opened" for t, _ in received))
            finally:
                await events.stop_publisher(publisher)

        async with session_maker() as session:
            items = list(
                await session.execute(
                    select(OutboxItem.channel_id, OutboxItem.event_type, OutboxItem.payload).where(
                        OutboxItem.project_id == tenant.project_id
                    )
                )
            )
        assert [i.event_type for i in items if i.channel_id == problem_channel] == ["PROBLEM_OPENED"]
        assert (
            len([i for i in items if i.channel_id == incident_channel and i.event_type == "INCIDENT_OPENED"])
            == 7
        )
        [opened] = [i.payload for i in items if i.channel_id == problem_channel]
        [problem] = await problems_of(client, tenant)
        assert opened["problem"]["id"] == problem["id"]
        assert opened["problem"]["root"]["dependency"] == DB_DEPENDENCY
        assert next(t for t, _ in received if t.startswith("problem_")) == "problem_opened"
        assert {t for t, _ in received} <= {
            "incident_opened",
            "incident_escalated",
            "problem_opened",
            "problem_escalated",
        }
        assert await _audit(session_maker, tenant.project_id, "problem_opened")

    async def test_resolving_every_incident_resolves_the_problem_once(
        self, client: Client, tenant: Tenant, session_maker: async_sessionmaker[AsyncSession], start: datetime
    ) -> None:
        channel = await add_channel(session_maker, tenant.project_id, PROBLEM_EVENTS, name="cascades")
        telemetry = Telemetry()
        telemetry.cascade(start)
        await send_and_group(client, tenant, telemetry, session_maker)
        [problem] = await problems_of(client, tenant)
        for incident_id in problem["incident_ids"][:-1]:
            await client.post(f"/api/v1/incidents/{incident_id}/resolve", headers=tenant.operate)
        assert (await problems_of(client, tenant))[0]["status"] == "open"
        await client.post(f"/api/v1/incidents/{problem['incident_ids'][-1]}/ack", headers=tenant.operate)
        assert (await problems_of(client, tenant))[0]["status"] == "acknowledged"
        await client.post(f"/api/v1/incidents/{problem['incident_ids'][-1]}/resolve", headers=tenant.operate)
        assert (await problems_of(client, tenant, status="resolved"))[0]["id"] == problem["id"]
        async with session_maker() as session:
            types = list(
                await session.scalars(select(OutboxItem.event_type).where(OutboxItem.channel_id == channel))
            )
        assert sorted(types) == ["PROBLEM_OPENED", "PROBLEM_RESOLVED"]


class TestDemo:
    async def test_the_outage_is_one_problem_rooted_in_the_payments_database(
        self, client: Client, tenant: Tenant, session_maker: async_sessionmaker[AsyncSession], start: datetime
    ) -> None:
        generator = TelemetryGenerator(seed=12)
        telemetry = Telemetry()
        for second in range(30):
            at = start + timedelta(seconds=second)
            batch = generator.tick(at, requests=3, failing=False)  # healthy traffic throughout
            if second >= 10:
                batch.extend(generator.tick(at, requests=2, failing=True))
            telemetry.logs += batch.logs
            telemetry.spans += batch.spans
            if second == 15:  # an unrelated failure elsewhere at the same time, in its own trace
                telemetry.span(
                    trace=_hex(16), service="inventory", name="GET /stock", at=at,
                    attributes={"peer.service": "warehouse-api"},
                )  # fmt: skip
                telemetry.log(service="inventory", message="stock cache rebuild failed", at=at)
        await send_and_group(client, tenant, telemetry, session_maker)

        problems = await problems_of(client, tenant)
        outage = [p for p in problems if "payments" in p["services"]]
        assert len(outage) == 1
        [problem] = outage
        assert problem["services"] == ["checkout", "frontend", "payments"]
        assert len(problem["incident_ids"]) == 7
        assert problem["root"]["dependency"] == PAYMENTS_DB_DEPENDENCY
        assert problem["root"]["service"] == "payments"
        others = [p for p in problems if p is not problem]
        assert others
        assert all(p["services"] == ["inventory"] for p in others)
        incidents = await incidents_by_title(client, tenant)
        assert {i["problem_id"] for i in incidents.values() if i["service_name"] != "inventory"} == {
            problem["id"]
        }


class TestAnalysis:
    async def test_a_problem_is_analysed_and_the_summary_names_the_root_dependency(
        self, client: Client, tenant: Tenant, session_maker: async_sessionmaker[AsyncSession], start: datetime
    ) -> None:
        from prodsentinel.incidents.analysis import run_problem_analysis

        telemetry = Telemetry()
        for i in range(12):
            telemetry.cascade(start + timedelta(seconds=i))
        result = await send_and_group(client, tenant, telemetry, session_maker)
        assert any(t.wants_analysis for t in result.problem_transitions)  # high: >= 10 in 5 minutes
        [problem] = await problems_of(client, tenant)
        analysis = await run_problem_analysis(session_maker, tenant.project_id, UUID(problem["id"]))
        assert analysis is not None
        assert DB_DEPENDENCY in analysis["summary"]
        assert analysis["root"]["dependency"] == DB_DEPENDENCY
        assert analysis["origin_span"]["name"] == "db.query"
        stored = (await client.get(f"/api/v1/problems/{problem['id']}", headers=tenant.read)).json()
        assert stored["analysis"]["summary"] == analysis["summary"]


# -- helpers --------------------------------------------------------------------------------------------


async def _spans(session_maker: async_sessionmaker[AsyncSession], project_id: UUID, name: str) -> list[Any]:
    from prodsentinel.signals.models import Span

    async with session_maker() as session:
        return list(
            await session.scalars(select(Span).where(Span.project_id == project_id, Span.name == name))
        )


async def _audit(
    session_maker: async_sessionmaker[AsyncSession], project_id: UUID, action: str
) -> list[AuditEvent]:
    async with session_maker() as session:
        return list(
            await session.scalars(
                select(AuditEvent).where(AuditEvent.project_id == project_id, AuditEvent.action == action)
            )
        )


class Listening:
    """A real LISTEN on the project's event channel (the PostgreSQL backend of the SSE stream)."""

    def __init__(self, database_url: str, project_id: UUID, received: list[tuple[str, bytes]]) -> None:
        self.dsn = libpq_url(database_url)
        self.channel = events.channel_for(project_id)
        self.received = received

    async def __aenter__(self) -> None:
        self.connection = await asyncpg.connect(self.dsn)

        def on_notify(_c: Any, _pid: int, _channel: str, payload: str) -> None:
            self.received.append(events.decode_event(payload.encode()))

        await self.connection.add_listener(self.channel, on_notify)

    async def __aexit__(self, *exc: object) -> None:
        await self.connection.close()


async def _until(condition: Any, timeout: float = 10.0) -> None:
    """Poll a real condition (an event that must arrive), failing after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "timed out waiting for the event"
        await asyncio.sleep(0.05)
