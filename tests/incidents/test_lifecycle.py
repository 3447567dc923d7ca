"""Lifecycle: auto-resolve after the quiet period, reopen on regression, ack/resolve over HTTP (audited)."""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID, uuid4

from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.audit.models import AuditEvent
from prodsentinel.incidents import grouping, services
from prodsentinel.incidents.transitions import Transition
from prodsentinel.notifications.models import OutboxItem
from tests.conftest import Tenant
from tests.incidents.conftest import add_channel, incidents_of
from tests.incidents.seed import log_row, seed


async def outbox_types(session_maker: async_sessionmaker[AsyncSession], project_id: UUID) -> list[str]:
    async with session_maker() as session:
        return list(
            await session.scalars(
                select(OutboxItem.event_type)
                .where(OutboxItem.project_id == project_id)
                .order_by(OutboxItem.created_at)
            )
        )


class TestAutoResolveAndReopen:
    async def test_quiet_incident_resolves_and_a_new_occurrence_reopens_it(
        self, session_maker: async_sessionmaker[AsyncSession], tenant: Tenant, clock: datetime
    ) -> None:
        await add_channel(session_maker, tenant.project_id)
        await seed(
            session_maker, "log", [log_row(tenant.project_id, service="api", message="db timeout", ts=clock)]
        )
        await grouping.run_grouping(session_maker, now=clock)

        async def auto_resolve(now: datetime) -> list[Transition]:
            return await services.run_auto_resolve(session_maker, quiet_minutes=30, now=now)

        # 29 minutes of quiet: still open
        assert [
            t for t in await auto_resolve(clock + timedelta(minutes=29)) if t.project_id == tenant.project_id
        ] == []
        [incident] = await incidents_of(session_maker, tenant.project_id)
        assert incident.status == "open"

        resolved = [
            t for t in await auto_resolve(clock + timedelta(minutes=31)) if t.project_id == tenant.project_id
        ]
        assert [t.kind for t in resolved] == ["resolved"]
        [incident] = await incidents_of(session_maker, tenant.project_id)
        assert incident.status == "resolved"
        assert incident.resolved_by == "system:scheduler"
        assert incident.resolved_at == clock + timedelta(minutes=31)

        # regression
        later = clock + timedelta(minutes=40)
        await seed(
            session_maker, "log", [log_row(tenant.project_id, service="api", message="db timeout", ts=later)]
        )
        result = await grouping.run_grouping(session_maker, now=later)
        assert [t.kind for t in result.transitions if t.project_id == tenant.project_id] == ["reopened"]
        [incident] = await incidents_of(session_maker, tenant.project_id)
        assert incident.status == "open"
        assert incident.reopened_count == 1
        assert incident.count == 2
        assert incident.resolved_at is None
        assert await outbox_types(session_maker, tenant.project_id) == [
            "INCIDENT_OPENED",
            "INCIDENT_RESOLVED",
            "INCIDENT_REOPENED",
        ]


class TestAckResolveApi:
    async def test_ack_then_resolve_is_audited_and_emits_resolved(
        self,
        client: AsyncTestClient[Litestar],
        session_maker: async_sessionmaker[AsyncSession],
        tenant: Tenant,
        clock: datetime,
    ) -> None:
        await add_channel(session_maker, tenant.project_id)
        await seed(
            session_maker, "log", [log_row(tenant.project_id, service="api", message="boom", ts=clock)]
        )
        await grouping.run_grouping(session_maker, now=clock)
        [incident] = await incidents_of(session_maker, tenant.project_id)
        operator, reader = tenant.operate, tenant.read

        assert (await client.post(f"/api/v1/incidents/{incident.id}/ack", headers=reader)).status_code == 403

        acked = await client.post(f"/api/v1/incidents/{incident.id}/ack", headers=operator)
        assert acked.status_code == 200, acked.text
        body = acked.json()
        assert body["status"] == "acknowledged"
        assert body["acked_by"].startswith("key:operator-key:")
        again = await client.post(f"/api/v1/incidents/{incident.id}/ack", headers=operator)
        assert again.json()["acked_at"] == body["acked_at"]

        resolved = await client.post(f"/api/v1/incidents/{incident.id}/resolve", headers=operator)
        assert resolved.status_code == 200, resolved.text
        assert resolved.json()["status"] == "resolved"
        assert resolved.json()["resolved_by"] == body["acked_by"]
        conflict = await client.post(f"/api/v1/incidents/{incident.id}/ack", headers=operator)
        assert conflict.status_code == 409
        assert conflict.json()["request_id"]

        async with session_maker() as session:
            audit = list(
                await session.execute(
                    select(AuditEvent.action, AuditEvent.actor, AuditEvent.subject_id)
                    .where(AuditEvent.project_id == tenant.project_id, AuditEvent.subject_type == "incident")
                    .order_by(AuditEvent.at, AuditEvent.id)
                )
            )
        assert [(a.action, a.actor) for a in audit] == [
            ("incident_opened", "system:scheduler"),
            ("incident_acknowledged", body["acked_by"]),
            ("incident_resolved", body["acked_by"]),
        ]
        assert all(a.subject_id == incident.id for a in audit)
        assert await outbox_types(session_maker, tenant.project_id) == [
            "INCIDENT_OPENED",
            "INCIDENT_ACKNOWLEDGED",
            "INCIDENT_RESOLVED",
        ]

    async def test_other_projects_incident_is_404(
        self,
        client: AsyncTestClient[Litestar],
        other_tenant: Tenant,
        session_maker: async_sessionmaker[AsyncSession],
        tenant: Tenant,
        clock: datetime,
    ) -> None:
        await seed(
            session_maker, "log", [log_row(tenant.project_id, service="api", message="secret", ts=clock)]
        )
        await grouping.run_grouping(session_maker, now=clock)
        [incident] = await incidents_of(session_maker, tenant.project_id)
        stranger = other_tenant.admin
        for method, path in (
            ("GET", f"/api/v1/incidents/{incident.id}"),
            ("POST", f"/api/v1/incidents/{incident.id}/ack"),
            ("POST", f"/api/v1/incidents/{incident.id}/resolve"),
            ("GET", f"/api/v1/incidents/{uuid4()}"),
        ):
            response = await client.request(method, path, headers=stranger)
            assert response.status_code == 404, (method, path)
        listing = await client.get("/api/v1/incidents", headers=stranger)
        assert listing.json()["items"] == []
        [still] = await incidents_of(session_maker, tenant.project_id)
        assert still.status == "open"
