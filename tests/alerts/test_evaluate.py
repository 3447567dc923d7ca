"""Evaluation from stored data: every kind fires and resolves, ``for``, anti-flap, the lease, outbox.

The clock is explicit (``now=``): each test evaluates at chosen instants instead of sleeping.
"""

from __future__ import annotations

import asyncio
import math
import sys
from datetime import timedelta
from typing import Any
from uuid import UUID

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.alerts import evaluator
from prodsentinel.alerts.models import Alert
from prodsentinel.audit.models import AuditEvent
from prodsentinel.incidents.models import Incident
from prodsentinel.lib import jobs
from prodsentinel.lib.time import utcnow
from prodsentinel.notifications.models import OutboxItem
from tests.alerts.conftest import INTERVAL, Seeder, evaluate_at
from tests.conftest import Tenant
from tests.signals.test_metric_series import exact_aggregate

URL = "/api/v1/alerts/policies"
FLOAT8_MAX = sys.float_info.max
#: Finite values on which PostgreSQL's float8 aggregates overflow: avg (sum of squares above ~1e154),
#: sum (past FLOAT8_MAX) and percentile_cont (hi - lo of opposite-sign values near +-1.8e308).
HUGE_METRICS: dict[str, list[float]] = {
    "straddle": [-1.7e308, 1.7e308],
    "big": [1e200, 0.0, 1.7e308, 1.7e308],
    "mixed": [FLOAT8_MAX, 5e-324, -1e155, 2.5],
}


async def create_policy(client: AsyncTestClient[Litestar], tenant: Tenant, **body: Any) -> dict[str, Any]:
    body.setdefault("name", f"policy-{body['kind']}")
    body.setdefault("severity", "high")
    response = await client.post(URL, json=body, headers=tenant.admin)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def alerts_of(session_maker: async_sessionmaker[AsyncSession], policy_id: str) -> list[Alert]:
    async with session_maker() as session:
        return list(await session.scalars(select(Alert).where(Alert.policy_id == UUID(policy_id))))


async def state_of(session_maker: async_sessionmaker[AsyncSession], policy_id: str) -> str | None:
    found = await alerts_of(session_maker, policy_id)
    assert len(found) <= 1
    return found[0].state if found else None


async def audit_actions(session_maker: async_sessionmaker[AsyncSession], project_id: UUID) -> list[str]:
    async with session_maker() as session:
        rows = await session.scalars(
            select(AuditEvent.action)
            .where(AuditEvent.project_id == project_id, AuditEvent.subject_type == "alert")
            .order_by(AuditEvent.at, AuditEvent.id)
        )
        return list(rows)


async def outbox_of(session_maker: async_sessionmaker[AsyncSession], project_id: UUID) -> list[OutboxItem]:
    async with session_maker() as session:
        rows = await session.scalars(
            select(OutboxItem).where(OutboxItem.project_id == project_id).order_by(OutboxItem.created_at)
        )
        return list(rows)


class TestKinds:
    async def test_log_rate_fires_and_resolves(
        self,
        client: AsyncTestClient[Litestar],
        tenant: Tenant,
        seed: Seeder,
        session_maker: async_sessionmaker[AsyncSession],
    ) -> None:
        now = utcnow()
        policy = await create_policy(
            client, tenant, kind="log_rate", service="api", threshold=5, window_seconds=60
        )
        await seed.logs(at=now - timedelta(seconds=10), count=6, level="ERROR")
        await seed.logs(at=now - timedelta(seconds=10), count=20, level="INFO")
        await seed.logs(at=now - timedelta(seconds=10), count=9, level="ERROR", service="other")
        await seed.logs(at=now - timedelta(seconds=90), count=9, level="ERROR")  # outside the window

        summary = await evaluate_at(session_maker, tenant, now)
        assert (summary.skipped, summary.evaluated, summary.fired) == (False, 1, 1)
        [alert] = await alerts_of(session_maker, policy["id"])
        assert (alert.state, alert.value) == ("firing", 6.0)
        assert alert.labels == {"alertname": "policy-log_rate", "severity": "high", "service": "api"}
        assert alert.fired_at == now

        summary = await evaluate_at(session_maker, tenant, now + timedelta(seconds=61))
        assert summary.resolved == 1
        [alert] = await alerts_of(session_maker, policy["id"])
        assert (alert.state, alert.value, alert.resolved_at) == ("resolved", 0.0, now + timedelta(seconds=61))
        assert await audit_actions(session_maker, tenant.project_id) == ["alert.firing", "alert.resolved"]

    async def test_log_rate_level_and_query(
        self,
        client: AsyncTestClient[Litestar],
        tenant: Tenant,
        seed: Seeder,
        session_maker: async_sessionmaker[AsyncSession],
    ) -> None:
        now = utcnow()
        sub = await create_policy(client, tenant, name="sub", kind="log_rate", q="TIMEOUT", threshold=2)
        rex = await create_policy(
            client, tenant, name="rex", kind="log_rate", q="/^db (timed )?out$/", threshold=0
        )
        warn = await create_policy(client, tenant, name="warn", kind="log_rate", level="warning", threshold=4)
        await seed.logs(at=now - timedelta(seconds=5), count=3, message="upstream timeout after 3s")
        await seed.logs(at=now - timedelta(seconds=5), count=1, message="DB timed out", level="WARN")
        await seed.logs(at=now - timedelta(seconds=5), count=1, message="db out of memory", level="CRITICAL")
        await evaluate_at(session_maker, tenant, now)
        values = {p["name"]: (await alerts_of(session_maker, p["id"])) for p in (sub, rex, warn)}
        assert values["sub"][0].value == 3.0  # case-insensitive substring, level >= ERROR
        assert values["rex"] == []  # the regex matches a WARN line only: below the ERROR minimum
        assert values["warn"][0].value == 5.0

    async def test_error_rate(
        self,
        client: AsyncTestClient[Litestar],
        tenant: Tenant,
        seed: Seeder,
        session_maker: async_sessionmaker[AsyncSession],
    ) -> None:
        now = utcnow()
        policy = await create_policy(client, tenant, kind="error_rate", service="api", threshold=0.3)
        await seed.spans(at=now - timedelta(seconds=5), ok=6, errors=4)
        await seed.spans(at=now - timedelta(seconds=5), ok=0, errors=10, service="other")
        await evaluate_at(session_maker, tenant, now)
        [alert] = await alerts_of(session_maker, policy["id"])
        assert (alert.state, alert.value) == ("firing", 0.4)
        # No spans in the window: the rate is undefined and the condition false.
        await evaluate_at(session_maker, tenant, now + timedelta(seconds=400))
        [alert] = await alerts_of(session_maker, policy["id"])
        assert (alert.state, alert.value) == ("resolved", None)

    async def test_no_spans_never_fires_even_with_lower_than(
        self,
        client: AsyncTestClient[Litestar],
        tenant: Tenant,
        session_maker: async_sessionmaker[AsyncSession],
    ) -> None:
        policy = await create_policy(
            client, tenant, kind="error_rate", service="quiet", operator="<", threshold=0.5
        )
        await evaluate_at(session_maker, tenant, utcnow())
        assert await alerts_of(session_maker, policy["id"]) == []

    @pytest.mark.parametrize(
        ("agg", "expected"),
        [
            ("avg", 40.0),
            ("min", 10.0),
            ("max", 100.0),
            ("sum", 200.0),
            ("count", 5.0),
            ("p50", 30.0),
            ("p95", 88.0),
        ],
    )
    async def test_metric_threshold_aggregates(
        self,
        client: AsyncTestClient[Litestar],
        tenant: Tenant,
        seed: Seeder,
        session_maker: async_sessionmaker[AsyncSession],
        agg: str,
        expected: float,
    ) -> None:
        now = utcnow()
        policy = await create_policy(
            client,
            tenant,
            kind="metric_threshold",
            metric="latency_ms",
            agg=agg,
            match_labels={"route": "/pay"},
            threshold=1,
        )
        await seed.metrics(
            at=now - timedelta(seconds=5), values=[10, 20, 30, 40, 100], labels={"route": "/pay", "x": "1"}
        )
        await seed.metrics(at=now - timedelta(seconds=5), values=[1000], labels={"route": "/home"})
        await seed.metrics(
            at=now - timedelta(seconds=5), values=[5000], name="other_metric", labels={"route": "/pay"}
        )
        await evaluate_at(session_maker, tenant, now)
        [alert] = await alerts_of(session_maker, policy["id"])
        assert alert.state == "firing"
        assert alert.value == pytest.approx(expected)
        await evaluate_at(session_maker, tenant, now + timedelta(seconds=301))
        assert await state_of(session_maker, policy["id"]) == "resolved"

    @pytest.mark.parametrize("agg", ["avg", "min", "max", "sum", "count", "p50", "p95", "p99"])
    async def test_metric_threshold_over_huge_finite_values(
        self,
        client: AsyncTestClient[Litestar],
        tenant: Tenant,
        seed: Seeder,
        session_maker: async_sessionmaker[AsyncSession],
        agg: str,
    ) -> None:
        """Any finite value is valid (SPEC §4): float8 avg/sum/percentile_cont overflow on these."""
        now = utcnow()
        policies = {}
        for metric, values in HUGE_METRICS.items():
            for service in ("api", None):  # per-service range scan and the shared all-services path
                name = f"{metric}-{service or 'all'}"
                body: dict[str, Any] = {
                    "metric": metric,
                    "agg": agg,
                    "operator": ">=",
                    "threshold": -FLOAT8_MAX,
                }
                if service:
                    body["service"] = service
                policies[name] = (
                    values,
                    await create_policy(client, tenant, name=name, kind="metric_threshold", **body),
                )
            await seed.metrics(at=now - timedelta(seconds=5), values=values, name=metric)

        response = await client.post("/api/v1/alerts/evaluate", headers=tenant.admin)
        assert response.status_code == 200, response.text
        for name, (values, policy) in policies.items():
            [alert] = await alerts_of(session_maker, policy["id"])
            assert alert.state == "firing", name
            assert alert.value is not None
            assert math.isfinite(alert.value), (name, alert.value)
            assert alert.value == pytest.approx(exact_aggregate(agg, values), rel=1e-12, abs=1e-300), name

    async def test_huge_values_of_one_project_do_not_stop_the_others(
        self,
        client: AsyncTestClient[Litestar],
        tenant: Tenant,
        other_tenant: Tenant,
        seed: Seeder,
        session_maker: async_sessionmaker[AsyncSession],
    ) -> None:
        """The cron evaluates the policies of every project, per kind, in ONE statement: a value that
        failed it would stop alerting for all tenants."""
        now = utcnow()
        for agg in ("avg", "sum", "p95"):
            await create_policy(
                client,
                tenant,
                name=f"huge-{agg}",
                kind="metric_threshold",
                metric="big",
                agg=agg,
                operator=">=",
                threshold=-FLOAT8_MAX,
            )
        # float8 avg's sum of squares, the running sum (-3.4e308) and p95's hi - lo all overflow
        await seed.metrics(at=now - timedelta(seconds=5), values=[-1.7e308, -1.7e308, 1.7e308], name="big")
        other = other_tenant
        normal = await create_policy(
            client, other, kind="metric_threshold", metric="latency_ms", agg="avg", threshold=50
        )
        await Seeder(session_maker, other.project_id).metrics(
            at=now - timedelta(seconds=5), values=[40, 80, 90]
        )

        summary = await evaluator.run_evaluation(session_maker, interval_seconds=INTERVAL, now=now)
        assert summary.evaluated >= 4
        [alert] = await alerts_of(session_maker, normal["id"])
        assert (alert.state, alert.value) == ("firing", 70.0)
        async with session_maker() as session:
            rows = await session.execute(
                select(Alert.labels["alertname"].astext, Alert.state, Alert.value).where(
                    Alert.project_id == tenant.project_id
                )
            )
            found = {name: (state, value) for name, state, value in rows.tuples()}
        assert found == {
            "huge-avg": ("firing", pytest.approx(-1.7e308 / 3)),
            "huge-sum": ("firing", -1.7e308),
            "huge-p95": ("firing", pytest.approx(1.36e308)),  # -1.7e308 + 0.9 * 3.4e308
        }

    async def test_anomaly_kind(
        self,
        client: AsyncTestClient[Litestar],
        tenant: Tenant,
        seed: Seeder,
        session_maker: async_sessionmaker[AsyncSession],
    ) -> None:
        now = utcnow()
        policy = await create_policy(client, tenant, kind="anomaly", metric="latency_ms", service="api")
        await evaluate_at(session_maker, tenant, now)
        assert await alerts_of(session_maker, policy["id"]) == []
        await seed.anomalies(at=now, count=2)
        await seed.anomalies(at=now, count=3, service="other")
        await evaluate_at(session_maker, tenant, now + timedelta(seconds=1))
        [alert] = await alerts_of(session_maker, policy["id"])
        assert (alert.state, alert.value) == ("firing", 2.0)
        await evaluate_at(session_maker, tenant, now + timedelta(seconds=400))
        assert await state_of(session_maker, policy["id"]) == "resolved"

    async def test_incident_kind(
        self,
        client: AsyncTestClient[Litestar],
        tenant: Tenant,
        seed: Seeder,
        session_maker: async_sessionmaker[AsyncSession],
    ) -> None:
        now = utcnow()
        policy = await create_policy(client, tenant, kind="incident", min_severity="high")
        await seed.incident(at=now - timedelta(seconds=5), severity="medium")
        await seed.incident(at=now - timedelta(seconds=5), severity="critical", status="resolved")
        await evaluate_at(session_maker, tenant, now)
        assert await alerts_of(session_maker, policy["id"]) == []
        incident_id = await seed.incident(
            at=now - timedelta(seconds=5), severity="high", status="acknowledged"
        )
        await evaluate_at(session_maker, tenant, now + timedelta(seconds=1))
        [alert] = await alerts_of(session_maker, policy["id"])
        assert (alert.state, alert.value) == ("firing", 1.0)
        async with session_maker() as session, session.begin():
            await session.execute(
                update(Incident).where(Incident.id == incident_id).values(status="resolved")
            )
        await evaluate_at(session_maker, tenant, now + timedelta(seconds=2))
        assert await state_of(session_maker, policy["id"]) == "resolved"


async def set_incident(
    session_maker: async_sessionmaker[AsyncSession], incident_id: UUID, status: str
) -> None:
    async with session_maker() as session, session.begin():
        await session.execute(update(Incident).where(Incident.id == incident_id).values(status=status))


class TestStateMachine:
    async def test_for_duration(
        self,
        client: AsyncTestClient[Litestar],
        tenant: Tenant,
        seed: Seeder,
        session_maker: async_sessionmaker[AsyncSession],
    ) -> None:
        t0 = utcnow()
        policy = await create_policy(client, tenant, kind="incident", min_severity="low", for_seconds=60)
        await seed.incident(at=t0 - timedelta(seconds=1))
        await evaluate_at(session_maker, tenant, t0)
        [alert] = await alerts_of(session_maker, policy["id"])
        assert (alert.state, alert.started_at, alert.fired_at) == ("pending", t0, None)
        await evaluate_at(session_maker, tenant, t0 + timedelta(seconds=59))
        assert await state_of(session_maker, policy["id"]) == "pending"
        await evaluate_at(session_maker, tenant, t0 + timedelta(seconds=60))
        [alert] = await alerts_of(session_maker, policy["id"])
        assert (alert.state, alert.started_at, alert.fired_at) == ("firing", t0, t0 + timedelta(seconds=60))
        assert await audit_actions(session_maker, tenant.project_id) == ["alert.pending", "alert.firing"]

    async def test_pending_that_recovers_goes_inactive_silently(
        self,
        client: AsyncTestClient[Litestar],
        tenant: Tenant,
        seed: Seeder,
        session_maker: async_sessionmaker[AsyncSession],
    ) -> None:
        t0 = utcnow()
        await seed.channel()
        policy = await create_policy(client, tenant, kind="incident", min_severity="low", for_seconds=60)
        incident_id = await seed.incident(at=t0 - timedelta(seconds=1))
        await evaluate_at(session_maker, tenant, t0)
        await set_incident(session_maker, incident_id, "resolved")
        await evaluate_at(session_maker, tenant, t0 + timedelta(seconds=30))
        assert await state_of(session_maker, policy["id"]) == "inactive"
        assert await audit_actions(session_maker, tenant.project_id) == ["alert.pending", "alert.inactive"]
        assert await outbox_of(session_maker, tenant.project_id) == []

    async def test_anti_flap(
        self,
        client: AsyncTestClient[Litestar],
        tenant: Tenant,
        seed: Seeder,
        session_maker: async_sessionmaker[AsyncSession],
    ) -> None:
        t0 = utcnow()
        await seed.channel()
        policy = await create_policy(client, tenant, kind="incident", min_severity="low")
        incident_id = await seed.incident(at=t0 - timedelta(seconds=1))
        await evaluate_at(session_maker, tenant, t0)  # firing
        await set_incident(session_maker, incident_id, "resolved")
        await evaluate_at(session_maker, tenant, t0 + timedelta(seconds=10))  # resolved
        await set_incident(session_maker, incident_id, "open")
        # The condition holds again, but the alert resolved less than one interval ago.
        await evaluate_at(session_maker, tenant, t0 + timedelta(seconds=20))
        await evaluate_at(session_maker, tenant, t0 + timedelta(seconds=10 + INTERVAL - 1))
        assert await state_of(session_maker, policy["id"]) == "resolved"
        await evaluate_at(session_maker, tenant, t0 + timedelta(seconds=10 + INTERVAL))
        [alert] = await alerts_of(session_maker, policy["id"])
        assert (alert.state, alert.started_at) == ("firing", t0 + timedelta(seconds=10 + INTERVAL))
        assert alert.resolved_at is None
        events = [item.event_type for item in await outbox_of(session_maker, tenant.project_id)]
        assert events == ["ALERT_FIRING", "ALERT_RESOLVED", "ALERT_FIRING"]
        # Resolved and quiet for an interval: the instance settles to inactive, silently.
        await set_incident(session_maker, incident_id, "resolved")
        await evaluate_at(session_maker, tenant, t0 + timedelta(seconds=100))
        await evaluate_at(session_maker, tenant, t0 + timedelta(seconds=100 + INTERVAL))
        assert await state_of(session_maker, policy["id"]) == "inactive"
        assert len(await outbox_of(session_maker, tenant.project_id)) == 4

    async def test_disabled_policy_resolves_its_firing_alert(
        self,
        client: AsyncTestClient[Litestar],
        tenant: Tenant,
        seed: Seeder,
        session_maker: async_sessionmaker[AsyncSession],
    ) -> None:
        t0 = utcnow()
        policy = await create_policy(client, tenant, kind="incident", min_severity="low")
        await seed.incident(at=t0 - timedelta(seconds=1))
        await evaluate_at(session_maker, tenant, t0)
        response = await client.patch(f"{URL}/{policy['id']}", json={"enabled": False}, headers=tenant.admin)
        assert response.status_code == 200
        summary = await evaluate_at(session_maker, tenant, t0 + timedelta(seconds=1))
        assert (summary.evaluated, summary.resolved) == (0, 1)
        assert await state_of(session_maker, policy["id"]) == "resolved"

    async def test_changed_labels_resolve_the_old_instance(
        self,
        client: AsyncTestClient[Litestar],
        tenant: Tenant,
        seed: Seeder,
        session_maker: async_sessionmaker[AsyncSession],
    ) -> None:
        t0 = utcnow()
        policy = await create_policy(
            client, tenant, kind="incident", min_severity="low", labels={"team": "a"}
        )
        await seed.incident(at=t0 - timedelta(seconds=1))
        await evaluate_at(session_maker, tenant, t0)
        await client.patch(f"{URL}/{policy['id']}", json={"labels": {"team": "b"}}, headers=tenant.admin)
        await evaluate_at(session_maker, tenant, t0 + timedelta(seconds=1))
        states = {a.labels["team"]: a.state for a in await alerts_of(session_maker, policy["id"])}
        assert states == {"a": "resolved", "b": "firing"}


class TestOutbox:
    async def test_transitions_write_outbox_events_in_the_same_transaction(
        self,
        client: AsyncTestClient[Litestar],
        tenant: Tenant,
        seed: Seeder,
        session_maker: async_sessionmaker[AsyncSession],
    ) -> None:
        t0 = utcnow()
        channel_id = await seed.channel()
        policy = await create_policy(
            client, tenant, kind="incident", min_severity="low", severity="medium", labels={"team": "core"}
        )
        incident_id = await seed.incident(at=t0 - timedelta(seconds=1))
        summary = await evaluate_at(session_maker, tenant, t0)
        assert summary.notified == 1
        await set_incident(session_maker, incident_id, "resolved")
        await evaluate_at(session_maker, tenant, t0 + timedelta(seconds=5))
        firing, resolved = await outbox_of(session_maker, tenant.project_id)
        assert (firing.event_type, resolved.event_type) == ("ALERT_FIRING", "ALERT_RESOLVED")
        assert firing.channel_id == channel_id
        assert firing.severity == "medium"
        [alert] = await alerts_of(session_maker, policy["id"])
        assert firing.payload["alert_id"] == str(alert.id)
        assert firing.payload["policy_name"] == policy["name"]
        assert firing.payload["labels"] == {"team": "core", "alertname": policy["name"], "severity": "medium"}
        assert firing.payload["value"] == 1.0
        assert firing.payload["state"] == "firing"
        assert resolved.payload["state"] == "resolved"
        assert firing.event_id != resolved.event_id
        async with session_maker() as session:
            details = list(
                await session.scalars(
                    select(AuditEvent.details)
                    .where(AuditEvent.subject_id == alert.id)
                    .order_by(AuditEvent.at, AuditEvent.id)
                )
            )
        assert [d["event_id"] for d in details] == [str(firing.event_id), str(resolved.event_id)]

    async def test_no_channel_no_outbox_but_audit(
        self,
        client: AsyncTestClient[Litestar],
        tenant: Tenant,
        seed: Seeder,
        session_maker: async_sessionmaker[AsyncSession],
    ) -> None:
        t0 = utcnow()
        await create_policy(client, tenant, kind="incident", min_severity="low")
        await seed.incident(at=t0)
        await evaluate_at(session_maker, tenant, t0)
        assert await outbox_of(session_maker, tenant.project_id) == []
        assert await audit_actions(session_maker, tenant.project_id) == ["alert.firing"]

    async def test_deleting_a_policy_resolves_its_firing_alert(
        self,
        client: AsyncTestClient[Litestar],
        tenant: Tenant,
        seed: Seeder,
        session_maker: async_sessionmaker[AsyncSession],
    ) -> None:
        t0 = utcnow()
        await seed.channel()
        policy = await create_policy(client, tenant, kind="incident", min_severity="low")
        await seed.incident(at=t0)
        await evaluate_at(session_maker, tenant, t0)
        assert (await client.delete(f"{URL}/{policy['id']}", headers=tenant.admin)).status_code == 204
        events = [
            (i.event_type, i.payload.get("reason")) for i in await outbox_of(session_maker, tenant.project_id)
        ]
        assert events == [("ALERT_FIRING", None), ("ALERT_RESOLVED", "policy_deleted")]


class TestLease:
    async def test_two_evaluators_at_once_evaluate_once(
        self,
        client: AsyncTestClient[Litestar],
        tenant: Tenant,
        seed: Seeder,
        session_maker: async_sessionmaker[AsyncSession],
    ) -> None:
        t0 = utcnow()
        await seed.channel()
        for i in range(50):  # enough work that the first pass is still running when the second starts
            await create_policy(client, tenant, name=f"p{i}", kind="incident", min_severity="low")
        await seed.incident(at=t0)
        summaries = await asyncio.gather(
            evaluate_at(session_maker, tenant, t0), evaluate_at(session_maker, tenant, t0)
        )
        assert sorted(s.skipped for s in summaries) == [False, True]
        assert sum(s.fired for s in summaries) == 50
        assert len(await outbox_of(session_maker, tenant.project_id)) == 50
        assert (await audit_actions(session_maker, tenant.project_id)).count("alert.firing") == 50

    async def test_held_lease_skips(
        self,
        client: AsyncTestClient[Litestar],
        tenant: Tenant,
        seed: Seeder,
        session_maker: async_sessionmaker[AsyncSession],
    ) -> None:
        await create_policy(client, tenant, kind="incident", min_severity="low")
        async with session_maker() as holder, holder.begin():
            assert await jobs.try_lease(holder, evaluator.EVALUATION_LEASE)
            summary = await evaluate_at(session_maker, tenant, utcnow())
            assert summary.skipped
            assert summary.evaluated == 0
        assert not (await evaluate_at(session_maker, tenant, utcnow())).skipped

    async def test_all_projects_pass_as_scheduler(
        self,
        client: AsyncTestClient[Litestar],
        tenant: Tenant,
        seed: Seeder,
        session_maker: async_sessionmaker[AsyncSession],
    ) -> None:
        t0 = utcnow()
        await create_policy(client, tenant, kind="incident", min_severity="low")
        await seed.incident(at=t0)
        summary = await evaluator.run_evaluation(session_maker, interval_seconds=INTERVAL, now=t0)
        assert summary.evaluated >= 1
        async with session_maker() as session:
            actors = set(
                await session.scalars(
                    select(AuditEvent.actor).where(AuditEvent.project_id == tenant.project_id)
                )
            )
        assert "system:scheduler" in actors
        # The lease is transaction-scoped: nothing is left held after the pass.
        async with session_maker() as session, session.begin():
            assert await jobs.try_lease(session, evaluator.EVALUATION_LEASE)
