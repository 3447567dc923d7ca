"""Alerts, silences, acks, audit and manual evaluation through the HTTP API."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from prodsentinel.audit.models import AuditEvent
from prodsentinel.lib.time import utcnow
from prodsentinel.notifications.models import OutboxItem
from tests.alerts.conftest import Seeder, evaluate_at
from tests.alerts.test_evaluate import create_policy
from tests.conftest import Tenant

SILENCES = "/api/v1/alerts/silences"
# != and !~ match the empty string, so (as in Alertmanager) a silence needs one more matcher.
NAMED = {"name": "alertname", "op": "=", "value": "policy-error_rate"}


def in_an_hour() -> str:
    return (utcnow() + timedelta(hours=1)).isoformat()


async def fire(
    client: AsyncTestClient[Litestar],
    tenant: Tenant,
    seed: Seeder,
    session_maker: async_sessionmaker[AsyncSession],
    **policy: Any,
) -> dict[str, Any]:
    """A policy whose alert fires now (incident kind over one open incident); returns the alert."""
    policy.setdefault("kind", "incident")
    policy.setdefault("min_severity", "low")
    created = await create_policy(client, tenant, **policy)
    await seed.incident(at=utcnow() - timedelta(seconds=1))
    await evaluate_at(session_maker, tenant, utcnow())
    active = (await client.get("/api/v1/alerts/active", headers=tenant.read)).json()["items"]
    [alert] = [a for a in active if a["policy_id"] == created["id"]]
    return dict(alert)


async def outbox_count(session_maker: async_sessionmaker[AsyncSession], tenant: Tenant) -> int:
    async with session_maker() as session:
        return len(
            list(
                await session.scalars(select(OutboxItem.id).where(OutboxItem.project_id == tenant.project_id))
            )
        )


async def audit_rows(
    session_maker: async_sessionmaker[AsyncSession], tenant: Tenant, action: str
) -> list[AuditEvent]:
    async with session_maker() as session:
        return list(
            await session.scalars(
                select(AuditEvent).where(
                    AuditEvent.project_id == tenant.project_id, AuditEvent.action == action
                )
            )
        )


class TestSilences:
    @pytest.mark.parametrize(
        ("matchers", "silenced"),
        [
            ([{"name": "service", "op": "=", "value": "api"}], True),
            ([{"name": "service", "op": "=", "value": "ap"}], False),
            ([NAMED, {"name": "service", "op": "!=", "value": "web"}], True),
            ([NAMED, {"name": "service", "op": "!=", "value": "api"}], False),
            ([{"name": "service", "op": "=~", "value": "ap.*"}], True),
            ([{"name": "service", "op": "=~", "value": "ap"}], False),  # anchored: not a substring match
            ([NAMED, {"name": "service", "op": "!~", "value": "web|db"}], True),
            ([NAMED, {"name": "service", "op": "!~", "value": "a.i"}], False),
            (
                [
                    {"name": "team", "op": "=", "value": "core"},
                    {"name": "severity", "op": "=~", "value": "high|low"},
                ],
                True,
            ),
            (
                [
                    {"name": "team", "op": "=", "value": "core"},
                    {"name": "severity", "op": "=", "value": "low"},
                ],
                False,
            ),
        ],
    )
    async def test_matchers_decide_whether_the_transition_notifies(
        self,
        client: AsyncTestClient[Litestar],
        tenant: Tenant,
        seed: Seeder,
        session_maker: async_sessionmaker[AsyncSession],
        matchers: list[dict[str, str]],
        silenced: bool,
    ) -> None:
        await seed.channel()
        created = await client.post(
            SILENCES,
            json={"matchers": matchers, "ends_at": in_an_hour(), "comment": "deploy"},
            headers=tenant.operate,
        )
        assert created.status_code == 201, created.text
        silence = created.json()
        assert silence["status"] == "active"
        assert silence["created_by"].startswith("key:operator-key:")
        # error_rate names a service, so the alert carries service=api; labels add team=core.
        policy = await create_policy(
            client, tenant, kind="error_rate", service="api", threshold=0.1, labels={"team": "core"}
        )
        await seed.spans(at=utcnow() - timedelta(seconds=1), ok=1, errors=1)
        await evaluate_at(session_maker, tenant, utcnow())

        [alert] = (await client.get("/api/v1/alerts/active", headers=tenant.read)).json()["items"]
        assert alert["policy_id"] == policy["id"]
        assert alert["state"] == "firing"  # a silenced alert keeps its state
        [audit] = await audit_rows(session_maker, tenant, "alert.firing")
        if silenced:
            assert await outbox_count(session_maker, tenant) == 0
            assert audit.details["silenced_by"] == silence["id"]
            assert "event_id" not in audit.details
            assert alert["silenced_by"] == silence["id"]
        else:
            assert await outbox_count(session_maker, tenant) == 1
            assert "silenced_by" not in audit.details
            assert alert["silenced_by"] is None

    @pytest.mark.parametrize(
        ("body", "needle"),
        [
            ({"matchers": [{"name": "a", "op": "==", "value": "x"}]}, "matchers[0].op: Invalid enum value"),
            ({"matchers": [{"name": "a", "op": "=~", "value": "(x"}]}, "regex"),
            ({"matchers": [{"name": "a", "op": "=~", "value": ".*"}]}, "empty string"),
            ({"matchers": []}, "at least one matcher"),
            ({"matchers": [{"name": "", "op": "=", "value": "x"}]}, "name"),
        ],
    )
    async def test_invalid_matchers_are_422(
        self, client: AsyncTestClient[Litestar], tenant: Tenant, body: dict[str, Any], needle: str
    ) -> None:
        response = await client.post(SILENCES, json={**body, "ends_at": in_an_hour()}, headers=tenant.operate)
        assert response.status_code == 422, response.text
        assert needle in response.json()["detail"]

    async def test_time_range_validation_and_status(
        self, client: AsyncTestClient[Litestar], tenant: Tenant
    ) -> None:
        matchers = [{"name": "service", "op": "=", "value": "api"}]
        now = utcnow()
        backwards = await client.post(
            SILENCES,
            json={
                "matchers": matchers,
                "starts_at": (now + timedelta(hours=2)).isoformat(),
                "ends_at": in_an_hour(),
            },
            headers=tenant.operate,
        )
        assert backwards.status_code == 422
        assert "ends_at" in backwards.json()["detail"]
        pending = await client.post(
            SILENCES,
            json={
                "matchers": matchers,
                "starts_at": (now + timedelta(hours=1)).isoformat(),
                "ends_at": (now + timedelta(hours=2)).isoformat(),
            },
            headers=tenant.operate,
        )
        assert pending.json()["status"] == "pending"
        active = (
            await client.post(
                SILENCES, json={"matchers": matchers, "ends_at": in_an_hour()}, headers=tenant.operate
            )
        ).json()

        expired = await client.post(f"{SILENCES}/{active['id']}/expire", headers=tenant.operate)
        assert expired.status_code == 200
        assert expired.json()["status"] == "expired"
        again = await client.post(f"{SILENCES}/{active['id']}/expire", headers=tenant.operate)
        assert again.json()["status"] == "expired"

        by_status = {
            status: [
                s["id"]
                for s in (await client.get(SILENCES, params={"status": status}, headers=tenant.read)).json()[
                    "items"
                ]
            ]
            for status in ("pending", "active", "expired")
        }
        assert by_status == {"pending": [pending.json()["id"]], "active": [], "expired": [active["id"]]}
        actions = [
            row["action"]
            for row in (
                await client.get(
                    "/api/v1/alerts/audit", params={"subject_type": "silence"}, headers=tenant.read
                )
            ).json()["items"]
        ]
        assert sorted(actions) == ["silence.create", "silence.create", "silence.expire"]

    async def test_expired_silence_no_longer_silences(
        self,
        client: AsyncTestClient[Litestar],
        tenant: Tenant,
        seed: Seeder,
        session_maker: async_sessionmaker[AsyncSession],
    ) -> None:
        await seed.channel()
        silence = (
            await client.post(
                SILENCES,
                json={
                    "matchers": [{"name": "alertname", "op": "=~", "value": ".+"}],
                    "ends_at": in_an_hour(),
                },
                headers=tenant.operate,
            )
        ).json()
        await client.post(f"{SILENCES}/{silence['id']}/expire", headers=tenant.operate)
        await fire(client, tenant, seed, session_maker)
        assert await outbox_count(session_maker, tenant) == 1

    async def test_an_alert_that_fired_silenced_is_announced_once_when_the_silence_ends(
        self,
        client: AsyncTestClient[Litestar],
        tenant: Tenant,
        seed: Seeder,
        session_maker: async_sessionmaker[AsyncSession],
    ) -> None:
        """Alertmanager's behaviour: receivers hear of an alert still firing when its silence ends."""
        await seed.channel()
        everything = {"matchers": [{"name": "alertname", "op": "=~", "value": ".+"}], "ends_at": in_an_hour()}
        silence = (await client.post(SILENCES, json=everything, headers=tenant.operate)).json()
        alert = await fire(client, tenant, seed, session_maker)
        summary = await evaluate_at(session_maker, tenant, utcnow())  # still silenced: nothing to announce
        assert (summary.notified, await outbox_count(session_maker, tenant)) == (0, 0)

        await client.post(f"{SILENCES}/{silence['id']}/expire", headers=tenant.operate)
        announced = await evaluate_at(session_maker, tenant, utcnow())
        again = await evaluate_at(session_maker, tenant, utcnow())

        assert (announced.notified, announced.transitions, again.notified) == (1, 0, 0)
        async with session_maker() as session:
            [item] = await session.scalars(
                select(OutboxItem).where(OutboxItem.project_id == tenant.project_id)
            )
        assert (item.event_type, item.payload["alert_id"], item.payload["state"]) == (
            "ALERT_FIRING",
            alert["id"],
            "firing",
        )
        [row] = [
            r
            for r in await audit_rows(session_maker, tenant, "alert.firing")
            if r.details["from"] == "firing"
        ]
        assert row.details["event_id"] == str(item.event_id)
        assert row.details["notification"] == "announced: the silence that suppressed it has ended"
        assert row.details["previously_silenced_by"] == silence["id"]

    async def test_an_alert_silenced_anew_before_its_silence_ends_stays_quiet(
        self,
        client: AsyncTestClient[Litestar],
        tenant: Tenant,
        seed: Seeder,
        session_maker: async_sessionmaker[AsyncSession],
    ) -> None:
        await seed.channel()
        everything = {"matchers": [{"name": "alertname", "op": "=~", "value": ".+"}], "ends_at": in_an_hour()}
        first = (await client.post(SILENCES, json=everything, headers=tenant.operate)).json()
        await fire(client, tenant, seed, session_maker)
        await client.post(SILENCES, json=everything, headers=tenant.operate)
        await client.post(f"{SILENCES}/{first['id']}/expire", headers=tenant.operate)
        summary = await evaluate_at(session_maker, tenant, utcnow())
        assert (summary.notified, await outbox_count(session_maker, tenant)) == (0, 0)

    async def test_scopes_and_isolation(
        self, client: AsyncTestClient[Litestar], tenant: Tenant, other_tenant: Tenant
    ) -> None:
        body = {"matchers": [{"name": "service", "op": "=", "value": "api"}], "ends_at": in_an_hour()}
        assert (await client.post(SILENCES, json=body, headers=tenant.read)).status_code == 403
        theirs = other_tenant.operate
        other = (await client.post(SILENCES, json=body, headers=theirs)).json()
        assert (
            await client.post(f"{SILENCES}/{other['id']}/expire", headers=tenant.operate)
        ).status_code == 404
        assert (await client.get(SILENCES, headers=tenant.read)).json()["items"] == []


class TestAlertsApi:
    async def test_ack_unack_are_audited_with_the_actor(
        self,
        client: AsyncTestClient[Litestar],
        tenant: Tenant,
        seed: Seeder,
        session_maker: async_sessionmaker[AsyncSession],
    ) -> None:
        channel = {"name": "pager", "url": "http://127.0.0.1:9/hook"}
        assert (
            await client.post("/api/v1/notifications/channels", json=channel, headers=tenant.admin)
        ).is_success
        alert = await fire(client, tenant, seed, session_maker)
        assert alert["acked_by"] is None
        path = f"/api/v1/alerts/{alert['id']}"
        assert (await client.post(f"{path}/ack", headers=tenant.read)).status_code == 403
        acked = await client.post(f"{path}/ack", headers=tenant.operate)
        assert acked.status_code == 200, acked.text
        async with session_maker() as session:
            events = list(
                await session.scalars(
                    select(OutboxItem.event_type)
                    .where(OutboxItem.project_id == tenant.project_id)
                    .order_by(OutboxItem.created_at)
                )
            )
        assert events == ["ALERT_FIRING", "ALERT_ACKNOWLEDGED"]  # receivers hear of the ack (SPEC §12)
        assert acked.json()["acked_by"].startswith("key:operator-key:")
        assert acked.json()["acked_at"] is not None
        fetched = (await client.get(path, headers=tenant.read)).json()
        assert fetched["acked_by"] == acked.json()["acked_by"]

        unacked = await client.post(f"{path}/unack", headers=tenant.admin)
        assert (unacked.json()["acked_by"], unacked.json()["acked_at"]) == (None, None)

        audit = (
            await client.get("/api/v1/alerts/audit", params={"subject_id": alert["id"]}, headers=tenant.read)
        ).json()
        rows = [(row["action"], row["actor"]) for row in audit["items"]]
        assert rows == [
            ("alert.unack", unacked.json()["acked_by"] or rows[0][1]),
            ("alert.ack", acked.json()["acked_by"]),
            ("alert.firing", "system:scheduler"),
        ]
        assert rows[0][1].startswith("key:admin-key:")

    async def test_ack_of_a_resolved_alert_is_409(
        self,
        client: AsyncTestClient[Litestar],
        tenant: Tenant,
        seed: Seeder,
        session_maker: async_sessionmaker[AsyncSession],
    ) -> None:
        alert = await fire(client, tenant, seed, session_maker, for_seconds=0)
        await client.patch(
            f"/api/v1/alerts/policies/{alert['policy_id']}", json={"enabled": False}, headers=tenant.admin
        )
        await evaluate_at(session_maker, tenant, utcnow())
        response = await client.post(f"/api/v1/alerts/{alert['id']}/ack", headers=tenant.operate)
        assert response.status_code == 409

    async def test_history_filters_and_pagination(
        self,
        client: AsyncTestClient[Litestar],
        tenant: Tenant,
        seed: Seeder,
        session_maker: async_sessionmaker[AsyncSession],
    ) -> None:
        t0 = utcnow()
        for i, severity in enumerate(("low", "medium", "high")):
            await create_policy(
                client, tenant, name=f"p{i}", kind="incident", min_severity="low", severity=severity
            )
        await seed.incident(at=t0 - timedelta(seconds=1))
        await evaluate_at(session_maker, tenant, t0)
        history = "/api/v1/alerts/history"
        page1 = (await client.get(history, params={"limit": 2}, headers=tenant.read)).json()
        assert len(page1["items"]) == 2
        assert page1["next_cursor"]
        page2 = (
            await client.get(
                history, params={"limit": 2, "cursor": page1["next_cursor"]}, headers=tenant.read
            )
        ).json()
        assert len(page2["items"]) == 1
        assert page2["next_cursor"] is None
        ids = {a["id"] for a in page1["items"] + page2["items"]}
        assert len(ids) == 3

        high = (await client.get(history, params={"severity": "high"}, headers=tenant.read)).json()["items"]
        assert [a["labels"]["alertname"] for a in high] == ["p2"]
        by_policy = (
            await client.get(history, params={"policy_id": high[0]["policy_id"]}, headers=tenant.read)
        ).json()
        assert [a["id"] for a in by_policy["items"]] == [high[0]["id"]]
        firing = (await client.get(history, params={"state": "firing"}, headers=tenant.read)).json()["items"]
        assert len(firing) == 3
        assert (await client.get(history, params={"state": "resolved"}, headers=tenant.read)).json()[
            "items"
        ] == []
        future = (t0 + timedelta(seconds=1)).isoformat()
        assert (await client.get(history, params={"since": future}, headers=tenant.read)).json()[
            "items"
        ] == []
        assert (
            len((await client.get(history, params={"until": future}, headers=tenant.read)).json()["items"])
            == 3
        )
        assert (await client.get(history, params={"state": "bogus"}, headers=tenant.read)).status_code == 400
        assert (await client.get(history, params={"limit": 0}, headers=tenant.read)).status_code == 400
        assert (await client.get(history, params={"cursor": "!!"}, headers=tenant.read)).status_code == 400

    async def test_alert_shape_and_isolation(
        self,
        client: AsyncTestClient[Litestar],
        tenant: Tenant,
        seed: Seeder,
        session_maker: async_sessionmaker[AsyncSession],
        other_tenant: Tenant,
    ) -> None:
        alert = await fire(client, tenant, seed, session_maker, labels={"team": "core"})
        for name in (
            "id",
            "policy_id",
            "labels",
            "state",
            "value",
            "started_at",
            "fired_at",
            "resolved_at",
            "acked_by",
            "acked_at",
            "severity",
            "silenced_by",
        ):
            assert name in alert
        assert alert["labels"] == {"team": "core", "alertname": "policy-incident", "severity": "high"}
        theirs = other_tenant.admin
        assert (await client.get(f"/api/v1/alerts/{alert['id']}", headers=theirs)).status_code == 404
        assert (await client.post(f"/api/v1/alerts/{alert['id']}/ack", headers=theirs)).status_code == 404
        assert (await client.get("/api/v1/alerts/active", headers=theirs)).json()["items"] == []
        assert (await client.get("/api/v1/alerts/history", headers=theirs)).json()["items"] == []
        assert (await client.get("/api/v1/alerts/audit", headers=theirs)).json()["items"] == []


class TestManualEvaluation:
    async def test_evaluate_endpoint(
        self,
        client: AsyncTestClient[Litestar],
        tenant: Tenant,
        seed: Seeder,
        session_maker: async_sessionmaker[AsyncSession],
    ) -> None:
        await create_policy(client, tenant, kind="incident", min_severity="low")
        await seed.incident(at=utcnow() - timedelta(seconds=1))
        assert (await client.post("/api/v1/alerts/evaluate", headers=tenant.operate)).status_code == 403
        response = await client.post("/api/v1/alerts/evaluate", headers=tenant.admin)
        assert response.status_code == 200, response.text
        summary = response.json()
        assert summary["skipped"] is False
        assert (summary["evaluated"], summary["transitions"], summary["fired"]) == (1, 1, 1)
        assert summary["duration_ms"] > 0

        audit = (await client.get("/api/v1/alerts/audit", headers=tenant.read)).json()["items"]
        by_action = {row["action"]: row for row in audit}
        assert by_action["alerts.evaluate"]["actor"].startswith("key:admin-key:")
        assert by_action["alerts.evaluate"]["details"]["fired"] == 1
        # Transitions of a manual run carry the key as actor, not the scheduler.
        assert by_action["alert.firing"]["actor"] == by_action["alerts.evaluate"]["actor"]
        assert by_action["policy.create"]["actor"] == by_action["alerts.evaluate"]["actor"]

    async def test_audit_filters_and_pagination(
        self,
        client: AsyncTestClient[Litestar],
        tenant: Tenant,
    ) -> None:
        for i in range(3):
            await create_policy(client, tenant, name=f"a{i}", kind="incident", min_severity="low")
        audit = "/api/v1/alerts/audit"
        page = (
            await client.get(audit, params={"limit": 2, "action": "policy.create"}, headers=tenant.read)
        ).json()
        assert len(page["items"]) == 2
        rest = (
            await client.get(
                audit,
                params={"limit": 2, "action": "policy.create", "cursor": page["next_cursor"]},
                headers=tenant.read,
            )
        ).json()
        assert len(rest["items"]) == 1
        assert rest["next_cursor"] is None
        names = [row["details"]["policy"]["name"] for row in page["items"] + rest["items"]]
        assert names == ["a2", "a1", "a0"]
        assert (await client.get(audit, params={"actor": "nobody"}, headers=tenant.read)).json()[
            "items"
        ] == []
